"""The engine's own contract, in milliseconds with FakeProvider: finished jobs leave memory after their grace,
and the worker outlives every failure."""

import time

import pytest

from easel.config import Settings
from easel.engine.queue import Engine
from easel.engine.runner import Runner
from easel.providers.base import ProviderRegistry
from easel.testing import FakeProvider, seed_colour
from easel.types import ImageRequest


def fake_engine(home, provider=None, **options) -> Engine:
    settings = Settings(home=home)
    registry = ProviderRegistry(settings)
    registry.add(provider or FakeProvider())
    return Engine(Runner(settings, registry=registry), **options).start()


def test_finished_jobs_leave_memory_after_the_grace(tmp_path):
    engine = fake_engine(tmp_path, keep_finished_s=0.3, max_queue=600)
    try:
        jobs = [engine.submit(ImageRequest(prompt="a red circle", width=32, height=32, seed=i)) for i in range(500)]
        for job in jobs:
            job.done.wait(30)
        assert all(job.state == "succeeded" for job in jobs)
        deadline = time.time() + 5
        while engine.jobs and time.time() < deadline:
            time.sleep(0.1)
        assert len(engine.jobs) == 0
        record = engine.get(jobs[0].id)  # read back from the history
        assert record["state"] == "succeeded" and record["image_ids"]
    finally:
        engine.stop()


def test_a_job_is_painted_from_its_own_seed(tmp_path):
    engine = fake_engine(tmp_path)
    try:
        job = engine.submit(ImageRequest(prompt="a red circle", width=32, height=32, seed=11, num_images=2))
        job.done.wait(30)
        assert [im.image.getpixel((0, 0)) for im in job.result.images] == [seed_colour(11), seed_colour(12)]
    finally:
        engine.stop()


def test_the_worker_outlives_a_provider_that_always_fails(tmp_path):
    engine = fake_engine(tmp_path, FakeProvider(fail_rate=1.0))
    try:
        jobs = [engine.submit(ImageRequest(prompt="a red circle", width=32, height=32)) for _ in range(5)]
        for job in jobs:
            job.done.wait(30)
        assert all(job.state == "failed" and "failed on purpose" in job.error.message for job in jobs)
        assert engine.worker_alive and engine.health()["last_error"]
    finally:
        engine.stop()


class ShortProvider(FakeProvider):
    """Breaks the contract: one image fewer than the seeds it was given."""

    def run_batch(self, batch, progress):
        outputs = super().run_batch(batch, progress)
        outputs[0].images.pop()
        return outputs


def test_a_short_provider_answer_is_a_provider_error_naming_it(tmp_path):
    engine = fake_engine(tmp_path, ShortProvider())
    try:
        job = engine.submit(ImageRequest(prompt="a red circle", width=32, height=32, num_images=2))
        job.done.wait(30)
        assert job.state == "failed" and job.error.code == "provider_error"
        assert "'diffusers' answered 1 images for 2 seeds" in job.error.message
        assert engine.worker_alive
    finally:
        engine.stop()


def test_a_bad_provider_option_is_refused_before_it_queues(tmp_path, tiny_models):
    from easel.errors import InvalidRequestError

    engine = Engine(Runner(Settings(home=tmp_path)))  # the real diffusers provider checks its options
    try:
        with pytest.raises(InvalidRequestError) as info:
            engine.submit(ImageRequest(prompt="a red circle", model=str(tiny_models["sd15"]),
                                       extra={"offload": "bogus"}))
        assert info.value.param == "offload" and "bogus" in info.value.message
        assert engine.queue_depth == 0 and not engine.jobs
    finally:
        engine.stop()


