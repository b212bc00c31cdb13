"""GGUF denoisers, as city96's and QuantStack's files hold them: tiny FLUX, SD3 and Qwen-Image transformers written
as Q8_0 and Q4_0 GGUF files run with the rest of their pipeline (a folder named as `base`, or the release's repository
from the hub cache for a catalog name such as `flux-schnell:Q4_0`), close to the unquantized model (Q8_0 closer than
Q4_0), recorded and made again; files Easel cannot load are clear errors naming the file."""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import gguf
import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image
from servers import serving
from tiny_pipelines import build_qwen_image, install_in_hub_cache, save_gguf

import easel
import easel.api
from easel.errors import InvalidRequestError

PROMPT = "a red kite over the sea"
KW = dict(size="64x64", steps=2, seed=5, save=False)
# family -> (its denoiser's class, the architecture its GGUF files name)
DENOISERS = {"flux": ("FluxTransformer2DModel", "flux"), "sd3": ("SD3Transformer2DModel", "sd3"),
             "qwen-image": ("QwenImageTransformer2DModel", "qwen_image")}


@pytest.fixture(scope="module")
def folders(tiny_models, tmp_path_factory):
    qwen = tmp_path_factory.mktemp("tiny-qwen") / "qwen-image"
    build_qwen_image().save_pretrained(qwen, safe_serialization=True)
    return {"flux": tiny_models["flux"], "sd3": tiny_models["sd3"], "qwen-image": qwen}


def write_gguf(folder, target, quant, family):
    import diffusers

    cls, architecture = DENOISERS[family]
    denoiser = getattr(diffusers, cls).from_pretrained(folder, subfolder="transformer")
    return save_gguf(denoiser, target, quant, architecture)


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("family", ["flux", "sd3", "qwen-image"])
def test_a_gguf_denoiser_draws_close_to_its_unquantized_model(family, folders, easel_home):
    folder, models = folders[family], easel_home / "models"
    models.mkdir(parents=True)
    for quant in ("Q8_0", "Q4_0"):
        write_gguf(folder, models / f"tiny-{quant.lower()}.gguf", quant, family)
    plain = pixels(easel.generate(PROMPT, model=str(folder), **KW))
    q8 = easel.generate(PROMPT, model="tiny-q8_0", base=str(folder), **KW)
    q4 = easel.generate(PROMPT, model=str(models / "tiny-q4_0.gguf"), base=str(folder), **KW)  # by path too
    other = pixels(easel.generate(PROMPT, model=str(folder), **{**KW, "seed": 6}))
    far = np.abs(other - plain).mean()
    near8, near4 = np.abs(pixels(q8) - plain).mean(), np.abs(pixels(q4) - plain).mean()
    assert 0 < near8 < near4 < far / 2, (near8, near4, far)
    assert q8[0].parameters["gguf"] == {"file": "tiny-q8_0.gguf", "quant": "Q8_0"}
    assert q4[0].parameters["gguf"] == {"file": "tiny-q4_0.gguf", "quant": "Q4_0"}
    assert q8[0].parameters["extra"] == {"base": str(folder)}
    # the same seed, the same pixels
    assert np.array_equal(pixels(easel.generate(PROMPT, model="tiny-q8_0", base=str(folder), **KW)), pixels(q8))


@pytest.fixture
def schnell_q4(folders, easel_home, hub_cache):
    """`flux-schnell:Q4_0` as `easel models pull flux-schnell:Q4_0` leaves it: city96's file in the hub cache, and
    the release's pipeline (here the tiny FLUX) beside it; the same file in the models folder as `tiny-q4`."""
    files = easel_home / "gguf-repo"
    files.mkdir(parents=True)
    write_gguf(folders["flux"], files / "flux1-schnell-Q4_0.gguf", "Q4_0", "flux")
    repos = {"city96/FLUX.1-schnell-gguf": files, "black-forest-labs/FLUX.1-schnell": folders["flux"]}
    for repo, folder in repos.items():
        install_in_hub_cache(folder, hub_cache, repo)
    (easel_home / "models").mkdir()
    shutil.copy(files / "flux1-schnell-Q4_0.gguf", easel_home / "models" / "tiny-q4.gguf")
    yield folders["flux"]
    for repo in repos:
        shutil.rmtree(hub_cache / ("models--" + repo.replace("/", "--")))


