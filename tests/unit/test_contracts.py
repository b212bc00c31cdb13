"""The contracts between the layers, in milliseconds with FakeProvider: how a job is followed and awaited, what a
provider must answer, and what a result records (the prompt the model received, a seed only where there was one)."""

import asyncio
import threading

import pytest
from PIL import Image

from easel.catalog import ModelFamily, ModelSpec
from easel.config import Settings
from easel.engine.queue import Engine
from easel.engine.runner import Runner
from easel.errors import GenerationError, InvalidRequestError, JobCancelledError, ProviderError
from easel.providers.base import Batch, Progress, ProviderOutput, ProviderRegistry
from easel.testing import FakeProvider
from easel.types import ImageRequest

REMOTE = ModelFamily(name="remote-like", size=(32, 32), size_step=8, max_side=512, negative_prompt=False,
                     max_prompt_chars=500, schedulers=(), supports=("generate",), aspects={"1:1": (32, 32)},
                     provider="remote", steps=None, guidance=None, takes=())


class RemoteLike(FakeProvider):
    """A service that takes no seed and rewrites the prompt, as DALL-E 3 does."""

    def run_batch(self, batch, progress):
        outputs = super().run_batch(batch, progress)
        for output, request in zip(outputs, batch.requests):
            output.revised_prompt = f"{request.prompt}, as the service rewrote it"
        return outputs


def runner_with(home, *providers, models=()) -> Runner:
    settings = Settings(home=home)
    registry = ProviderRegistry(settings)
    for item in [*providers, *models]:
        registry.add(item)
    return Runner(settings, registry=registry)


def small(seed: int = 0, **fields) -> ImageRequest:
    return ImageRequest(**{"prompt": "a red circle", "width": 32, "height": 32, "seed": seed, **fields})


@pytest.fixture
def engine(tmp_path):
    provider = FakeProvider(hold_at=2)
    engine = Engine(runner_with(tmp_path, provider)).start()
    engine.provider = provider
    yield engine
    provider.release()
    engine.stop()


def test_following_a_job_gives_typed_events_to_the_final_one_then_lets_go(engine):
    job = engine.submit(small(1, num_inference_steps=4), listen=True)
    job.preview_every(1)
    engine.provider.release()
    with job.follow() as events:
        seen = list(events)
    assert seen[-1].final and seen[-1].status == "succeeded" and seen[-1].body["image_ids"]
    assert not any(e.final for e in seen[:-1])
    steps = [e.step for e in seen if e.status == "running" and e.step]
    assert steps == sorted(steps) and steps[-1] == 4 and all(e.total_steps == 4 for e in seen if e.step)
    assert any(e.previews for e in seen), "previews were asked for"
    assert job.listeners == []


def test_a_follower_that_leaves_early_is_removed(engine):
    job = engine.submit(small(2))
    assert engine.provider.held.wait(10)
    with job.follow() as events:
        next(events)
        assert len(job.listeners) == 1
    assert job.listeners == []
    engine.provider.release()
    job.wait(30)


def test_waiting_gives_the_result_or_raises_the_jobs_error(engine):
    job = engine.submit(small(3))
    assert engine.provider.held.wait(10)
    with pytest.raises(TimeoutError):
        job.wait(0.05)
    engine.cancel(job.id)
    engine.provider.release()
    with pytest.raises(JobCancelledError) as info:
        job.wait(30)
    assert info.value.status == 409 and info.value.code == "job_cancelled"
    done = engine.submit(small(4))
    assert done.wait(30).images[0].seed == 4


def test_waiting_without_a_thread_reports_while_it_waits(engine):
    polls = []

    async def wait():
        job = engine.submit(small(5, num_inference_steps=4))
        threading.Timer(0.3, engine.provider.release).start()

        async def on_poll(job):
            polls.append(job.state)

        return await job.wait_async(on_poll, poll_s=0.05)

    result = asyncio.run(wait())
    assert result.images[0].seed == 5 and polls and set(polls) <= {"queued", "running"}


class WrongType(FakeProvider):
    def run_batch(self, batch, progress):
        return [ProviderOutput(images=["not an image" for _ in seeds]) for _, seeds in batch]


class TooMany(FakeProvider):
    def run_batch(self, batch, progress):
        return super().run_batch(batch, progress) * 2


@pytest.mark.parametrize("provider, words", [(WrongType(), "answered a str where a PIL image belongs"),
                                             (TooMany(), "answered 2 outputs for 1 requests")])
def test_a_provider_that_breaks_the_contract_is_named(tmp_path, provider, words):
    with pytest.raises(ProviderError) as info:
        runner_with(tmp_path, provider).run(small(1), save=False)
    assert f"The provider 'diffusers' {words}" in info.value.message