def test_a_request_is_checked_once_on_its_way_down(tmp_path, monkeypatch):
    """Route -> service -> engine -> runner -> provider: `check_request` runs once per request, on every
    synchronous route and the jobs API, and the job's record holds the concrete values (the seed included)."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    import easel.engine.runner as runner_module
    from easel.server.app import create_app

    calls = []
    real = runner_module.check_request

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "check_request", counting)
    settings = Settings(home=tmp_path, ui=False)
    registry = ProviderRegistry(settings)
    registry.add(FakeProvider())
    app = create_app(settings, runner=Runner(settings, registry=registry, allow_paths=False))
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64)).save(buf, format="PNG")
    with TestClient(app) as client:
        sends = [
            lambda: client.post("/v1/images/generations", json={"prompt": "a red circle", "size": "64x64"}),
            lambda: client.post("/v1/images/generations", json={"prompt": "a red circle", "quality": "high"}),
            lambda: client.post("/v1/images/edits", files={"image": ("a.png", buf.getvalue())},
                                data={"prompt": "a red circle"}),
            lambda: client.post("/v1/images/variations", files={"image": ("a.png", buf.getvalue())}),
            lambda: client.post("/models/builtin", json={"inputs": "a red circle"}),
            lambda: client.post("/v1/jobs", json={"prompt": "a red circle"}),
        ]
        for send in sends:
            calls.clear()
            r = send()
            assert r.status_code in (200, 202), r.text
            assert len(calls) == 1, (r.request.url, len(calls))
        record = app.state.engine.store.recent(1)[0]
    import json

    assert json.loads(record["request"])["seed"] is not None  # drawn at the check, known from the start


def test_a_job_has_one_json_shape_live_or_recorded(tmp_path):
    from easel.engine.jobs import JobStore

    engine = fake_engine(tmp_path, keep_finished_s=0.2)
    try:
        job = engine.submit(ImageRequest(prompt="a red circle", width=32, height=32, num_images=2))
        job.done.wait(30)
        live = job.snapshot()
        deadline = time.time() + 5
        while job.id in engine.jobs and time.time() < deadline:
            time.sleep(0.05)
        recorded = engine.get(job.id)
        assert isinstance(recorded, dict) and JobStore.describe(recorded) == live
        assert len(live["image_ids"]) == 2 and live["status"] == "succeeded"
    finally:
        engine.stop()


def small(seed: int = 0, **fields) -> ImageRequest:
    return ImageRequest(**{"prompt": "a red circle", "width": 32, "height": 32, "seed": seed, **fields})


def test_compatible_jobs_queued_together_share_one_call(tmp_path):
    provider = FakeProvider(hold_at=1)
    engine = fake_engine(tmp_path, provider, batch_wait_s=0.2)
    try:
        first = engine.submit(small(0))
        assert provider.held.wait(10)
        queued = [engine.submit(small(s)) for s in (1, 2, 3)]
        odd = engine.submit(small(4, width=40))  # another size: never in their batch
        provider.release()
        for job in [first, *queued, odd]:
            job.done.wait(30)
        assert [c["requests"] for c in provider.calls] == [1, 3, 1]
        assert all(job.state == "succeeded" for job in [first, *queued, odd])
    finally:
        engine.stop()


def test_cancelling_one_batch_mate_drops_only_its_images(tmp_path):
    provider = FakeProvider(hold_at=2)
    engine = fake_engine(tmp_path, provider, batch_wait_s=0.3)
    try:
        jobs = [engine.submit(small(s)) for s in (10, 20, 30)]
        assert provider.held.wait(10) and len(provider.calls) == 1 and provider.calls[0]["requests"] == 3
        engine.cancel(jobs[1].id)
        provider.release()
        for job in jobs:
            job.done.wait(30)
        assert [job.state for job in jobs] == ["succeeded", "cancelled", "succeeded"]
        assert jobs[1].result is None and jobs[1].error.code == "job_cancelled"
        assert [job.result.images[0].image.getpixel((0, 0)) for job in (jobs[0], jobs[2])] == [
            seed_colour(10), seed_colour(30)]
    finally:
        engine.stop()


def test_a_full_queue_is_a_429_before_any_work(tmp_path):
    from easel.errors import RateLimitError

    provider = FakeProvider(hold_at=1)
    engine = fake_engine(tmp_path, provider, max_queue=2)
    try:
        engine.submit(small(0))
        assert provider.held.wait(10)
        engine.submit(small(1, width=40))
        engine.submit(small(2, width=48))
        with pytest.raises(RateLimitError) as info:
            engine.submit(small(3, width=56))
        assert info.value.retry_after >= 1 and len(provider.calls) == 1
    finally:
        provider.release()
        engine.stop()


def test_a_job_over_its_time_limit_fails_and_says_so(tmp_path):
    engine = fake_engine(tmp_path, FakeProvider(step_s=0.1, max_steps=30), job_timeout_s=0.3)
    try:
        job = engine.submit(small(0, num_inference_steps=30))
        job.done.wait(30)
        assert job.state == "failed" and "ran over its" in job.error.message
        assert engine.worker_alive
    finally:
        engine.stop()


def test_an_idle_engine_releases_its_models_and_the_next_job_loads_them_again(tmp_path):
    """EASEL_IDLE_UNLOAD_S: after that long without a job the loaded pipelines go (the built-in model's here), the
    engine's health says when; the next job loads the model again and makes the same pixels."""
    import numpy as np

    engine = Engine.from_settings(Runner(Settings(home=tmp_path, idle_unload_s=0.5))).start()
    provider = engine.runner.registry.get("diffusers")

    def made() -> np.ndarray:
        job = engine.submit(ImageRequest(prompt="a large red circle on the left on a blue background", seed=3))
        assert job.done.wait(60) and job.state == "succeeded"
        return np.asarray(job.result.images[0].image)

    try:
        first = made()
        assert provider.cache.keys() and engine.health()["models"] == {"idle_unload_s": 0.5, "released_at": None}
        deadline = time.time() + 10
        while engine.models_released_at is None and time.time() < deadline:
            time.sleep(0.05)
        assert engine.health()["models"]["released_at"] and provider.cache.keys() == []
        assert np.array_equal(made(), first)
        assert provider.cache.keys() and engine.health()["models"]["released_at"] is None
    finally:
        engine.stop()


def test_without_idle_unload_the_models_stay(tmp_path):
    engine = Engine.from_settings(Runner(Settings(home=tmp_path))).start()
    try:
        job = engine.submit(ImageRequest(prompt="a red circle", seed=1))
        assert job.done.wait(60) and job.state == "succeeded"
        time.sleep(1.2)
        assert engine.runner.registry.get("diffusers").cache.keys()
        assert engine.health()["models"] == {"idle_unload_s": None, "released_at": None}
    finally:
        engine.stop()
