"""The A1111 API as SillyTavern and Open WebUI use it, on a tiny SD 1.5: A1111 1.9's separate schedule type, clip
skip, the hires fix to an exact size, and the infotext written as A1111 writes it (and read back from its PNGs)."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from servers import serving

import easel

PROMPT = "a lighthouse at dawn"
KW = dict(model="tiny", size="64x64", steps=2, seed=3, save=False)


@pytest.fixture
def sd15(tiny_models, easel_home):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    easel.api.reset_default_runner()


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image.convert("RGB"), dtype=np.int16)


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_clip_skip_is_diffusers_clip_skip_for_plain_and_weighted_prompts(sd15, tiny_models):
    """`clip_skip` (layers skipped) changes the image and is recorded; the encoder then ends where A1111's clip skip
    ends it (the penultimate layer through the final norm); a weighted prompt (compel) skips the same layers."""
    import torch
    from diffusers import StableDiffusionPipeline

    from easel.providers.diffusers.adapters.clip_skip import layers_skipped

    plain, skipped = pixels(easel.generate(PROMPT, **KW)), easel.generate(PROMPT, clip_skip=1, **KW)
    assert np.abs(pixels(skipped) - plain).max() > 0 and skipped[0].parameters["extra"] == {"clip_skip": 1}
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd15"])
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():  # the penultimate layer's output through the final norm, as A1111 and diffusers take it
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        theirs = pipe.text_encoder.final_layer_norm(states)
        with layers_skipped(pipe.text_encoder, 1):
            ours = pipe.text_encoder(ids)[0]
    assert torch.allclose(theirs, ours, atol=1e-5)
    weighted = "(a lighthouse:1.3) at dawn"
    assert not np.array_equal(pixels(easel.generate(weighted, clip_skip=1, **KW)),
                              pixels(easel.generate(weighted, **KW)))
    with pytest.raises(easel.InvalidRequestError) as bad:
        easel.generate(PROMPT, model="builtin", clip_skip=1, save=False)
    assert bad.value.param == "clip_skip"


def test_sillytavern_sends_a_schedule_type_clip_skip_and_an_exact_hires_size(sd15, easel_home):
    """What SillyTavern's A1111 source sends: `scheduler` beside the sampler, clip skip in `override_settings` (and
    as `clip_skip`), `hr_resize_x/y`. Karras is honoured where the sampler has a Karras variant, the hires size is
    exact, and the infotext is A1111's."""
    from easel.config import Settings
    from easel.server.app import create_app

    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        assert httpx.get(f"{base}/sdapi/v1/schedulers").json()[1]["label"] == "Karras"
        assert httpx.get(f"{base}/sdapi/v1/sd-vae").json() == [] == httpx.get(f"{base}/sdapi/v1/sd-modules").json()
        body = {"prompt": PROMPT, "negative_prompt": "fog", "seed": 3, "steps": 2, "cfg_scale": 7, "width": 64,
                "height": 64, "sampler_name": "Euler", "scheduler": "Karras", "clip_skip": 2,
                "override_settings": {"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 2},
                "enable_hr": True, "hr_resize_x": 96, "hr_resize_y": 128, "hr_upscaler": "Lanczos",
                "denoising_strength": 0.5, "hr_second_pass_steps": 2}
        made = httpx.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300).json()
        image = decoded(made["images"][0])
        assert image.size == (96, 128)
        info = json.loads(made["info"])
        assert info["warnings"] == []
        text = info["infotexts"][0]
        assert "Sampler: Euler, Schedule type: Karras" in text and "Clip skip: 2" in text
        assert "Hires resize: 96x128" in text and text.startswith(f"{PROMPT}\nNegative prompt: fog\n")
        record = json.loads(image.info["easel"])
        assert record["scheduler"] == "euler_karras" and record["extra"] == {"clip_skip": 1}
        assert record["hires"]["size"] == "96x128" and record["hires"]["first_pass_size"] == "64x64"
        # the same image through the library, and from its own infotext (as A1111 would hand it back)
        again = easel.generate(PROMPT, negative_prompt="fog", scheduler="euler_karras", guidance=7.0,
                               clip_skip=1, hires_size="96x128", hires_upscaler="lanczos",
                               hires_strength=0.5, hires_steps=2, **KW)
        assert np.array_equal(pixels(again), np.asarray(image.convert("RGB"), dtype=np.int16))
        # a schedule type Euler a has no Karras variant of: said so, and the sampler's own used
        body.update(sampler_name="Euler a", scheduler="karras", enable_hr=False)
        info = json.loads(httpx.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300).json()["info"])
        assert any("'Karras' is not available with sampler 'Euler a'" in w for w in info["warnings"])
        for field, value in (("scheduler", "Fancy"), ("clip_skip", "two")):
            refused = httpx.post(f"{base}/sdapi/v1/txt2img", json={**body, field: value,
                                                                   "override_settings": {}})
            assert refused.status_code in (400, 422) and refused.json()["error"]["param"] == field, refused.text


