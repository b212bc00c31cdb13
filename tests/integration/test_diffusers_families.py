"""Each model family runs through Easel's diffusers provider, from a folder and from the hub cache, offline."""

import numpy as np
import pytest

import easel
from tiny_pipelines import install_in_hub_cache

SIZES = {"sd15": "64x64", "sdxl": "64x64", "sd3": "32x32", "flux": "32x32"}
EXPECTED_FAMILY = {"sd15": "sd15", "sdxl": "sdxl", "sd3": "sd3", "flux": "flux"}


@pytest.mark.parametrize("family", list(SIZES))
def test_family_runs_two_steps_with_requested_size_and_count(tiny_models, family):
    result = easel.generate("a lion having coffee", model=str(tiny_models[family]), n=2, size=SIZES[family],
                            steps=2, seed=11, negative_prompt="blurry")
    assert len(result) == 2
    w, h = map(int, SIZES[family].split("x"))
    assert all(im.image.size == (w, h) for im in result)
    assert [im.seed for im in result] == [11, 12]
    assert all(im.path and im.path.endswith(".png") for im in result)
    assert result[0].parameters["num_inference_steps"] == 2
    # the two seeds give two different images
    assert not np.array_equal(np.asarray(result[0].image), np.asarray(result[1].image))


@pytest.mark.parametrize("family", list(SIZES))
def test_same_seed_same_pixels(tiny_models, family):
    kw = dict(model=str(tiny_models[family]), size=SIZES[family], steps=2, seed=5, save=False)
    a = easel.generate("a red circle", **kw)[0].image
    b = easel.generate("a red circle", **kw)[0].image
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_the_family_is_read_from_the_folder(tiny_models):
    from easel.catalog import default_catalog

    for family, folder in tiny_models.items():
        assert default_catalog().resolve(str(folder)).family.name == EXPECTED_FAMILY[family]


def test_loads_from_the_hub_cache_with_no_network(tiny_models, hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    install_in_hub_cache(tiny_models["sd15"], hub_cache, "tiny-org/tiny-sd15")
    result = easel.generate("a cat", model="tiny-org/tiny-sd15", size="64x64", steps=2, seed=1)
    assert result.model == "tiny-org/tiny-sd15" and result[0].image.size == (64, 64)
    from easel.catalog import default_catalog

    spec = default_catalog().resolve("tiny-org/tiny-sd15")
    assert spec.family.name == "sd15" and spec.is_available_locally()


def test_a_model_neither_cached_nor_reachable_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(easel.ModelNotFoundError) as info:
        easel.generate("a cat", model="nobody/not-downloaded", steps=2)
    assert "easel models pull nobody/not-downloaded" in info.value.message


def test_catalog_model_not_downloaded_names_the_pull_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(easel.ModelNotFoundError) as info:
        easel.generate("a cat", model="sdxl-turbo", steps=1)
    assert "easel models pull sdxl-turbo" in info.value.message


def test_schedulers_can_be_chosen_per_request_without_leaking(tiny_models):
    folder = str(tiny_models["sd15"])
    a = easel.generate("a cat", model=folder, size="64x64", steps=2, seed=3, scheduler="euler", save=False)
    b = easel.generate("a cat", model=folder, size="64x64", steps=2, seed=3, save=False)
    c = easel.generate("a cat", model=folder, size="64x64", steps=2, seed=3, scheduler="euler", save=False)
    assert np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(b[0].image))


def test_concurrent_requests_on_one_pipeline_match_solo_runs(tiny_models):
    from concurrent.futures import ThreadPoolExecutor

    folder = str(tiny_models["sd15"])
    kw = dict(model=folder, size="64x64", save=False)
    solo = {s: np.asarray(easel.generate("a cat", steps=2 + s % 2, seed=s, **kw)[0].image) for s in range(4)}
    with ThreadPoolExecutor(4) as pool:
        futures = {s: pool.submit(easel.generate, "a cat", steps=2 + s % 2, seed=s, **kw) for s in range(4)}
        for s, f in futures.items():
            assert np.array_equal(np.asarray(f.result()[0].image), solo[s])


