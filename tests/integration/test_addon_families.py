"""An add-on made for another model family (a ControlNet, a LoRA, an IP-Adapter of SD 1.5 on SDXL, or the other way
round) is refused at the door: by the request's check, before its job is queued, as a 400 naming the parameter and
both families, on every front; the add-ons of the model's own family pass the same check and run."""

import base64
import io
import re
import shutil

import httpx
import numpy as np
import pytest
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from servers import serving
from tiny_pipelines import save_random_lora, save_tiny_controlnet, save_tiny_ip_adapter

import easel
import easel.api
from easel.control import ControlUnit, IPAdapter
from easel.errors import InvalidRequestError

PROMPT = "a house on a hill"
PICTURE = Image.new("RGB", (64, 64), "teal")
# the tiny pipelines' families as the check names them (their cross-attention is 32 and 72 wide)
SAYS = {"sd15": "SD 1.5/2-type (cross-attention 32)", "sdxl": "SDXL (cross-attention 72)"}
WIDTH = {"sd15": 32, "sdxl": 72}


@pytest.fixture
def both_families(tiny_models, easel_home):
    """Both tiny models, and a ControlNet, a LoRA and an IP-Adapter of each family."""
    for family in ("sd15", "sdxl"):
        shutil.copytree(tiny_models[family], easel_home / "models" / f"tiny-{family}")
        save_tiny_controlnet(family, easel_home / "controlnets" / f"edges-{family}", seed=1)
        save_tiny_ip_adapter(family, easel_home / "ip_adapters" / f"style-{family}", seed=1)
    (easel_home / "loras").mkdir()
    save_random_lora(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]),
                     easel_home / "loras" / "ink-sd15.safetensors", seed=1)
    save_random_lora(StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"]),
                     easel_home / "loras" / "ink-sdxl.safetensors", seed=1)
    easel.api.reset_default_runner()


def uses(family: str) -> dict[str, dict]:
    """Each add-on of `family`, as a request takes it."""
    return {"control": {"control": [ControlUnit(f"edges-{family}", PICTURE)]},
            "loras": {"loras": {f"ink-{family}": 0.8}},
            "ip_adapter": {"ip_adapter": IPAdapter(f"style-{family}", PICTURE)}}


@pytest.mark.parametrize("model, other", [("sd15", "sdxl"), ("sdxl", "sd15")])
@pytest.mark.parametrize("param", ["control", "loras", "ip_adapter"])
def test_an_add_on_of_another_family_is_refused_by_the_check_naming_both(both_families, model, other, param):
    runner = easel.api.default_runner()
    with pytest.raises(InvalidRequestError) as caught:
        runner.check(easel.ImageRequest(prompt=PROMPT, model=f"tiny-{model}", **uses(other)[param]))
    assert caught.value.param == param
    said = rf"was made for .*cross-attention {WIDTH[other]}\)?, and tiny-{model} is {re.escape(SAYS[model])}\.$"
    assert re.search(said, caught.value.message), caught.value.message
    # its own family's passes
    runner.check(easel.ImageRequest(prompt=PROMPT, model=f"tiny-{model}", **uses(model)[param]))


def test_its_own_familys_add_ons_run_together(both_families):
    kw = dict(size="64x64", steps=2, seed=3, save=False)
    for model in ("sd15", "sdxl"):
        plain = np.asarray(easel.generate(PROMPT, model=f"tiny-{model}", **kw)[0].image)
        every = {k: v for use in uses(model).values() for k, v in use.items()}
        image = easel.generate(PROMPT, model=f"tiny-{model}", **every, **kw)[0].image
        assert not np.array_equal(np.asarray(image), plain)


def b64(image: Image.Image) -> str:
    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode()


def test_the_server_answers_400_and_queues_nothing(both_families, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    wrong = {"control": [{"model": "edges-sd15", "image": b64(PICTURE)}], "loras": {"ink-sd15": 1},
             "ip_adapter": {"model": "style-sd15", "image": b64(PICTURE)}}
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        for param, value in wrong.items():
            body = {"prompt": PROMPT, "model": "tiny-sdxl", "size": "64x64", param: value}
            for route in ("/v1/images/generations", "/v1/jobs"):
                answer = httpx.post(f"{base}{route}", json=body, timeout=60)
                assert answer.status_code == 400, (route, param, answer.text)
                error = answer.json()["error"]
                assert error["param"] == param and "and tiny-sdxl is SDXL (cross-attention 72)" in error["message"]
        assert httpx.get(f"{base}/v1/jobs").json()["data"] == []


def test_from_names_the_add_ons_it_cannot_bring_back_and_takes_them_again(both_families, tmp_path):
    """`easel generate --from` restores a ControlNet unit's and an image prompt's settings; their images are not in
    the record, so without them again it warns, naming the options that give them back, and with them it makes the
    same pixels."""
    import os
    import subprocess
    import sys

    guide, style = tmp_path / "guide.png", tmp_path / "style.png"
    Image.new("RGB", (64, 64), "white").save(guide)
    Image.new("RGB", (64, 64), "red").save(style)
    made = easel.generate(PROMPT, model="tiny-sd15", size="64x64", steps=2, seed=3, control=[
        {"model": "edges-sd15", "image": guide, "weight": 0.7, "preprocessor": "invert"}],
        ip_adapter={"model": "style-sd15", "image": style, "scale": 0.8})[0]

    def again(*args):
        done = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "--from", made.path, *args],
                              capture_output=True, text=True, env={**os.environ})
        assert done.returncode == 0, done.stderr
        return done.stderr, np.asarray(Image.open(done.stdout.split()[-1]))

    warned, without = again()
    assert "--control edges-sd15:IMAGE:0.7:invert." in warned and "--ip-adapter style-sd15:IMAGE:0.8." in warned
    assert not np.array_equal(without, np.asarray(made.image))
    quiet, same = again("--control", f"edges-sd15:{guide}:0.7:invert", "--ip-adapter", f"style-sd15:{style}:0.8")
    assert "Warning" not in quiet and np.array_equal(same, np.asarray(made.image))