def test_a1111_pngs_are_read_by_show_and_from(sd15, easel_home, tmp_path):
    """A PNG A1111 made (its `parameters` text only): `easel show --json` reads its settings, and `--from` makes
    the image those settings make here (its model named again where this machine has none of that name)."""
    text = (f"{PROMPT}\nNegative prompt: fog\nSteps: 2, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 11, "
            "Size: 64x64, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
            'TI hashes: "easynegative: c74b4e810b03", Version: v1.6.0')
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    source = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(source, pnginfo=info)
    env = {"EASEL_HOME": str(easel_home), "EASEL_HOST": "off"}
    shown = subprocess.run([sys.executable, "-m", "easel.cli", "show", str(source), "--json"], capture_output=True,
                           text=True, env={**os.environ, **env}, timeout=120)
    params = json.loads(shown.stdout)
    assert params["scheduler"] == "dpm++_karras" and params["extra"] == {"clip_skip": 1}
    assert (params["seed"], params["guidance_scale"], params["negative_prompt"]) == (11, 6.5, "fog")
    made = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "--from", str(source), "--model", "tiny",
                           "--local", "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout.splitlines()[0])["path"]
    expected = easel.generate(PROMPT, negative_prompt="fog", scheduler="dpm++_karras", guidance=6.5,
                              clip_skip=1, **{**KW, "seed": 11})
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB"), dtype=np.int16), pixels(expected))


def test_a1111s_hires_upscaler_names_work_on_every_front():
    """"Latent (bicubic)" is A1111's name of a latent upscaler: the library (and so the OpenAI route and the CLI)
    takes it too, and a refusal lists both Easel's names and A1111's."""
    made = easel.generate("a red circle", model="builtin", size="64x64", steps=2, hires_scale=1.5,
                          hires_upscaler="Latent (bicubic)", save=False)
    assert made[0].parameters["hires"]["upscaler"] == "latent-bicubic" and made[0].image.size == (96, 96)
    with pytest.raises(easel.InvalidRequestError) as refused:
        easel.generate("a red circle", model="builtin", size="64x64", hires_scale=1.5, hires_upscaler="", save=False)
    assert "latent-bicubic" in refused.value.message and "'Latent (bicubic)'" in refused.value.message


def test_a1111s_token_merging_ratio_runs_as_token_downsampling(sd15, easel_home):
    """`override_settings.token_merging_ratio` (A1111's ToMe) runs as `tokens=todo` on a UNet model, with a
    warning that says so and the library's pixels; on the built-in model it is said not to apply; a bad ratio is
    a 400 naming it."""
    from easel.config import Settings
    from easel.server.app import create_app

    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        body = {"prompt": PROMPT, "seed": 3, "steps": 2, "cfg_scale": 7, "width": 64, "height": 64,
                "override_settings": {"sd_model_checkpoint": "tiny", "token_merging_ratio": 0.5}}
        made = httpx.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300).json()
        image = decoded(made["images"][0])
        assert any("ran as token downsampling (tokens=todo" in w for w in json.loads(made["info"])["warnings"])
        assert json.loads(image.info["easel"])["tokens"] == {"method": "todo", "factor": 2, "levels": 1}
        again = easel.generate(PROMPT, guidance=7.0, tokens="todo", **KW)
        assert np.array_equal(pixels(again), np.asarray(image.convert("RGB"), dtype=np.int16))
        builtin = {**body, "override_settings": {"sd_model_checkpoint": "builtin", "token_merging_ratio": 0.3}}
        info = json.loads(httpx.post(f"{base}/sdapi/v1/txt2img", json=builtin, timeout=300).json()["info"])
        assert any("token merging does not apply to builtin" in w for w in info["warnings"])
        refused = httpx.post(f"{base}/sdapi/v1/txt2img", json={**body, "override_settings": {
            "token_merging_ratio": 2}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == \
            "override_settings.token_merging_ratio", refused.text
