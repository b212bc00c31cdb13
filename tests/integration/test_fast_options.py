"""Options that cut the work: `decoder=tiny` decodes the final images with the family's tiny autoencoder (TAESD),
from the hub cache, recorded, the same seed giving the same pixels; refused clearly where a family has none or
where it is not on this machine."""

import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from tiny_pipelines import install_in_hub_cache

import easel
import easel.api
from easel.errors import EaselError

KW = dict(size="64x64", steps=2, seed=3, save=False)


@pytest.fixture
def taesd(hub_cache, tmp_path):
    """A tiny TAESD of the tiny SD 1.5's latent space (4 channels, one upsampling), as `madebyollin/taesd`."""
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(4, 4), decoder_block_out_channels=(4, 4), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=4).save_pretrained(tmp_path / "taesd")
    install_in_hub_cache(tmp_path / "taesd", hub_cache, "madebyollin/taesd")
    yield
    import shutil

    shutil.rmtree(hub_cache / "models--madebyollin--taesd")


def pixels(result):
    return np.asarray(result[0].image.convert("RGB"), dtype=np.int16)


def test_the_tiny_decoder_makes_the_final_image(tiny_models, taesd):
    folder = str(tiny_models["sd15"])
    full = easel.generate("a red kite", model=folder, **KW)
    tiny = easel.generate("a red kite", model=folder, decoder="tiny", **KW)
    assert not np.array_equal(pixels(tiny), pixels(full))
    assert tiny[0].parameters["extra"] == {"decoder": "tiny"} and tiny[0].parameters["decoder"] == "madebyollin/taesd"
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, decoder="tiny", **KW)), pixels(tiny))
    # the pipeline's own VAE is back for the next call
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, **KW)), pixels(full))
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, decoder="full", **KW)), pixels(full))
    # image-to-image through it too
    varied = easel.vary(full[0].image, model=folder, decoder="tiny", steps=2, seed=3, save=False)
    assert varied[0].parameters["decoder"] == "madebyollin/taesd"


def test_a_tiny_decoder_that_cannot_be_had_is_refused_naming_decoder(tiny_models, tmp_path):
    with pytest.raises(EaselError) as missing:  # not in the hub cache, and offline
        easel.generate("a red kite", model=str(tiny_models["sd15"]), decoder="tiny", **KW)
    assert missing.value.param == "decoder" and "easel models pull madebyollin/taesd" in missing.value.message
    with pytest.raises(EaselError) as wrong:
        easel.generate("a red kite", model=str(tiny_models["sd15"]), decoder="sharp", **KW)
    assert wrong.value.param == "decoder" and "'sharp'" in wrong.value.message
    with pytest.raises(EaselError) as none:  # a family without one
        easel.generate("a red kite", model="qwen-image", decoder="tiny", **KW)
    assert none.value.param == "decoder" and "has no tiny decoder" in none.value.message


@pytest.mark.parametrize("family, cache", [("sd15", "deepcache:2"), ("sdxl", "deepcache"), ("flux", "first_block:0.5"),
                                           ("flux", "taylorseer:2")])
def test_step_caching_skips_work_and_keeps_its_seed(tiny_models, family, cache):
    folder = str(tiny_models[family])
    kw = {**KW, "steps": 8}
    plain = easel.generate("a red kite", model=folder, **kw)
    cached = easel.generate("a red kite", model=folder, cache=cache, **kw)
    assert not np.array_equal(pixels(cached), pixels(plain))  # steps were skipped
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, cache=cache, **kw)), pixels(cached))
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, **kw)), pixels(plain))  # off again
    method = cache.split(":")[0]
    assert cached[0].parameters["cache"]["method"] == method and cached[0].parameters["extra"] == {"cache": cache}


@pytest.mark.parametrize("option, family, value, fragment", [
    ("cache", "sd15", "first_block", "its step caches are deepcache"),
    ("cache", "flux", "deepcache", "not deepcache"),
    ("cache", "sd15", "deepcache:1", "between 2 and 10"),
    ("cache", "sd3", "first_block", "takes none of diffusers' step caches"),
    ("cache", "sd15", "warp", "must be one of"),
    ("tokens", "sd15", "todo:5", "factor must be 2 to 4"), ("tokens", "sd15", "todo:2:3", "levels 1 or 2"),
    ("tokens", "sd15", "tome", "must be todo"), ("tokens", "flux", "todo", "Unknown option 'tokens'")])
def test_a_step_cache_or_token_downsampling_that_does_not_fit_is_refused(tiny_models, option, family, value,
                                                                         fragment):
    with pytest.raises(EaselError) as refused:
        easel.generate("a red kite", model=str(tiny_models[family]), **{option: value}, **KW)
    assert refused.value.param == option and fragment in refused.value.message, refused.value.message