def test_a_batch_splits_images_back_per_request():
    spec = ModelSpec(name="x", family=REMOTE, source="x", provider="remote")
    batch = Batch(spec, [small(1, num_images=2), small(3)], [[1, 2], [3]])
    assert batch.all_seeds == [1, 2, 3] and batch.split(["a", "b", "c"]) == [["a", "b"], ["c"]]
    assert [seeds for _, seeds in batch] == [[1, 2], [3]] and len(batch) == 2
    steps = []
    progress = Progress(lambda step, total, preview: steps.append((step, total)), lambda: True)
    progress.step(1, 2)
    assert steps == [(1, 2)] and progress.stopped and not Progress().stopped


def test_a_services_revised_prompt_and_the_absence_of_a_seed_are_recorded(tmp_path):
    spec = ModelSpec(name="remote-model", family=REMOTE, source="remote-model", provider="remote")
    runner = runner_with(tmp_path, RemoteLike(name="remote"), models=[REMOTE, spec])
    result = runner.run(ImageRequest(prompt="a red circle", model="remote-model", num_images=2))
    assert result.revised_prompt == "a red circle, as the service rewrote it"
    for im in result.images:
        assert im.seed is None and im.parameters["seed"] is None
        assert im.parameters["revised_prompt"] == "a red circle, as the service rewrote it"
        assert Image.open(im.path).text["parameters"]  # saved, with its metadata
    row = runner.workspace().history.recent(1)[0]
    assert row["seed"] is None


def test_the_check_revises_the_prompt_once_and_the_model_receives_it(tmp_path):
    seen = []

    class Recording(FakeProvider):
        def run_batch(self, batch, progress):
            seen.extend(r.prompt for r in batch.requests)
            return super().run_batch(batch, progress)

    runner = runner_with(tmp_path, Recording())
    checked = runner.check(ImageRequest(prompt="一只猫", model="qwen-image", width=64, height=64))
    assert checked.request.revised_prompt and checked.request.revised_prompt.startswith("一只猫 ")
    assert runner.check(checked) is checked  # checked once: never again below
    result = runner.run(checked, save=False)
    assert seen == [checked.request.revised_prompt] and result.images[0].parameters["prompt"] == "一只猫"


def test_a_pipeline_failure_is_an_easel_error_naming_the_model_and_the_operation():
    from easel.providers.diffusers import pipeline_errors

    spec = ModelSpec(name="sd3-folder", family=REMOTE, source="x", provider="diffusers")
    with pytest.raises(GenerationError) as info, pipeline_errors(spec, "making variations"):
        raise RuntimeError("cannot reshape tensor of 0 elements")
    assert info.value.message == ("sd3-folder failed while making variations: RuntimeError: cannot reshape tensor "
                                  "of 0 elements")
    with pytest.raises(InvalidRequestError) as info, pipeline_errors(spec, "generating"):
        raise ValueError("`height` and `width` have to be divisible by 8")
    assert "sd3-folder rejected the request while generating" in info.value.message
    with pytest.raises(GenerationError, match="could not be loaded"), pipeline_errors(spec, "loading"):
        raise OSError("no file named config.json")


class Recording(FakeProvider):
    """Keeps what the model was given."""

    def __init__(self):
        super().__init__()
        self.given = []

    def run_batch(self, batch, progress):
        self.given.extend(batch.requests)
        return super().run_batch(batch, progress)


def small_mask(size=64, box=(30, 30, 34, 34)):
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def test_an_edit_blends_in_with_no_seam_and_keeps_every_pixel_beyond_the_band(tmp_path):
    import numpy as np

    runner = runner_with(tmp_path, FakeProvider())
    picture = Image.new("RGB", (64, 64), (0, 0, 0))
    request = ImageRequest(prompt="a red circle", mode="edit", image=picture, mask=small_mask(), seed=1)
    soft = np.asarray(runner.run(request, save=False)[0].image, dtype=int)
    hard = np.asarray(runner.run(request.replace(mask_blur=0), save=False)[0].image, dtype=int)
    painted = hard[32, 32]
    assert np.abs(soft[30:34, 30:34] - painted).max() <= 0.05 * painted.max(), "a small area is repainted whole"
    assert (soft[:20] == 0).all() and (soft[:, :20] == 0).all(), "beyond the band, the picture is kept"
    row_soft, row_hard = np.abs(np.diff(soft[32, :, 0])), np.abs(np.diff(hard[32, :, 0]))
    assert row_hard.max() == painted[0] and row_soft.max() < painted[0] / 2, "the edge fades, no hard step"


def test_only_masked_shows_the_model_the_painted_area_at_full_resolution(tmp_path):
    import numpy as np

    provider = Recording()
    runner = runner_with(tmp_path, provider)
    picture = Image.new("RGB", (64, 64), (0, 0, 0))
    base = ImageRequest(prompt="a red circle", mode="edit", image=picture, mask=small_mask(), seed=1, mask_blur=0)
    whole = runner.run(base, save=False)[0].image
    only = runner.run(base.replace(inpaint_full_res=True, inpaint_full_res_padding=4), save=False)[0].image
    seen_whole, seen_only = (np.asarray(r.mask) > 0 for r in provider.given)
    assert seen_whole.mean() < 0.01 and seen_only.mean() > 0.1, "the crop fills the model's canvas"
    assert provider.given[1].image.size == (64, 64)
    assert np.asarray(only)[:20].max() == 0 and (np.asarray(only)[31, 31] == np.asarray(whole)[31, 31]).all()


