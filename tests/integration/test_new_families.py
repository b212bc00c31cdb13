"""The model families of 2025-26 as tiny pipelines built from diffusers' own test configurations (FLUX.1 Kontext,
FLUX.2 [klein], Z-Image, Chroma, HiDream, SANA, SANA-Sprint, Lumina 2): each generates on every front with its
family's defaults, the same seed giving the same pixels; an edit without a mask on a model that edits by
instruction hands its images (one, or several where the model takes them) to the pipeline as its own input, the
same pixels as diffusers' own call, through the openai SDK, A1111's img2img, the library and the CLI; a family
without image-to-image refuses a variation clearly."""

import base64
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest
import torch
import webuiapi
from PIL import Image
from servers import serving
from tiny_pipelines import NEW_FAMILIES, save_random_lora

import easel
import easel.api
from easel.catalog import default_catalog
from easel.errors import EaselError

PROMPT = "a red kite over the sea"
FAMILIES = ["flux-kontext", "flux2-klein", "z-image", "chroma", "hidream", "sana", "sana-sprint", "lumina2"]
KW = dict(size="64x64", steps=2, seed=3, save=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("new-families")
    out = {}
    for family in FAMILIES:
        NEW_FAMILIES[family]().save_pretrained(root / family, safe_serialization=True)
        out[family] = root / family
    return out


@pytest.fixture
def models_folder(folders, easel_home):
    """The tiny pipelines in the server's models folder, as tiny-<family>."""
    models = easel_home / "models"
    models.mkdir(parents=True)
    for family, folder in folders.items():
        shutil.copytree(folder, models / f"tiny-{family}")
    return models


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def decoded(b64: str) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(base64.b64decode(b64))))