def key_lengths(pipe, call) -> dict[str, set[int]]:
    """The number of keys each self-attention of `pipe`'s UNet saw while `call` ran."""
    seen: dict[str, set[int]] = {}
    handles = [module.to_k.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, set()).add(
        args[0].shape[1])) for name, module in pipe.unet.named_modules() if name.endswith("attn1")]
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_token_downsampling_shortens_the_highest_attention_levels_keys(tiny_models, family):
    """`tokens=todo`: the self-attention of the highest-resolution level with attention attends to its tokens
    downsampled twice each way (a quarter of the keys), `todo:4` four times, `todo:2:2` the next level too; the
    others keep theirs; the same seed gives the same pixels, and the next call is the plain one."""
    folder = str(tiny_models[family])
    plain = easel.generate("a red kite", model=folder, **KW)
    cache = easel.api.default_runner().registry.get("diffusers").cache
    pipe = cache.get(cache.keys()[-1], None).pipe
    made = {}
    keys = {value: key_lengths(pipe, lambda value=value: made.setdefault(value, easel.generate(
        "a red kite", model=folder, tokens=value, **KW))) for value in ("todo", "todo:2:2", "todo:4")}
    whole = key_lengths(pipe, lambda: easel.generate("a red kite", model=folder, **KW))
    sides = sorted({math.isqrt(n) for lengths in whole.values() for n in lengths}, reverse=True)  # square grids

    def expected(lengths: set[int], factor: int, levels: int) -> set[int]:
        side = math.isqrt(next(iter(lengths)))
        return {(side // factor) ** 2} if side in sides[:levels] else lengths

    assert len(sides) >= 1 and all(len(lengths) == 1 for lengths in whole.values())
    for value, factor, levels in (("todo", 2, 1), ("todo:4", 4, 1), ("todo:2:2", 2, 2)):
        assert keys[value] == {name: expected(lengths, factor, levels) for name, lengths in whole.items()}, value
    assert keys["todo"] != whole
    assert not np.array_equal(pixels(made["todo"]), pixels(plain))
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, tokens="todo", **KW)),
                          pixels(made["todo"]))
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, **KW)), pixels(plain))
    assert made["todo:2:2"][0].parameters["tokens"] == {"method": "todo", "factor": 2, "levels": 2}
    assert made["todo"][0].parameters["extra"] == {"tokens": "todo"}


def test_the_servers_settings_apply_where_they_fit(tiny_models, taesd, monkeypatch):
    """EASEL_DECODER=tiny, EASEL_STEP_CACHE=deepcache and EASEL_TOKENS=todo: every request that names none of
    them, where they fit; a request's own `decoder=full`, `cache=none` or `tokens=none` wins."""
    folder = str(tiny_models["sd15"])
    kw = {**KW, "steps": 6}
    fast = pixels(easel.generate("a red kite", model=folder, decoder="tiny", cache="deepcache", tokens="todo", **kw))
    plain = pixels(easel.generate("a red kite", model=folder, **kw))
    monkeypatch.setenv("EASEL_DECODER", "tiny")
    monkeypatch.setenv("EASEL_STEP_CACHE", "deepcache")
    monkeypatch.setenv("EASEL_TOKENS", "todo")
    easel.api.reset_default_runner()
    made = easel.generate("a red kite", model=folder, **kw)
    assert np.array_equal(pixels(made), fast) and made[0].parameters["decoder"] == "madebyollin/taesd"
    assert made[0].parameters["cache"] == {"method": "deepcache", "interval": 3}
    assert made[0].parameters["tokens"] == {"method": "todo", "factor": 2, "levels": 1}
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, decoder="full", cache="none",
                                                tokens="none", **kw)), plain)
    flux = easel.generate("a red kite", model=str(tiny_models["flux"]), **KW)  # none fits a FLUX model here
    assert not {"cache", "decoder", "tokens"} & set(flux[0].parameters)


def test_speed_fast_applies_the_familys_few_step_lora(tiny_models, hub_cache, tmp_path):
    """`speed=fast`: LCM-LoRA from the hub cache, with the LCM scheduler, 4 steps and guidance 1 (a request's own
    steps win); the same image as naming all of it by hand; refused clearly where the LoRA is not here."""
    import shutil

    from diffusers import StableDiffusionPipeline
    from tiny_pipelines import save_random_lora

    folder = str(tiny_models["sd15"])
    kw = dict(size="64x64", seed=3, save=False)
    with pytest.raises(EaselError) as missing:
        easel.generate("a red kite", model=folder, speed="fast", **kw)
    assert missing.value.param == "loras" and "hf download latent-consistency/lcm-lora-sdv1-5" in missing.value.message
    (tmp_path / "lcm").mkdir()
    save_random_lora(StableDiffusionPipeline.from_pretrained(folder),
                     tmp_path / "lcm" / "pytorch_lora_weights.safetensors", seed=2)
    install_in_hub_cache(tmp_path / "lcm", hub_cache, "latent-consistency/lcm-lora-sdv1-5")
    try:
        fast = easel.generate("a red kite", model=folder, speed="fast", **kw)
        params = fast[0].parameters
        assert (params["num_inference_steps"], params["guidance_scale"], params["scheduler"]) == (4, 1.0, "lcm")
        assert params["loras"] == {"hub:latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors": 1.0}
        by_hand = easel.generate("a red kite", model=folder, steps=4, guidance=1.0, scheduler="lcm",
                                 loras={"hub:latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors": 1.0},
                                 **kw)
        assert np.array_equal(pixels(fast), pixels(by_hand))
        assert easel.generate("a red kite", model=folder, speed="lcm", steps=2, **kw)[0].parameters[
            "num_inference_steps"] == 2
        with pytest.raises(EaselError) as unknown:
            easel.generate("a red kite", model=folder, speed="warp", **kw)
        assert unknown.value.param == "speed" and "fast or one of lcm, hyper" in unknown.value.message
    finally:
        shutil.rmtree(hub_cache / "models--latent-consistency--lcm-lora-sdv1-5")