def test_batched_prompts_match_solo_runs(tiny_models):
    from easel.api import default_runner
    from easel.types import ImageRequest

    folder = str(tiny_models["sd15"])
    reqs = [ImageRequest(prompt=p, model=folder, size="64x64", num_inference_steps=2, seed=i)
            for i, p in enumerate(["a cat", "a dog", "a bird"])]
    batched = default_runner().run_many(reqs, save=False)
    for req, res in zip(reqs, batched):
        solo = default_runner().run(req, save=False)
        assert np.allclose(np.asarray(res[0].image, dtype=float), np.asarray(solo[0].image, dtype=float), atol=2)


def test_edit_and_variation_on_a_diffusers_model(tiny_models):
    from PIL import Image

    folder = str(tiny_models["sd15"])
    picture = Image.new("RGB", (64, 64), (10, 200, 10))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    edited = easel.edit(picture, "a cat", mask=mask, model=folder, steps=2, seed=1)[0].image
    arr = np.asarray(edited)
    assert arr[:8].tolist() == np.asarray(picture)[:8].tolist()  # beyond the mask's blended band: unchanged
    varied = easel.vary(picture, "a cat", model=folder, steps=4, strength=0.5, seed=1)
    assert varied[0].image.size == (64, 64) and varied[0].parameters["strength"] == 0.5


@pytest.mark.parametrize("family, counts, ignored", [
    ("sd15", {}, {"guidance": 1.0}), ("sdxl", {}, {"guidance": 1.0}), ("sd3", {}, {"guidance": 1.0}),
    ("flux", {"true_cfg_scale": 2.0}, {}),
])
def test_a_negative_prompt_that_the_pipeline_ignores_is_said_so(tiny_models, family, counts, ignored):
    """Whether a negative prompt changes the pixels of the family's real pipeline, and whether the result warns
    that it was ignored, always agree."""
    kw = dict(model=str(tiny_models[family]), size=SIZES[family], steps=2, seed=5, save=False)
    for options, used in ((counts, True), (ignored, False)):
        plain = easel.generate("a red circle", **kw, **options)
        negative = easel.generate("a red circle", negative_prompt="blue", **kw, **options)
        changed = not np.array_equal(np.asarray(plain[0].image), np.asarray(negative[0].image))
        warned = any("ignores the negative prompt" in w for w in negative.warnings)
        assert changed == used and warned == (not used), (family, options, changed, warned)


@pytest.mark.parametrize("family", list(SIZES))
def test_several_variations_at_once_each_follow_their_own_seed(tiny_models, family):
    """Image-to-image with n=2 (SD3's pipeline encodes an empty batch when one image meets two generators): every
    image is the one its seed makes alone."""
    from PIL import Image

    size = int(SIZES[family].split("x")[0])
    picture = Image.new("RGB", (size, size), (10, 200, 10))
    kw = dict(model=str(tiny_models[family]), strength=0.5, steps=4, save=False)
    both = easel.vary(picture, "a cat", n=2, seed=1, **kw)
    alone = easel.vary(picture, "a cat", n=1, seed=2, **kw)
    assert len(both) == 2 and [im.seed for im in both] == [1, 2]
    assert np.abs(np.asarray(both[1].image, dtype=int) - np.asarray(alone[0].image, dtype=int)).max() <= 2


def test_speed_options_keep_the_pixels(tiny_models):
    kw = dict(model=str(tiny_models["sd15"]), size="64x64", steps=2, seed=3, save=False)
    plain = np.asarray(easel.generate("a cat", **kw)[0].image, dtype=int)
    fast = easel.generate("a cat", channels_last=True, fuse_qkv=True, **kw)
    assert np.abs(np.asarray(fast[0].image, dtype=int) - plain).max() <= 2
    assert fast[0].parameters["extra"] == {"channels_last": True, "fuse_qkv": True}


