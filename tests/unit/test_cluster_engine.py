"""The ingress's ClusterEngine against model replicas run in this process (no Ray cluster: the deployment handle is
a stand-in whose calls run the real ModelReplica, and which can die mid-call as a killed replica does)."""

import time

import pytest

pytest.importorskip("ray.serve")

import ray.exceptions  # noqa: E402
from ray.serve.exceptions import RequestCancelledError  # noqa: E402

from easel.config import Settings  # noqa: E402
from easel.engine.runner import Runner  # noqa: E402
from easel.serving.ray import ClusterEngine, ModelReplica  # noqa: E402
from easel.types import ImageRequest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def keep_torch_threads():
    """A replica made here sets torch's threads to its CPUs (1) for this whole process: put them back, so that the
    tests after these compute as the CLI's subprocesses do."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

PROMPT = "a large red circle on the left on a blue background"


class Stream:
    """A streaming call: the replica's events, unless it dies after `die_after` of them or is cancelled."""

    def __init__(self, events, die_after: int | None):
        self.events, self.die_after, self.seen, self.cancelled = events, die_after, 0, False

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.cancelled:
            await self.events.aclose()
            raise RequestCancelledError("test")
        if self.die_after is not None and self.seen >= self.die_after:
            await self.events.aclose()  # the replica's job goes with it
            raise ray.exceptions.ActorDiedError()
        self.seen += 1
        return await self.events.__anext__()


class Handle:
    """`handle.options(stream=True).run.remote(...)` on an in-process replica; `deaths` are the numbers of events
    after which the next calls die, one per call."""

    def __init__(self, replica: ModelReplica, deaths: list[int] = ()):
        self.replica, self.deaths, self.calls = replica, list(deaths), 0

    def options(self, stream: bool = False):
        return self

    @property
    def run(self):
        return self

    def remote(self, *args):
        self.calls += 1
        return Stream(self.replica.run(*args), self.deaths.pop(0) if self.deaths else None)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("replica-home"), ui=False)
    replica = ModelReplica(settings.model_dump(mode="json"), "builtin")
    yield replica
    replica.engine.stop()


def _engine(tmp_path, handle: Handle) -> ClusterEngine:
    settings = Settings(home=tmp_path / "home", ui=False)
    return ClusterEngine.from_settings(Runner(settings, allow_paths=False), models={"builtin": handle},
                                       retries=3).start()


def test_a_job_whose_replica_dies_is_sent_again_and_makes_the_same_image(replica, tmp_path):
    handle = Handle(replica, deaths=[3])
    engine = _engine(tmp_path, handle)
    try:
        job = engine.submit(ImageRequest(prompt=PROMPT, size="64x64", seed=5), listen=True)
        with job.follow() as events:
            steps = [e.step for e in events if e.status == "running"]
        result = job.wait(60)
        assert job.state == "succeeded" and handle.calls == 2 and engine.retried == 1
        assert steps[-1] == job.total_steps  # progress went on after the retry
        saved = result.images[0]
        assert saved.path and engine.store.get(job.id)["state"] == "succeeded"
        direct = Runner(Settings(home=tmp_path / "direct")).run(ImageRequest(prompt=PROMPT, size="64x64", seed=5),
                                                                save=False)
        assert saved.image.tobytes() == direct.images[0].image.tobytes()
        assert engine.cluster()["replicas"]["local"]["jobs"] == 1
    finally:
        engine.stop()


def test_a_replica_that_keeps_dying_fails_the_job_not_the_engine(replica, tmp_path):
    handle = Handle(replica, deaths=[1, 1, 1, 1])
    engine = _engine(tmp_path, handle)
    try:
        job = engine.submit(ImageRequest(prompt=PROMPT, size="64x64"))
        with pytest.raises(Exception, match="died"):
            job.wait(60)
        assert job.state == "failed" and handle.calls == 4
        assert engine.store.get(job.id)["state"] == "failed"
        ok = engine.submit(ImageRequest(prompt=PROMPT, size="64x64"))
        assert ok.wait(60).images and ok.state == "succeeded"
    finally:
        engine.stop()


def test_cancelling_a_job_on_a_replica_stops_it_there(replica, tmp_path):
    engine = _engine(tmp_path, Handle(replica))
    try:
        job = engine.submit(ImageRequest(prompt=PROMPT, size="64x64", num_inference_steps=500))
        deadline = time.time() + 30
        while job.step < 2 and time.time() < deadline:
            time.sleep(0.02)
        engine.cancel(job.id)
        job.done.wait(30)
        assert job.state == "cancelled" and job.step < 500
        deadline = time.time() + 10
        while replica.engine.counts()["running"] and time.time() < deadline:
            time.sleep(0.05)
        assert replica.engine.counts() == {"queued": 0, "running": 0}  # the replica dropped it too
    finally:
        engine.stop()


def test_a_replica_reads_every_folder_the_ingress_checks_against(tmp_path, monkeypatch):
    """The ingress checks a request's LoRAs, ControlNets, IP-Adapters, upscalers and checkpoint configs against the
    operator's folders; a replica must load them from the same folders, not from its scratch home."""
    from easel.addons import FOLDERS
    from easel.serving.ray import replica_settings

    monkeypatch.setenv("EASEL_CONTROLNETS_DIR", str(tmp_path / "shared-controlnets"))
    settings = Settings(home=tmp_path / "home", loras_dir=tmp_path / "shared-loras")
    replica = replica_settings(settings)
    assert replica.home != settings.home and replica.database_url is None
    for kind in FOLDERS:
        assert replica.folder(kind.folder) == settings.folder(kind.folder), kind.folder
    assert replica.controlnets_folder == tmp_path / "shared-controlnets"
    assert replica.loras_folder == tmp_path / "shared-loras"
    assert replica.upscalers_folder == tmp_path / "home" / "upscalers"


def test_health_is_503_until_every_model_deployment_has_a_running_replica(replica, tmp_path, monkeypatch):
    """The ingress's /health is the cluster's truth: the controller unreadable, the application or a model's
    deployment not yet listed (Serve still deploying), or its replica starting, are each a problem; a running
    replica of each model is none."""
    from types import SimpleNamespace

    from easel.serving import ray as cluster

    def status_with(deployments):
        app = SimpleNamespace(deployments={name: SimpleNamespace(status="HEALTHY", replica_states=states)
                                           for name, states in (deployments or {}).items()})
        return lambda: SimpleNamespace(applications={cluster.APP_NAME: app} if deployments is not None else {})

    def unreadable():
        raise TimeoutError("the controller did not answer")

    engine = _engine(tmp_path, Handle(replica))
    try:
        for status, problem in [(unreadable, "the cluster's state cannot be read (TimeoutError: the controller"),
                                (status_with(None), "the model builtin has no running replica"),
                                (status_with({"ingress": {"RUNNING": 1}}), "the model builtin has no running replica"),
                                (status_with({"model-builtin": {"STARTING": 1}}), "the model builtin has no running"),
                                (status_with({"model-builtin": {"RUNNING": 1, "STARTING": 1}}), None)]:
            monkeypatch.setattr(cluster.serve, "status", status)
            engine._status = (0.0, {})  # read again now, not from the last 2 s
            body = engine.health()
            assert body["can_work"] is (problem is None), body["problems"]
            assert problem is None or body["problems"][0].startswith(problem), body["problems"]
    finally:
        engine.stop()