def test_openai_quality_low_decodes_with_the_tiny_autoencoder_where_it_is_here(tiny_models, taesd, easel_home):
    import base64
    import io
    import shutil

    import httpx
    from PIL import Image
    from servers import serving

    from easel.config import Settings
    from easel.server.app import create_app

    (easel_home / "models").mkdir(parents=True)
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    body = {"prompt": "a red kite", "model": "tiny", "size": "64x64", "seed": 3, "num_inference_steps": 2}
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as url:
        low = httpx.post(f"{url}/v1/images/generations", json={**body, "quality": "low"}, timeout=120).json()
        full = httpx.post(f"{url}/v1/images/generations", json=body, timeout=120).json()
    tiny = easel.generate("a red kite", model=str(tiny_models["sd15"]), decoder="tiny", **KW)

    def decoded(answer):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))), dtype=np.int16)

    assert np.array_equal(decoded(low), pixels(tiny)) and not np.array_equal(decoded(full), pixels(tiny))


def test_a_cpu_pipeline_runs_its_layers_on_onednn(tiny_models, monkeypatch):
    """On a CPU the pipeline's convolutions run on packed weights and its linear layers on oneDNN's matmul: the
    pixels of PyTorch's own calls (within float32's rounding), the copies counted once in the cache's ledger."""
    from easel.providers.diffusers import onednn

    if not onednn.available():
        pytest.skip("Easel calls oneDNN this way on x86-64 only")
    folder = str(tiny_models["sd15"])
    made = easel.generate("a red kite", model=folder, **KW)
    cache = easel.api.default_runner().registry.get("diffusers").cache
    loaded = cache.get(cache.keys()[-1], None)
    convs = [m for m in loaded.pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is onednn.PackedConv2d and m.packed_bytes() > 0 for m in convs)
    assert any(type(m) is onednn.OneDNNLinear for m in loaded.pipe.text_encoder.modules())
    unet = loaded.pipe.unet
    assert onednn.packed_bytes([unet]) == onednn.packed_bytes([unet, unet]) == sum(m.packed_bytes() for m in convs) > 0
    assert loaded.resident_bytes() >= onednn.packed_bytes([unet]) + sum(p.numel() * 4 for p in unet.parameters())
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, **KW)), pixels(made))

    monkeypatch.setattr(onednn, "available", lambda: False)
    easel.api.reset_default_runner()
    eager = easel.generate("a red kite", model=folder, **KW)
    assert np.abs(pixels(eager) - pixels(made)).max() <= 2
    cache = easel.api.default_runner().registry.get("diffusers").cache
    assert onednn.packed_bytes([cache.get(cache.keys()[-1], None).pipe.unet]) == 0


def test_where_the_cpu_computes_bfloat16_the_tiny_decoder_runs_in_it(tiny_models, taesd, monkeypatch):
    """A CPU with bfloat16 in hardware (AVX512-BF16, AMX) runs the tiny decoder's layers in bfloat16, recorded as
    `decoder_dtype`: about the float32 decode's pixels; elsewhere float32, not recorded."""
    from easel.providers.diffusers import onednn

    folder = str(tiny_models["sd15"])
    made = {}
    for native in (False, True):
        monkeypatch.setattr(onednn, "native_bfloat16", lambda native=native: native)
        easel.api.reset_default_runner()
        made[native] = easel.generate("a red kite", model=folder, decoder="tiny", **KW)
    assert "decoder_dtype" not in made[False][0].parameters
    assert made[True][0].parameters["decoder_dtype"] == "bfloat16"
    assert made[True][0].parameters["decoder"] == "madebyollin/taesd"
    assert np.abs(pixels(made[True]) - pixels(made[False])).max() <= 3
    assert np.array_equal(pixels(easel.generate("a red kite", model=folder, decoder="tiny", **KW)),
                          pixels(made[True]))