def test_a_catalog_gguf_runs_on_every_front(schnell_q4, easel_home, tmp_path):
    from easel.config import Settings
    from easel.server.app import create_app

    made = easel.generate(PROMPT, model="flux-schnell:Q4_0", **KW)
    assert made[0].parameters["model"] == "flux-schnell:Q4_0"
    assert made[0].parameters["gguf"] == {"file": "flux1-schnell-Q4_0.gguf", "quant": "Q4_0"}
    # the same file dropped in the models folder runs with the release's pipeline by default: the same pixels
    assert np.array_equal(pixels(easel.generate(PROMPT, model="tiny-q4", **KW)), pixels(made))
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        answer = client.images.generate(model="flux-schnell:Q4_0", prompt=PROMPT, size="64x64",
                                        response_format="b64_json", extra_body={"num_inference_steps": 2, "seed": 5})
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).convert("RGB"))
        assert np.array_equal(served.astype(np.int16), pixels(made))
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        assert {"tiny-q4.gguf", "flux-schnell:Q4_0"} <= set(api.util_get_model_names())
        a1111 = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=5,
                            override_settings={"sd_model_checkpoint": "tiny-q4.gguf"})
        assert np.array_equal(np.asarray(a1111.image.convert("RGB")).astype(np.int16), pixels(made))
        # a client may name a base by model name, never by a folder of the server's
        folder = httpx.post(f"{url}/v1/images/generations", json={"prompt": PROMPT, "model": "tiny-q4",
                                                                    "base": str(schnell_q4)})
        assert folder.status_code in (400, 404) and folder.json()["error"]["param"] == "base", folder.text
    # the CLI: --base, the record, and --from making the same pixels again
    env = {**os.environ, "EASEL_HOST": "off"}
    out = tmp_path / "out"
    cli = subprocess.run([sys.executable, "-m", "easel.cli", "generate", PROMPT, "-m", "tiny-q4", "--base",
                          str(schnell_q4), "--size", "64x64", "--steps", "2", "--seed", "5", "--out", str(out),
                          "--json"], capture_output=True, text=True, env=env)
    assert cli.returncode == 0, cli.stderr
    path = json.loads(cli.stdout.splitlines()[-1])["path"]
    again = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "--from", path, "--out", str(out),
                            "--json"], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout.splitlines()[-1])["path"]
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(second)))
    rows = {r["name"]: r for r in json.loads(subprocess.run(
        [sys.executable, "-m", "easel.cli", "models", "--json"], capture_output=True, text=True, env=env,
        check=True).stdout)}
    assert rows["tiny-q4"]["kind"] == "gguf" and rows["tiny-q4"]["family"] == "flux"
    assert rows["tiny-q4"]["base"] == "black-forest-labs/FLUX.1-schnell" and rows["tiny-q4"]["local"]


def _gguf_of(path, tensors: dict, architecture: str = "flux"):
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_files_easel_cannot_load_are_clear_errors(folders, easel_home, tmp_path):
    models = easel_home / "models"
    models.mkdir(parents=True)
    whole = write_gguf(folders["flux"], tmp_path / "whole.gguf", "Q8_0", "flux").read_bytes()
    (models / "truncated.gguf").write_bytes(whole[: len(whole) // 2])
    (models / "notes.gguf").write_bytes(b"these are not weights" * 10)
    _gguf_of(models / "sd-unet.gguf", {"model.diffusion_model.input_blocks.0.0.weight": (4, 4),
                                    "first_stage_model.decoder.conv_in.weight": (4, 4)}, "sd1")
    _gguf_of(models / "llm.gguf", {"token_embd.weight": (8, 4), "blk.0.attn_q.weight": (4, 4)}, "llama")
    _gguf_of(models / "mystery.gguf", {"blocks.0.weight": (4, 4)}, "mystery")
    says = {"truncated": "truncated", "notes": "not a GGUF file", "sd-unet": "SD 1.x/SDXL model in GGUF",
            "llm": "llama language model or text encoder", "mystery": "match no denoiser Easel loads from GGUF"}
    for name, why in says.items():
        with pytest.raises(InvalidRequestError, match=why) as caught:
            easel.generate(PROMPT, model=name, **KW)
        assert caught.value.param == "model" and f"{name}.gguf" in caught.value.message
    shutil.copy(tmp_path / "whole.gguf", models / "fine.gguf")
    easel.api.reset_default_runner()  # the models folder is read once per runner
    with pytest.raises(InvalidRequestError, match="`base` must be a flux pipeline") as caught:  # another family
        easel.generate(PROMPT, model="fine", base=str(folders["sd3"]), **KW)
    assert caught.value.param == "base"
    with pytest.raises(InvalidRequestError, match="does not fit the flux denoiser") as caught:  # another size
        write_gguf(folders["flux"], models / "fine.gguf", "Q8_0", "flux")
        big = tmp_path / "big-flux"
        shutil.copytree(folders["flux"], big)
        config = json.loads((big / "transformer" / "config.json").read_text())
        (big / "transformer" / "config.json").write_text(json.dumps({**config, "num_attention_heads": 4}))
        easel.generate(PROMPT, model="fine", base=str(big), **KW)
    assert caught.value.param == "base"
    with pytest.raises(InvalidRequestError, match="`base` is for GGUF denoisers") as caught:
        easel.generate(PROMPT, model=str(folders["flux"]), base=str(folders["flux"]), **KW)
    assert caught.value.param == "base"
