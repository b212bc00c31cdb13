"""ControlNet on the tiny SD 1.5, SDXL, SD3 and FLUX with tiny ControlNets built from their UNets and transformers:
the map steers the image in proportion to its weight (weight 0 is no ControlNet at all), several units combine,
variations and edits take them too, and every front does: the library, the CLI, the openai SDK, and A1111's
ControlNet extension API through webuiapi."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image, ImageDraw
from servers import serving
from tiny_pipelines import save_tiny_controlnet

import easel
import easel.api
from easel.control import ControlUnit
from easel.errors import InvalidRequestError, UnsupportedError

PROMPT = "a house on a hill"


def outline() -> Image.Image:
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).rectangle([16, 16, 48, 48], outline="black", width=3)
    return im


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image, dtype=np.int16)


@pytest.fixture(params=["sd15", "sdxl", "sd3", "flux"])
def family(request, tiny_models, easel_home):
    shutil.copytree(tiny_models[request.param], easel_home / "models" / "tiny")
    save_tiny_controlnet(request.param, easel_home / "controlnets" / "edges", seed=1)
    save_tiny_controlnet(request.param, easel_home / "controlnets" / "lines", seed=2)
    easel.api.reset_default_runner()
    return request.param


KW = dict(model="tiny", size="64x64", steps=2, seed=4, save=False)


def test_the_map_steers_the_image_by_its_weight(family):
    plain = pixels(easel.generate(PROMPT, **KW))
    unit = {"model": "edges", "image": outline(), "preprocessor": "canny"}
    off = pixels(easel.generate(PROMPT, control=[{**unit, "weight": 0}], **KW))
    if family == "flux":  # FLUX's ControlNet pipeline draws the map's latents from the seed's generator first
        other_map = {**unit, "weight": 0, "preprocessor": "invert"}
        assert np.array_equal(pixels(easel.generate(PROMPT, control=[other_map], **KW)), off)
        plain = off
    assert np.array_equal(off, plain)
    half = pixels(easel.generate(PROMPT, control=[{**unit, "weight": 0.5}], **KW))
    full = easel.generate(PROMPT, control=[{**unit, "weight": 1.0}], **KW)
    assert 0 < np.abs(half - plain).mean() < np.abs(pixels(full) - plain).mean()
    both = pixels(easel.generate(PROMPT, control=[unit, {"model": "lines", "image": outline()}], **KW))
    assert not np.array_equal(both, pixels(full))
    hires = easel.generate(PROMPT, control=[unit], hires_scale=1.5, **KW)  # guides the first pass; the second refines
    assert hires[0].image.size == (96, 96) and hires[0].parameters["control"][0]["model"] == "edges"
    late = pixels(easel.generate(PROMPT, control=[{**unit, "start": 0.5}], **KW))  # only the last step
    assert not np.array_equal(late, pixels(full))
    # the map is OpenCV's Canny of the picture, returned and recorded
    edges = cv2.Canny(cv2.cvtColor(np.asarray(outline()), cv2.COLOR_RGB2GRAY), 100, 200)
    assert np.array_equal(np.asarray(full.control_maps[0].convert("L")), edges)
    assert full[0].parameters["control"] == [{"model": "edges", "preprocessor": "canny", "weight": 1.0,
                                              "start": 0.0, "end": 1.0, "low_threshold": 100,
                                              "high_threshold": 200}]


@pytest.mark.parametrize("unit, error, says", [
    ({"model": "nowhere", "image": outline()}, InvalidRequestError, "No ControlNet 'nowhere'.*edges, lines"),
    ({"model": "edges", "image": outline(), "preprocessor": "depth"}, InvalidRequestError, "must be one of"),
    ({"model": "edges", "image": outline(), "weight": 3}, InvalidRequestError, "control.weight"),
    ({"model": "edges", "image": outline(), "start": 0.6, "end": 0.4}, InvalidRequestError, "must be below"),
    ({"model": "edges"}, InvalidRequestError, "needs a `model` and an `image`"),
    ({"model": "edges", "image": outline(), "colour": 1}, InvalidRequestError, "Unknown `control` field"),
])
def test_bad_units_are_clear_errors(family, unit, error, says):
    with pytest.raises(error, match=says) as caught:
        easel.generate(PROMPT, control=[unit], **KW)
    assert caught.value.param == "control"


def test_variations_and_edits_take_control_where_the_family_has_the_pipelines(family):
    unit = {"model": "edges", "image": outline(), "preprocessor": "canny"}
    picture = Image.new("RGB", (64, 64), "teal")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 31, 63], fill=255)
    if family == "sd3":  # diffusers has no ControlNet image-to-image pipeline for SD3
        with pytest.raises(UnsupportedError, match="takes ControlNet for generate, not variations") as caught:
            easel.vary(picture, prompt=PROMPT, control=[unit], **KW)
        assert caught.value.param == "control"
        return
    free = pixels(easel.vary(picture, prompt=PROMPT, strength=0.9, **KW))
    guided = easel.vary(picture, prompt=PROMPT, strength=0.9, control=[unit], **KW)
    assert not np.array_equal(pixels(guided), free) and guided[0].parameters["control"][0]["model"] == "edges"
    edited = easel.edit(picture, prompt=PROMPT, mask=mask, control=[unit], **KW)
    kept = np.asarray(edited[0].image)[:, 40:]  # outside the mask the picture stays
    assert np.abs(kept.astype(int) - np.asarray(picture)[:, 40:]).mean() < 3


def test_models_without_controlnet_refuse_it(family):
    with pytest.raises(UnsupportedError, match="does not take ControlNet"):
        easel.generate("a red circle", model="builtin", control=[{"model": "edges", "image": outline()}])


@pytest.fixture
def sd15(tiny_models, easel_home):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    save_tiny_controlnet("sd15", easel_home / "controlnets" / "edges", seed=1)
    easel.api.reset_default_runner()


def b64(image: Image.Image) -> str:
    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode()


def test_a1111_controlnet_api_through_webuiapi(sd15, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    # webuiapi asks for "Euler a" and cfg_scale 7 unless told
    expected = easel.generate(PROMPT, control=[ControlUnit("edges", outline(), "canny", weight=0.8)],
                              scheduler="euler_a", guidance=7.0, **KW)
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]))
        assert api.controlnet_model_list() == ["edges"]
        assert "canny" in api.controlnet_module_list() and api.controlnet_version() == 2
        detected = api.controlnet_detect([outline()], module="canny", threshold_a=100, threshold_b=200)
        assert np.array_equal(np.asarray(detected.images[0]), np.asarray(expected.control_maps[0]))
        unit = webuiapi.ControlNetUnit(image=outline(), module="canny", model="edges [d14c016b]", weight=0.8,
                                       threshold_a=100, threshold_b=200)
        # webuiapi adds the units to its default `alwayson_scripts` dict unless given one: a fresh one each call
        made = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=4, override_settings={
            "sd_model_checkpoint": "tiny"}, controlnet_units=[unit], alwayson_scripts={})
        assert len(made.images) == 2  # the image, then the detected map (as the extension answers)
        assert np.array_equal(np.asarray(made.images[0], dtype=np.int16), pixels(expected))
        assert np.array_equal(np.asarray(made.images[1]), np.asarray(expected.control_maps[0]))
        bad = webuiapi.ControlNetUnit(image=outline(), module="depth_midas", model="edges")
        answer = api.session.post(f"{base}/sdapi/v1/txt2img", json={
            "prompt": PROMPT, "override_settings": {"sd_model_checkpoint": "tiny"},
            "alwayson_scripts": {"controlnet": {"args": [bad.to_dict()]}}})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "alwayson_scripts.controlnet.args[0].module"


def test_openai_sdk_and_cli_take_control_units(sd15, easel_home, tmp_path):
    from easel.config import Settings
    from easel.server.app import create_app

    expected = pixels(easel.generate(PROMPT, control=[ControlUnit("edges", outline(), "canny")], **KW))
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        res = client.images.generate(prompt=PROMPT, model="tiny", size="64x64", extra_body={
            "num_inference_steps": 2, "seed": 4,
            "control": [{"model": "edges", "image": b64(outline()), "preprocessor": "canny"}]})
        made = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))
        assert np.array_equal(np.asarray(made, dtype=np.int16), expected)
        with pytest.raises(openai.BadRequestError, match="not a path"):
            client.images.generate(prompt=PROMPT, model="tiny", extra_body={
                "control": [{"model": str(easel_home / "controlnets" / "edges"), "image": b64(outline())}]})
    outline().save(tmp_path / "edges.png")
    unit = f"edges:{tmp_path / 'edges.png'}:1:canny"
    done = subprocess.run([sys.executable, "-m", "easel.cli", "generate", PROMPT, "--model", "tiny", "--size",
                           "64x64", "--steps", "2", "--seed", "4", "--control", unit, "--json", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    path = json.loads(done.stdout.splitlines()[0])["path"]
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB"), dtype=np.int16), expected)
    listed = subprocess.run([sys.executable, "-m", "easel.cli", "models", "--json"], capture_output=True, text=True,
                            env={**os.environ}, check=True)
    assert {r["name"]: r["kind"] for r in json.loads(listed.stdout)}["edges"] == "controlnet"


def test_a_controlnet_leaves_the_pipeline_in_its_dtype(sd15, monkeypatch):
    """The ControlNet pipeline shares the loaded weights: building it keeps them in the model's dtype (diffusers'
    `from_pipe` converts them to float32 in place unless told; on a GPU that doubled the model's memory)."""
    import torch

    monkeypatch.setenv("EASEL_DTYPE", "bfloat16")
    easel.api.reset_default_runner()
    made = easel.generate(PROMPT, model="tiny", size="64x64", steps=2, seed=4, save=False,
                          control=[ControlUnit("edges", outline(), "invert")])
    assert made[0].image.size == (64, 64)
    provider = easel.api.default_runner().registry.get("diffusers")
    [key] = provider.cache.keys()
    pipe = provider.cache.get(key, None).pipe
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}