def test_compile_gives_the_same_pixels_and_only_the_first_call_pays(tiny_models):
    """`compile` (torch.compile of the denoiser and the VAE decoder) on the CPU: slow to compile (about a minute
    here), then fast, with the pixels of the eager run."""
    import time

    kw = dict(model=str(tiny_models["sd15"]), size="64x64", steps=2, seed=3, save=False)
    eager = np.asarray(easel.generate("a cat", **kw)[0].image, dtype=int)
    compiled = np.asarray(easel.generate("a cat", compile="default", **kw)[0].image, dtype=int)
    started = time.perf_counter()
    again = np.asarray(easel.generate("a cat", compile="default", **kw)[0].image, dtype=int)
    assert time.perf_counter() - started < 10, "the second call reuses the compiled graphs"
    assert np.abs(compiled - eager).max() <= 2 and np.array_equal(compiled, again)


def test_a_compiled_model_runs_batches_in_buckets(tiny_models, monkeypatch):
    """A compiled pipeline compiles once per batch shape: a batch of 3 images runs as 4 (the extra one dropped), so
    that 3 and 4 images share one compiled graph, and the 3 are the first 3 of the 4 made with the same seed."""
    import torch
    from diffusers import StableDiffusionPipeline

    sizes, real = [], StableDiffusionPipeline.__call__

    def counted(self, *args, **kwargs):
        sizes.append(len(kwargs["prompt"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counted)
    kw = dict(model=str(tiny_models["sd15"]), size="64x64", steps=2, seed=3, save=False, compile="default")
    three = easel.generate("a cat", n=3, **kw)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    four = easel.generate("a cat", n=4, **kw)
    assert sizes == [4, 4] and len(three) == 3 and [im.seed for im in three] == [3, 4, 5]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "4 images reuse the graphs of 3"
    for made, again in zip(three, four):
        assert np.array_equal(np.asarray(made.image), np.asarray(again.image))
    eager = easel.generate("a cat", n=3, **{**kw, "compile": "none"})
    assert sizes[-1] == 3, "an eager pipeline runs the batch as it is"
    assert all(np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max() <= 2
               for a, b in zip(three, eager))


def test_previews_use_the_familys_tiny_vae_when_it_is_cached(tiny_models, hub_cache, monkeypatch, tmp_path):
    """Previews decode with `AutoencoderTiny` (TAESD) when its repo is in the hub cache, never fetching it; the
    final image still comes from the pipeline's own VAE."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny

    from easel.engine.queue import Engine
    from easel.engine.runner import Runner
    from easel.types import ImageRequest
    from tiny_pipelines import install_in_hub_cache

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(4, 4), decoder_block_out_channels=(4, 4), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(tmp_path / "taesd")
    calls = {"tiny": 0, "full": 0}
    for cls, name in ((AutoencoderTiny, "tiny"), (AutoencoderKL, "full")):
        real = cls.decode

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "decode", counted)
    folder = str(tiny_models["sd15"])

    def run_with_previews() -> None:
        engine = Engine(Runner()).start()
        try:
            job = engine.submit(ImageRequest(prompt="a cat", model=folder, size="64x64", num_inference_steps=4,
                                             seed=1), previews=2, listen=True)
            with job.follow() as events:
                shown = [e for e in events if e.previews]
            assert shown and shown[0].previews[0].size == (64, 64)
            job.wait(60)
        finally:
            engine.stop()

    run_with_previews()  # not cached: the full VAE decodes the previews too
    assert calls == {"tiny": 0, "full": 3}
    install_in_hub_cache(tmp_path / "taesd", hub_cache, "madebyollin/taesd")
    try:
        calls.update(tiny=0, full=0)
        run_with_previews()
        assert calls == {"tiny": 2, "full": 1}
    finally:  # the hub cache is the session's: later tests see it as it was
        shutil.rmtree(hub_cache / "models--madebyollin--taesd")
