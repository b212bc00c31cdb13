"""Ray listens on every network interface whatever address it is given, so every test that starts Ray runs inside
a loopback-only network namespace (`unshare -n`, then `ip link set lo up`): nothing it opens is reachable from
outside, and nothing inside can reach another address."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSIDE = "EASEL_TEST_LOOPBACK_NAMESPACE"


def run_in_loopback_namespace(pytest_args: list[str], env: dict[str, str] | None = None,
                              timeout: float = 900, allow_skips: bool = False) -> str:
    """Run pytest on `pytest_args` in a new loopback-only network namespace; fail with its output if it fails (or
    skips a test, unless `allow_skips`). Returns its output."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("a loopback-only network namespace needs root, unshare and ip (iproute2)")
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine refuses new network namespaces (unshare -n)")
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-x", "-rs", *pytest_args]
    done = subprocess.run(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command],
                          cwd=root, env={**os.environ, **(env or {}), INSIDE: "1"}, capture_output=True, text=True,
                          timeout=timeout)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or " passed" not in summary or (not allow_skips and "skipped" in summary):
        pytest.fail(f"inside the namespace: {' '.join(command)}\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}",
                    pytrace=False)
    print(done.stdout)
    return done.stdout


def require_loopback_namespace() -> None:
    """For the tests that must only run inside one (their module is run by `run_in_loopback_namespace`)."""
    if os.environ.get(INSIDE) != "1":
        pytest.skip("starts Ray: runs only inside a loopback-only network namespace (see tests/cluster/test_ray.py)")
    up = [line for line in Path("/proc/net/dev").read_text().splitlines()[2:] if ":" in line]
    names = {line.split(":")[0].strip() for line in up}
    assert names == {"lo"}, f"not a loopback-only namespace: {names}"