def test_a_controlnet_beside_a_cpu_pipeline_calls_onednn_as_it_does(sd15, monkeypatch):
    """A ControlNet loaded beside a CPU pipeline swaps its layers as the pipeline's (packed convolutions, oneDNN's
    linear layers), its copies counted in the cache's ledger: the pixels of PyTorch's own calls within rounding."""
    import torch

    from easel.providers.diffusers import onednn

    if not onednn.available():
        pytest.skip("Easel calls oneDNN this way on x86-64 only")
    unit = [ControlUnit("edges", outline(), "invert")]
    made = easel.generate(PROMPT, control=unit, **KW)
    cache = easel.api.default_runner().registry.get("diffusers").cache
    [key] = cache.keys()
    loaded = cache.get(key, None)
    [controlnet] = [m for k, m in loaded.derived.items() if isinstance(k, tuple) and k[0] == "controlnet"]
    convs = [m for m in controlnet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(type(m) is onednn.PackedConv2d and m.packed_bytes() > 0 for m in convs)
    assert any(type(m) is onednn.OneDNNLinear for m in controlnet.modules())
    assert loaded.resident_bytes() >= onednn.packed_bytes([loaded.pipe.unet, controlnet]) > \
        onednn.packed_bytes([loaded.pipe.unet])

    monkeypatch.setattr(onednn, "available", lambda: False)
    easel.api.reset_default_runner()
    assert np.abs(pixels(easel.generate(PROMPT, control=unit, **KW)) - pixels(made)).max() <= 2