def test_edit_options_are_checked_and_named(tmp_path):
    runner = runner_with(tmp_path, FakeProvider())
    picture = Image.new("RGB", (64, 64))
    for field, value in (("mask_blur", 99), ("inpaint_full_res_padding", -1), ("inpaint_full_res", "yes")):
        with pytest.raises(InvalidRequestError) as info:
            runner.check(ImageRequest(prompt="x", mode="edit", image=picture, mask=small_mask(), **{field: value}))
        assert info.value.param == field and repr(value) in info.value.message or str(value) in info.value.message


def test_an_openai_edit_with_no_mask_on_an_opaque_image_changes_the_whole_picture(tmp_path):
    import io

    from fastapi.testclient import TestClient

    from easel.server.app import create_app

    settings = Settings(home=tmp_path, ui=False)
    app = create_app(settings, runner=runner_with(tmp_path, FakeProvider()), warm=False)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, format="PNG")
    with TestClient(app) as client:
        ok = client.post("/v1/images/edits", files={"image": ("a.png", buf.getvalue())},
                         data={"prompt": "make it red", "model": "gpt-image-1"})
        assert ok.status_code == 200, ok.text
        record = app.state.runner.workspace().history.recent(1)[0]
        import json

        assert json.loads(record["parameters"])["mode"] == "vary"
        refused = client.post("/v1/images/edits", files={"image": ("a.png", buf.getvalue())},
                              data={"prompt": "make it red", "model": "dall-e-2"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "mask"


def test_out_of_device_memory_is_a_507_that_frees_the_memory(monkeypatch):
    import torch

    from easel.errors import OutOfMemoryError
    from easel.providers.diffusers import pipeline_errors

    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(1))
    spec = ModelSpec(name="sdxl", family=REMOTE, source="x", provider="diffusers")
    with pytest.raises(OutOfMemoryError) as info, pipeline_errors(spec, "generating"):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert info.value.status == 507 and info.value.code == "insufficient_memory" and freed == [1]
    assert "Out of GPU memory generating sdxl" in info.value.message


def test_speed_options_are_checked_before_anything_queues(tmp_path):
    from easel.providers.diffusers import DiffusersProvider

    spec = ModelSpec(name="tiny", family=REMOTE, source="x", provider="diffusers")
    provider = DiffusersProvider(defaults={"compile": "reduce-overhead"})
    assert provider.loader.options(spec, {})["compile"] == "reduce-overhead"
    assert provider.loader.options(spec, {"compile": "none", "channels_last": True}) == {
        "offload": "auto", "compile": "none", "quantize": "none", "attention_slicing": False, "vae_slicing": False,
        "vae_tiling": False, "channels_last": True, "fuse_qkv": False}
    with pytest.raises(InvalidRequestError) as info:
        provider.loader.options(spec, {"compile": "fast"})
    assert info.value.param == "compile" and "'fast'" in info.value.message


@pytest.mark.parametrize("sizes, status, compiled, warmed", [
    ("64x64, 32x32", "ok", "none", [1, 1]), ("64x64,33x33", "error", "none", []),
    # compiled: each size at every batch size the model runs batches of up to 12 images at (padded to 16)
    ("64x64", "ok", "default", [1, 2, 4, 8, 16])])
def test_a_server_runs_its_configured_sizes_once_before_it_says_ok(tmp_path, sizes, status, compiled, warmed):
    import time

    from fastapi.testclient import TestClient

    from easel.server.app import create_app

    provider = FakeProvider()
    settings = Settings(home=tmp_path, ui=False, warm_sizes=sizes, compile=compiled, max_batch_images=12)
    app = create_app(settings, runner=runner_with(tmp_path, provider))
    with TestClient(app) as client:
        deadline = time.time() + 30
        while (body := client.get("/health").json())["status"] == "loading" and time.time() < deadline:
            time.sleep(0.05)
    assert body["status"] == status
    if status == "ok":
        assert [c["images"] for c in provider.calls] == warmed and not app.state.engine.jobs
    else:
        assert "divisible by 8" in body["error"]


def test_an_openai_edit_with_zero_padding_or_a_bad_strength_is_taken_as_sent(tmp_path):
    from easel.server.openai.protocol import EditRequest
    from easel.server.openai.serving import to_image_request

    picture, mask = Image.new("RGB", (64, 64)), small_mask()
    request = to_image_request(EditRequest(prompt="x", inpaint_full_res_padding=0, strength=0), "edit", [picture],
                               mask, "builtin")
    assert request.inpaint_full_res_padding == 0 and request.strength == 0  # the check then refuses the strength
    with pytest.raises(InvalidRequestError) as info:
        runner_with(tmp_path, FakeProvider()).check(request)
    assert info.value.param == "strength"