def near(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """The same picture but for float rounding: no pixel more than 2 levels of 255 apart."""
    return ours.shape == theirs.shape and int(np.abs(ours - theirs).max()) <= 2


def picture(size, colour) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.paste((240, 240, 240), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return image


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_draws_with_its_defaults_and_its_seed(family, folders):
    folder = folders[family]
    assert default_catalog().family_of_folder(folder).name == family  # read from its model_index.json
    made = easel.generate(PROMPT, model=str(folder), **KW)
    params = made[0].parameters
    assert made[0].image.size == (64, 64) and params["num_inference_steps"] == 2
    assert params["guidance_scale"] == default_catalog().families[family].guidance
    assert np.array_equal(pixels(easel.generate(PROMPT, model=str(folder), **KW)[0].image), pixels(made[0].image))
    other = easel.generate(PROMPT, model=str(folder), **{**KW, "seed": 4})
    assert not np.array_equal(pixels(other[0].image), pixels(made[0].image))


@pytest.mark.parametrize("family", ["flux-kontext", "z-image", "chroma", "sana", "lumina2", "hidream"])
def test_a_lora_loads_into_each_family(family, folders, easel_home):
    from diffusers import DiffusionPipeline

    (easel_home / "loras").mkdir(parents=True)
    save_random_lora(DiffusionPipeline.from_pretrained(folders[family]), easel_home / "loras" / "style.safetensors",
                     seed=1, parts=("transformer",))
    plain = easel.generate(PROMPT, model=str(folders[family]), **KW)
    styled = easel.generate(PROMPT, model=str(folders[family]), loras={"style": 1.0}, **KW)
    assert styled[0].parameters["loras"] == {"style": 1.0}
    assert np.abs(pixels(styled[0].image) - pixels(plain[0].image)).mean() > 0.05


def test_every_front_draws_each_family(models_folder, easel_home, tmp_path):
    from easel.config import Settings
    from easel.server.app import create_app

    expected = {family: pixels(easel.generate(PROMPT, model=f"tiny-{family}", **KW)[0].image) for family in FAMILIES}
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        tiny = {f"tiny-{family}" for family in FAMILIES}
        assert tiny <= {m.id for m in client.models.list().data} and tiny <= set(api.util_get_model_names())
        for family in FAMILIES:
            answer = client.images.generate(model=f"tiny-{family}", prompt=PROMPT, size="64x64",
                                            response_format="b64_json",
                                            extra_body={"num_inference_steps": 2, "seed": 3})
            assert np.array_equal(decoded(answer.data[0].b64_json), expected[family]), family
            a1111 = api.txt2img(prompt=PROMPT, width=64, height=64, steps=2, seed=3,
                                cfg_scale=default_catalog().families[family].guidance,
                                override_settings={"sd_model_checkpoint": f"tiny-{family}"})
            assert np.array_equal(pixels(a1111.image), expected[family]), family
    env = {**os.environ, "EASEL_HOST": "off"}
    cli = subprocess.run([sys.executable, "-m", "easel.cli", "generate", PROMPT, "-m", "tiny-z-image", "--size",
                          "64x64", "--steps", "2", "--seed", "3", "--out", str(tmp_path), "--json"],
                         capture_output=True, text=True, env=env)
    assert cli.returncode == 0, cli.stderr
    assert np.array_equal(pixels(Image.open(json.loads(cli.stdout.splitlines()[-1])["path"])), expected["z-image"])
    rows = {r["name"]: r for r in json.loads(subprocess.run([sys.executable, "-m", "easel.cli", "models", "--json"],
                                                            capture_output=True, text=True, env=env,
                                                            check=True).stdout)}
    assert all(rows[f"tiny-{family}"]["family"] == family for family in FAMILIES)
    for name in ("flux-kontext", "flux2-klein", "qwen-image-edit", "qwen-image-edit-plus", "qwen-image-2",
                 "z-image-turbo", "chroma", "hidream-full", "sana", "sana-sprint", "lumina2", "flux2-dev"):
        assert name in rows, name  # the catalog's entries too, with their hub ids
    assert rows["qwen-image-edit-plus"]["does"] == "edit by instruction (up to 3 images)"
    assert rows["flux-kontext"]["does"] == "generate, edit by instruction, inpaint"
    assert rows["tiny-chroma"]["does"] == "generate, inpaint, image-to-image"


def bare_edit(folder, images, width, height, seed, **kwargs) -> np.ndarray:
    """diffusers' own call of the pipeline with the images as its `image` input (on PyTorch's eager layers: Easel's
    on a CPU call oneDNN, the same arithmetic summed in another order, so its pixels are `near` these)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    out = pipe(prompt=["make it winter"], image=images if len(images) > 1 else images[0], width=width, height=height,
               num_inference_steps=2, generator=[torch.Generator().manual_seed(seed)], **kwargs)
    return pixels(out.images[0])


def test_an_instruction_edit_hands_its_images_to_the_pipeline(models_folder, folders, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    red, blue = picture((96, 64), (200, 30, 30)), picture((64, 96), (30, 30, 200))
    kontext = bare_edit(folders["flux-kontext"], [red], 96, 64, 5, guidance_scale=2.5, max_area=96 * 64)
    klein = bare_edit(folders["flux2-klein"], [red, blue], 96, 64, 5, guidance_scale=1.0)
    with serving(create_app(Settings(home=easel_home, ui=False, openai_edit_model="tiny-flux-kontext"),
                            warm=False)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")

        def png(image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            return ("in.png", buffer.getvalue(), "image/png")

        one = client.images.edit(model="tiny-flux-kontext", image=png(red), prompt="make it winter",
                                 response_format="b64_json", extra_body={"num_inference_steps": 2, "seed": 5})
        assert near(decoded(one.data[0].b64_json), kontext)
        two = client.images.edit(model="tiny-flux2-klein", image=[png(red), png(blue)], prompt="make it winter",
                                 response_format="b64_json", extra_body={"num_inference_steps": 2, "seed": 5})
        assert near(decoded(two.data[0].b64_json), klein)
        # a chat front end's edit names an OpenAI model: it runs on the operator's edit model, by instruction
        chat = client.images.edit(model="dall-e-2", image=png(red), prompt="make it winter",
                                  response_format="b64_json", extra_body={"num_inference_steps": 2, "seed": 5})
        assert np.array_equal(decoded(chat.data[0].b64_json), decoded(one.data[0].b64_json))
        # a model that edits from one image refuses two, naming the parameter
        with pytest.raises(openai.BadRequestError) as refused:
            client.images.edit(model="tiny-flux-kontext", image=[png(red), png(blue)], prompt="make it winter")
        assert refused.value.body["param"] == "image" and "at most 1 image but got 2" in refused.value.body["message"]
        # A1111's img2img: its init_images are the edit's images, its denoising strength does not apply
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
        a1111 = api.img2img(images=[red, blue], prompt="make it winter", width=96, height=64, steps=2, seed=5,
                            cfg_scale=1.0, override_settings={"sd_model_checkpoint": "tiny-flux2-klein"})
        assert np.array_equal(pixels(a1111.image), decoded(two.data[0].b64_json))
        assert "Denoising strength" not in a1111.info["infotexts"][0]
    made = easel.edit([red, blue], "make it winter", model="tiny-flux2-klein", steps=2, seed=5, save=False)
    assert np.array_equal(pixels(made[0].image), decoded(two.data[0].b64_json))
    params = made[0].parameters
    assert params["edit"] == "instruction" and params["input_images"] == 2 and "strength" not in params
    # a strength given to an instruction edit is said not to apply, never silently used
    told = easel.edit(red, "make it winter", model="tiny-flux-kontext", steps=2, seed=5, strength=0.5, save=False)
    assert np.array_equal(pixels(told[0].image), decoded(one.data[0].b64_json))
    assert any("`strength` (0.5) does not apply" in w for w in told.warnings)


def test_a_masked_edit_by_instruction_runs_where_the_family_has_an_inpaint_pipeline(folders):
    image = picture((64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    made = easel.edit(image, "a blue square", mask=mask, model=str(folders["flux-kontext"]), steps=2, seed=1,
                      save=False)
    out = pixels(made[0].image)
    assert made[0].parameters["mode"] == "edit" and "edit" not in made[0].parameters
    assert np.array_equal(out[:8, :8], pixels(image)[:8, :8])  # outside the mask: the picture's own pixels


def test_what_a_family_cannot_do_is_refused_clearly(folders, tmp_path):
    image = picture((64, 64), (200, 30, 30))
    with pytest.raises(EaselError) as vary:
        easel.vary(image, model=str(folders["sana"]), steps=2, save=False)
    assert vary.value.param == "model" and "does not support variations" in vary.value.message
    with pytest.raises(EaselError) as edit:
        easel.edit(image, "make it winter", model=str(folders["hidream"]), steps=2, save=False)
    assert edit.value.param == "model" and "does not support edits" in edit.value.message
    # a family whose image-to-image exists changes the whole picture when no mask is given
    whole = easel.edit(image, "make it winter", model=str(folders["z-image"]), steps=2, seed=1, save=False)
    assert whole[0].parameters["mode"] == "vary" and whole[0].parameters["strength"] == 0.8
    # Qwen-Image-Edit's encoder's processor needs torchvision: refused before any loading where it is missing
    folder = tmp_path / "qwen-edit"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(EaselError) as needs:
            easel.edit(image, "make it winter", model=str(folder), steps=2, save=False)
        assert needs.value.param == "model" and "needs torchvision" in needs.value.message


def test_a_pipeline_easel_has_no_family_for_runs_with_its_declared_defaults(tmp_path):
    folder = tmp_path / "pixart"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    family = default_catalog().family_of_folder(folder)
    assert (family.name, family.pipeline, family.steps, family.guidance) == ("generic", "PixArtSigmaPipeline", 20, 4.5)
    checked = easel.api.default_runner().check(easel.types.ImageRequest(prompt=PROMPT, model=str(folder)))
    assert checked.request.num_inference_steps == 20
    assert any("runs as a generic diffusers pipeline" in w for w in checked.request.warnings)


def test_the_edit_model_serves_only_edits(models_folder, easel_home):
    """EASEL_OPENAI_EDIT_MODEL: OpenAI's names edit with it and still generate with the server's own model."""
    from easel.config import Settings
    from easel.server.app import create_app

    with serving(create_app(Settings(home=easel_home, ui=False, openai_edit_model="tiny-flux-kontext"),
                            warm=False)) as url:
        made = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a red circle", "model": "dall-e-3",
                                                                 "size": "1024x1024", "seed": 1,
                                                                 "response_format": "b64_json"}, timeout=120)
        assert made.status_code == 200, made.text
    own = easel.generate("a red circle", model="builtin", size="1024x1024", seed=1, save=False)
    assert np.array_equal(decoded(made.json()["data"][0]["b64_json"]), pixels(own[0].image))


def test_a_component_the_release_leaves_out_comes_from_its_own_repository(folders, hub_cache, tmp_path):
    """HiDream's releases have no fourth text encoder: Easel loads Llama 3.1 8B Instruct's repository for it."""
    from tiny_pipelines import install_in_hub_cache

    full = folders["hidream"]
    release = tmp_path / "hidream-release"
    shutil.copytree(full, release, ignore=shutil.ignore_patterns("text_encoder_4", "tokenizer_4"))
    with pytest.raises(EaselError) as missing:
        easel.generate(PROMPT, model=str(release), **KW)
    assert missing.value.param == "model" and "meta-llama/Llama-3.1-8B-Instruct" in missing.value.message
    llama = tmp_path / "llama"
    shutil.copytree(full / "text_encoder_4", llama)
    shutil.copytree(full / "tokenizer_4", llama, dirs_exist_ok=True)
    install_in_hub_cache(llama, hub_cache, "meta-llama/Llama-3.1-8B-Instruct")
    try:
        runner = easel.api.default_runner()
        spec, loader = runner.catalog.resolve(str(release)), runner.registry.get("diffusers").loader
        need = loader.needs(spec, loader.options(spec, {}))  # the memory plan counts what it borrows
        assert need.components["text_encoder_4"] == loader.needs(
            runner.catalog.resolve(str(full)), loader.options(spec, {})).components["text_encoder_4"]
        made = easel.generate(PROMPT, model=str(release), **KW)
        assert np.array_equal(pixels(made[0].image), pixels(easel.generate(PROMPT, model=str(full), **KW)[0].image))
    finally:
        shutil.rmtree(hub_cache / "models--meta-llama--Llama-3.1-8B-Instruct")
