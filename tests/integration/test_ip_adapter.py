"""IP-Adapter image prompts on the tiny SD 1.5 and SDXL, with tiny IP-Adapters built here (a CLIP vision encoder,
the image projection and the cross-attention key/value projections): the image changes the result by its scale,
scale 0 and the next request without one are exactly as if none had been loaded, and every front takes them."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image, ImageDraw
from servers import serving
from tiny_pipelines import save_tiny_ip_adapter

import easel
import easel.api
from easel.errors import InvalidRequestError, UnsupportedError

PROMPT = "a cat on a sofa"
KW = dict(model="tiny", size="64x64", steps=2, seed=8, save=False)


def style() -> Image.Image:
    im = Image.new("RGB", (64, 64), "gold")
    ImageDraw.Draw(im).rectangle([0, 32, 64, 64], fill="purple")
    return im


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image, dtype=np.int16)


@pytest.fixture(params=["sd15", "sdxl"])
def family(request, tiny_models, easel_home):
    shutil.copytree(tiny_models[request.param], easel_home / "models" / "tiny")
    save_tiny_ip_adapter(request.param, easel_home / "ip_adapters" / "style", seed=1)
    easel.api.reset_default_runner()
    return request.param


def test_an_image_prompt_steers_by_its_scale_and_leaves_no_trace(family):
    plain = pixels(easel.generate(PROMPT, **KW))
    prompt = {"model": "style", "image": style()}
    assert np.array_equal(pixels(easel.generate(PROMPT, ip_adapter={**prompt, "scale": 0}, **KW)), plain)
    weak = pixels(easel.generate(PROMPT, ip_adapter={**prompt, "scale": 0.3}, **KW))
    strong = easel.generate(PROMPT, ip_adapter={**prompt, "scale": 1.0}, n=2, **KW)
    assert np.abs(weak - plain).mean() < np.abs(pixels(strong) - plain).mean() and len(strong.images) == 2
    assert strong[0].parameters["ip_adapter"] == {"model": "style", "scale": 1.0}
    assert np.array_equal(pixels(easel.generate(PROMPT, **KW)), plain)  # as if it had never been loaded


def test_bad_image_prompts_are_clear_errors(family):
    with pytest.raises(InvalidRequestError, match=r"No IP-Adapter 'nowhere' \(the ip_adapters folder has: style\)"):
        easel.generate(PROMPT, ip_adapter={"model": "nowhere", "image": style()}, **KW)
    with pytest.raises(InvalidRequestError, match="ip_adapter.scale"):
        easel.generate(PROMPT, ip_adapter={"model": "style", "image": style(), "scale": 5}, **KW)
    with pytest.raises(InvalidRequestError, match="Unknown `ip_adapter` field"):
        easel.generate(PROMPT, ip_adapter={"model": "style", "image": style(), "weight": 1}, **KW)
    with pytest.raises(UnsupportedError, match="does not take IP-Adapter"):
        easel.generate("a red circle", model="builtin", ip_adapter={"model": "style", "image": style()})


@pytest.fixture
def sd15(tiny_models, easel_home):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    save_tiny_ip_adapter("sd15", easel_home / "ip_adapters" / "style", seed=1)
    easel.api.reset_default_runner()


def b64(image: Image.Image) -> str:
    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode()


def test_every_front_takes_an_image_prompt(sd15, easel_home, tmp_path):
    from easel.config import Settings
    from easel.server.app import create_app

    expected = pixels(easel.generate(PROMPT, ip_adapter={"model": "style", "image": style(), "scale": 0.7}, **KW))
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        res = client.images.generate(prompt=PROMPT, model="tiny", size="64x64", extra_body={
            "num_inference_steps": 2, "seed": 8, "ip_adapter": {"model": "style", "image": b64(style()),
                                                                "scale": 0.7}})
        made = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))
        assert np.array_equal(np.asarray(made, dtype=np.int16), expected)
        with pytest.raises(openai.BadRequestError, match="not a path"):
            client.images.generate(prompt=PROMPT, model="tiny", extra_body={
                "ip_adapter": {"model": str(easel_home / "ip_adapters" / "style"), "image": b64(style())}})

        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]), sampler="")
        assert "style" in api.controlnet_model_list() and "ip-adapter_clip_sd15" in api.controlnet_module_list()
        unit = webuiapi.ControlNetUnit(image=style(), module="ip-adapter_clip_sd15", model="style [a1b2c3d4]",
                                       weight=0.7)
        answer = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=8, cfg_scale=7.5, sampler_name="",
                             override_settings={"sd_model_checkpoint": "tiny"}, controlnet_units=[unit],
                             alwayson_scripts={})
        assert len(answer.images) == 1  # an image prompt has no detected map
        assert np.array_equal(np.asarray(answer.image, dtype=np.int16), expected)

    style().save(tmp_path / "style.png")
    done = subprocess.run([sys.executable, "-m", "easel.cli", "generate", PROMPT, "--model", "tiny", "--size", "64x64",
                           "--steps", "2", "--seed", "8", "--ip-adapter", f"style:{tmp_path / 'style.png'}:0.7",
                           "--json", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    path = json.loads(done.stdout.splitlines()[0])["path"]
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB"), dtype=np.int16), expected)
