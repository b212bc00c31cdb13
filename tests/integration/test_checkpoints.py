"""Single-file checkpoints, as A1111 and ComfyUI users have them: a tiny SD 1.5 and SDXL saved in the original
layout load back through Easel, offline, with the pixels of the pipeline folder they came from; A1111 clients list
and switch to them; files that are not checkpoints are clear errors and never run code."""

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
import torch
import webuiapi
from checkpoints import save_checkpoint
from PIL import Image
from servers import serving
from tiny_pipelines import install_in_hub_cache

import easel
from easel.errors import InvalidRequestError, ModelNotFoundError

PROMPT = "a lighthouse at dusk"
KW = dict(size="64x64", steps=2, seed=11, save=False)


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image.convert("RGB"), dtype=np.int16)


@pytest.fixture
def sd15_checkpoint(tiny_models, easel_home, hub_cache):
    """The tiny SD 1.5 as `models/tiny.safetensors` and as the folder `models/tiny-folder`; the configuration
    comes from the hub cache, where `easel models pull sd15` would have put it (removed after the test)."""
    from diffusers import StableDiffusionPipeline

    models = easel_home / "models"
    models.mkdir(parents=True)
    shutil.copytree(tiny_models["sd15"], models / "tiny-folder")
    save_checkpoint(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]), models / "tiny.safetensors")
    repo = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    install_in_hub_cache(tiny_models["sd15"], hub_cache, repo)
    yield models / "tiny.safetensors"
    shutil.rmtree(hub_cache / ("models--" + repo.replace("/", "--")))


def test_an_sd15_checkpoint_gives_the_pixels_of_its_folder(sd15_checkpoint, easel_home):
    folder = pixels(easel.generate(PROMPT, model="tiny-folder", **KW))
    by_name = easel.generate(PROMPT, model="tiny", **KW)
    assert np.array_equal(pixels(by_name), folder)
    assert by_name[0].parameters["model"] == "tiny"
    # the library and the CLI also take the file's path, and its file name in the models folder
    assert np.array_equal(pixels(easel.generate(PROMPT, model=str(sd15_checkpoint), **KW)), folder)
    assert np.array_equal(pixels(easel.generate(PROMPT, model="tiny.safetensors", **KW)), folder)
    listed = subprocess.run([sys.executable, "-m", "easel.cli", "models", "--json"], capture_output=True, text=True,
                            env={**os.environ}, check=True)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["tiny"]["kind"] == "checkpoint" and rows["tiny"]["family"] == "sd15" and rows["tiny"]["local"]
    assert rows["tiny-folder"]["kind"] == "model"


def test_a1111_clients_list_and_switch_to_checkpoints(sd15_checkpoint, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        port = int(base.rsplit(":", 1)[1])
        api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        titles = api.util_get_model_names()
        assert "tiny.safetensors" in titles and "tiny-folder" in titles
        assert not any(os.sep in t for t in titles)  # the server's folders never show
        api.util_set_model("tiny.safetensors")
        assert api.util_get_current_model() == "tiny.safetensors"
        made = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=11)
        assert "Model: tiny" in made.info["infotexts"][0]
        # a request names the checkpoint by its title, hash included, as A1111 lists it after loading
        titled = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=11,
                             override_settings={"sd_model_checkpoint": "tiny.safetensors [0123abcd45]"})
        folder = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=11,
                             override_settings={"sd_model_checkpoint": "tiny-folder"})
        assert np.array_equal(np.asarray(made.image), np.asarray(titled.image))
        assert np.array_equal(np.asarray(made.image), np.asarray(folder.image))


def test_an_sdxl_checkpoint_loads_with_a_configuration_in_the_configs_folder(tiny_models, easel_home):
    """The configuration (configs and tokenizers, no weights) in EASEL_HOME/configs/xl_base, as `easel models pull
    FILE` leaves it; nothing in the hub cache."""
    from diffusers import StableDiffusionXLPipeline

    models = easel_home / "models"
    models.mkdir(parents=True)
    shutil.copytree(tiny_models["sdxl"], models / "xl-folder")
    save_checkpoint(StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"]), models / "xl.safetensors")
    with pytest.raises(ModelNotFoundError, match=r"xl_base checkpoint.*easel models pull xl.safetensors"):
        easel.generate(PROMPT, model="xl", **KW)
    shutil.copytree(tiny_models["sdxl"], easel_home / "configs" / "xl_base",
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    made = easel.generate(PROMPT, model="xl", **KW)
    assert np.array_equal(pixels(made), pixels(easel.generate(PROMPT, model="xl-folder", **KW)))


class RunsCode:
    """A pickle that would run a command when loaded (what a malicious .ckpt holds)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile_files(tiny_models, easel_home, tmp_path):
    from diffusers import StableDiffusionPipeline

    models = easel_home / "models"
    models.mkdir(parents=True)
    whole = save_checkpoint(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]), tmp_path / "whole.st")
    data = whole.read_bytes()
    (models / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    (models / "picture.safetensors").write_bytes(png.getvalue())
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"weight": torch.zeros(2), "hook": RunsCode(marker)}}, models / "evil.ckpt")
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}
    from safetensors.torch import save_file

    save_file(lora, str(models / "style.safetensors"))
    return models, marker


@pytest.mark.parametrize("name, says", [
    ("truncated", "truncated"),
    ("picture", "not a safetensors file"),
    ("evil", "holds more than weights"),
    ("style", "it is a LoRA"),
])
def test_files_that_are_not_checkpoints_are_clear_errors(hostile_files, name, says):
    models, marker = hostile_files
    with pytest.raises(InvalidRequestError, match=says):
        easel.generate(PROMPT, model=name, **KW)
    suffix = ".ckpt" if name == "evil" else ".safetensors"
    with pytest.raises(InvalidRequestError, match=says):  # by path too
        easel.generate(PROMPT, model=str(models / f"{name}{suffix}"), **KW)
    assert not marker.exists()


def test_the_server_refuses_a_broken_checkpoint_and_keeps_serving(hostile_files, easel_home, tiny_models):
    from easel.config import Settings
    from easel.server.app import create_app

    models, marker = hostile_files
    shutil.copytree(tiny_models["sd15"], models / "tiny-folder")
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        for name in ("truncated", "evil", "evil.ckpt", "picture.safetensors", str(models / "evil.ckpt")):
            answer = httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT, "model": name})
            assert answer.status_code in (400, 404), answer.text
            error = answer.json()["error"]
            assert error["param"] == "model" and "Traceback" not in answer.text
        evil = httpx.post(f"{base}/v1/images/generations", json={"prompt": PROMPT, "model": "evil"})
        assert "holds more than weights" in evil.json()["error"]["message"]
        small = {"prompt": PROMPT, "model": "tiny-folder", "size": "64x64", "num_inference_steps": 2}
        fine = httpx.post(f"{base}/v1/images/generations", json=small, timeout=120)
        assert fine.status_code == 200, fine.text
        Image.open(io.BytesIO(base64.b64decode(fine.json()["data"][0]["b64_json"]))).verify()
    assert not marker.exists()
    done = subprocess.run([sys.executable, "-m", "easel.cli", "generate", PROMPT, "--model", "truncated"],
                          capture_output=True, text=True, env={**os.environ})
    assert done.returncode != 0 and "truncated" in done.stderr and "Traceback" not in done.stderr
