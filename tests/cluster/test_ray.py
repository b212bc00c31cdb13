"""`easel serve --ray` on a real Ray cluster, each module run inside a loopback-only network namespace (Ray listens
on every interface). Marked `ray`: `pytest -m "not ray"` leaves them out."""

import pytest
from netns import run_in_loopback_namespace

pytestmark = pytest.mark.ray


def test_ray_cluster_cases():
    """Replica killed mid-batch, autoscaling, two ingress replicas on PostgreSQL, add-ons and a checkpoint on the
    model replicas (tests/cluster/ray_cases.py)."""
    run_in_loopback_namespace(["tests/cluster/ray_cases.py"])


def test_end_to_end_suites_against_easel_serve_ray():
    """The end-to-end suites that run against `easel serve` (the openai SDK, the HF client, the engine under
    concurrent clients: batching, cancelling, disconnects, events, a full queue) pass unchanged against
    `easel serve --ray`."""
    run_in_loopback_namespace(["tests/e2e/test_openai_sdk.py", "tests/e2e/test_remote_providers.py",
                               "tests/e2e/test_engine.py"],
                              env={"EASEL_TEST_SERVE_ARGS": "--ray"}, allow_skips=True)
