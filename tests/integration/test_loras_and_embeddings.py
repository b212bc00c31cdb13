"""LoRAs on a tiny SD 1.5: a LoRA made with peft on its UNet and text encoder (random, so that it changes the image),
saved as diffusers saves LoRAs, then named by the library, the CLI, A1111 tags in the prompt and the server."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from servers import serving
from tiny_pipelines import save_random_lora

import easel
from easel.engine.runner import batch_key

pytest.importorskip("peft")
PROMPT = "a lion having coffee"


def make_lora(pipeline_folder: Path, target: Path, seed: int) -> Path:
    """A random LoRA of rank 4 on the UNet's and the text encoder's attention, saved as `target`."""
    from diffusers import StableDiffusionPipeline

    return save_random_lora(StableDiffusionPipeline.from_pretrained(pipeline_folder), target, seed)


@pytest.fixture
def sd15_with_loras(tiny_models, easel_home):
    """The tiny SD 1.5 in the models folder, and two LoRAs in the loras folder."""
    import shutil

    models, loras = easel_home / "models", easel_home / "loras"
    models.mkdir(parents=True)
    loras.mkdir(parents=True)
    shutil.copytree(tiny_models["sd15"], models / "tiny-sd15")
    make_lora(tiny_models["sd15"], loras / "watercolor.safetensors", seed=1)
    make_lora(tiny_models["sd15"], loras / "ink.safetensors", seed=2)
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    return "tiny-sd15"


def served(answer) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    png = base64.b64decode(answer.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image.convert("RGB"), dtype=np.int16)


def test_loras_change_the_image_and_leave_no_trace_when_not_asked_for(sd15_with_loras):
    kw = dict(model=sd15_with_loras, size="64x64", steps=3, seed=7, save=False)
    before = pixels(easel.generate(PROMPT, **kw))
    styled = easel.generate(PROMPT, loras={"watercolor": 0.8}, **kw)
    assert np.abs(pixels(styled) - before).max() > 0
    assert styled[0].parameters["loras"] == {"watercolor": 0.8}
    # after a LoRA was loaded, a request without one gives exactly the pixels of before
    assert np.array_equal(pixels(easel.generate(PROMPT, **kw)), before)
    # the A1111 tag is the same LoRA; the model never sees the tag, the record keeps the prompt as written
    tagged = easel.generate(f"{PROMPT} <lora:watercolor:0.8>", **kw)
    assert np.array_equal(pixels(tagged), pixels(styled))
    assert tagged[0].parameters["prompt"] == f"{PROMPT} <lora:watercolor:0.8>"
    assert tagged[0].parameters["revised_prompt"] == PROMPT
    # weights count, and two LoRAs together differ from either
    assert not np.array_equal(pixels(easel.generate(PROMPT, loras={"watercolor": 0.3}, **kw)), pixels(styled))
    both = pixels(easel.generate(PROMPT, loras={"watercolor": 0.8, "ink": 0.5}, **kw))
    assert not np.array_equal(both, pixels(styled)) and not np.array_equal(both, before)


def test_a_compiled_model_switches_loras_with_the_pixels_of_eager(sd15_with_loras):
    """`compile` on a CPU folds the weights into the graph (inductor's freezing): a LoRA made active afterwards must
    still count, and one made inactive must stop counting (each switch recompiles: slow here, about 30 s)."""
    kw = dict(model=sd15_with_loras, size="64x64", steps=2, seed=7, save=False)
    for loras in ({}, {"watercolor": 0.8}, {}):
        eager = pixels(easel.generate(PROMPT, loras=loras, **kw))
        assert np.abs(pixels(easel.generate(PROMPT, loras=loras, compile="default", **kw)) - eager).max() <= 2


def test_bad_loras_are_clear_errors(sd15_with_loras):
    kw = dict(model=sd15_with_loras, size="64x64", steps=2, save=False)
    with pytest.raises(easel.InvalidRequestError, match="No LoRA 'nope'.*ink, watercolor") as caught:
        easel.generate(PROMPT, loras={"nope": 1}, **kw)
    assert caught.value.param == "loras"
    with pytest.raises(easel.InvalidRequestError, match="does not fit this model") as caught:
        easel.generate(PROMPT, loras={"broken": 1}, **kw)
    with pytest.raises(easel.InvalidRequestError, match="`loras.watercolor` must be between -10.0 and 10.0"):
        easel.generate(PROMPT, loras={"watercolor": 99}, **kw)
    with pytest.raises(easel.InvalidRequestError, match="needs a number"):
        easel.generate(f"{PROMPT} <lora:watercolor:strong>", **kw)
    with pytest.raises(easel.UnsupportedError, match="does not take LoRAs"):
        easel.generate(PROMPT, loras={"watercolor": 1}, save=False)  # the built-in model
    # a failed LoRA leaves the pipeline as it was
    assert easel.generate(PROMPT, **kw).images


def test_requests_with_different_loras_never_share_a_batch(sd15_with_loras):
    from easel.engine.runner import Runner

    runner = Runner()
    a = runner.check(easel.ImageRequest(prompt=PROMPT, model=sd15_with_loras, size="64x64", loras={"ink": 1}))
    b = runner.check(easel.ImageRequest(prompt=PROMPT, model=sd15_with_loras, size="64x64"))
    c = runner.check(easel.ImageRequest(prompt="x <lora:ink:1>", model=sd15_with_loras, size="64x64"))
    assert batch_key(*a) != batch_key(*b) and batch_key(*a) == batch_key(*c)


def test_cli_lora_flag_and_from_reproduce_the_image(sd15_with_loras, tmp_path):
    exe = [sys.executable, "-m", "easel.cli", "generate", PROMPT, "-m", sd15_with_loras, "--size", "64x64",
           "--steps", "2", "--seed", "3", "--lora", "watercolor:0.8", "--json", "--local", "--out", str(tmp_path)]
    made = subprocess.run(exe, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    first = json.loads(made.stdout.splitlines()[0])
    path = first["path"]
    assert first["loras"] == {"watercolor": 0.8}
    again = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "--from", path, "--json", "--local",
                            "--out", str(tmp_path / "again")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    from PIL import Image

    second = json.loads(again.stdout.splitlines()[0])
    assert second["loras"] == {"watercolor": 0.8} and second["seed"] == 3
    assert Image.open(second["path"]).tobytes() == Image.open(path).tobytes()


def test_server_clients_name_loras_never_paths(sd15_with_loras, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    app = create_app(Settings(home=easel_home, ui=False), warm=False)
    with serving(app) as base:
        body = {"prompt": PROMPT, "model": sd15_with_loras, "size": "64x64", "num_inference_steps": 2, "seed": 4}
        plain = httpx.post(f"{base}/v1/images/generations", json=body, timeout=120)
        styled = httpx.post(f"{base}/v1/images/generations", json={**body, "loras": {"watercolor": 0.8}},
                            timeout=120)
        assert plain.status_code == styled.status_code == 200
        assert not np.array_equal(served(plain), served(styled))
        tagged = httpx.post(f"{base}/v1/images/generations", timeout=120,
                            json={**body, "prompt": f"{PROMPT} <lora:watercolor:0.8>"})
        assert np.array_equal(served(tagged), served(styled))
        lora = easel_home / "loras" / "watercolor.safetensors"
        for bad in (str(lora), "../loras/watercolor", "~/x"):
            refused = httpx.post(f"{base}/v1/images/generations", json={**body, "loras": {bad: 1}})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "loras"
            assert "not a path" in refused.json()["error"]["message"]
        unknown = httpx.post(f"{base}/v1/images/generations", json={**body, "loras": {"nope": 1}})
        assert unknown.status_code == 400 and "watercolor" in unknown.json()["error"]["message"]
        assert str(easel_home) not in unknown.text  # the server's folders never appear in an answer
        for junk in ({"": 1}, {"x" * 300: 1}, {"a\u0000b": 1}, {"watercolor": True}, {"watercolor": "1"}, [1], "{"):
            answer = httpx.post(f"{base}/v1/images/generations", json={**body, "loras": junk})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "loras", (junk, answer.text)
        # A1111 clients list them by name
        listed = httpx.get(f"{base}/sdapi/v1/loras").json()
        assert [item["name"] for item in listed] == ["broken", "ink", "watercolor"]
        assert all(str(easel_home) not in item["path"] for item in listed)
        assert httpx.post(f"{base}/sdapi/v1/refresh-loras").status_code == 200
        a1111 = httpx.post(f"{base}/sdapi/v1/txt2img", timeout=120, json={
            "prompt": f"{PROMPT} <lora:watercolor:0.8>", "steps": 2, "width": 64, "height": 64, "seed": 4,
            "override_settings": {"sd_model_checkpoint": sd15_with_loras}}).json()
        assert 'Lora hashes: "watercolor: ' in json.loads(a1111["info"])["infotexts"][0]


def make_embedding(target: Path, seed: int, vectors: int = 2, width: int = 32) -> Path:
    """A textual-inversion embedding in A1111's safetensors layout (`emb_params`), for the tiny CLIP (width 32)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, width)}, str(target))
    return target


def test_embeddings_are_used_by_name_in_prompts(sd15_with_loras, easel_home):
    make_embedding(easel_home / "embeddings" / "mystyle.safetensors", seed=3)
    make_embedding(easel_home / "embeddings" / "badhands.safetensors", seed=4)
    kw = dict(model=sd15_with_loras, size="64x64", steps=3, seed=9, save=False)
    plain = pixels(easel.generate(f"{PROMPT}, oil", **kw))
    styled = easel.generate(f"{PROMPT}, mystyle", **kw)
    assert styled[0].parameters["embeddings"] == ["mystyle"]
    assert not np.array_equal(pixels(styled), plain)
    # loaded now, and a prompt that does not name it runs exactly as before
    assert np.array_equal(pixels(easel.generate(f"{PROMPT}, oil", **kw)), plain)
    negative = easel.generate(f"{PROMPT}, oil", negative_prompt="badhands", **kw)
    assert negative[0].parameters["embeddings"] == ["badhands"]
    assert not np.array_equal(pixels(negative), pixels(easel.generate(f"{PROMPT}, oil", negative_prompt="x", **kw)))
    # a word that merely contains the name is not the name
    assert "embeddings" not in easel.generate(f"{PROMPT}, mystyles", **kw)[0].parameters
    # A1111 clients list them
    (easel_home / "embeddings" / "junk.safetensors").write_bytes(b"junk")
    from easel.config import Settings
    from easel.server.app import create_app

    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        listed = httpx.get(f"{base}/sdapi/v1/embeddings").json()
    assert listed["loaded"]["mystyle"]["vectors"] == 2 and listed["loaded"]["mystyle"]["shape"] == 32
    assert list(listed["skipped"]) == ["junk"]


def test_sdxl_takes_loras_and_its_two_encoder_embeddings(tiny_models, easel_home):
    """SDXL: a LoRA on its UNet, and an embedding with a vector for each text encoder (clip_l, clip_g)."""
    import shutil

    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    shutil.copytree(tiny_models["sdxl"], easel_home / "models" / "tiny-sdxl")
    (easel_home / "loras").mkdir(parents=True)
    save_random_lora(StableDiffusionXLPipeline.from_pretrained(tiny_models["sdxl"]),
                     easel_home / "loras" / "xl.safetensors", seed=5, parts=["unet"])
    (easel_home / "embeddings").mkdir(parents=True)
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 40)},
              str(easel_home / "embeddings" / "xlstyle.safetensors"))
    kw = dict(model="tiny-sdxl", size="64x64", steps=2, seed=2, save=False)
    plain = pixels(easel.generate(PROMPT, **kw))
    assert not np.array_equal(pixels(easel.generate(f"{PROMPT} <lora:xl:1>", **kw)), plain)
    styled = easel.generate(f"{PROMPT}, xlstyle", **kw)
    assert styled[0].parameters["embeddings"] == ["xlstyle"]
    assert not np.array_equal(pixels(styled), pixels(easel.generate(f"{PROMPT}, other", **kw)))
    assert np.array_equal(pixels(easel.generate(PROMPT, **kw)), plain)
