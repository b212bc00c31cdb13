"""EASEL_MAX_CACHE_GB bounds what it says: the pipeline cache counts every add-on loaded with a pipeline (ControlNets,
LoRA adapters) and drops add-ons before whole pipelines, the least recently used first (the ones a request just used
stay); what was dropped loads again when a request names it, and makes the same pixels."""

import shutil

import numpy as np
import pytest
from diffusers import ControlNetModel, StableDiffusionPipeline
from PIL import Image, ImageDraw
from tiny_pipelines import save_random_lora, save_tiny_controlnet

import easel
import easel.api
from easel.providers.diffusers.cache import tensor_bytes

KW = dict(model="tiny", size="64x64", steps=2, seed=4, save=False)
PROMPT = "a house on a hill"


def outline() -> Image.Image:
    im = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(im).rectangle([16, 16, 48, 48], outline="black", width=3)
    return im


@pytest.fixture
def sd15_with_add_ons(tiny_models, easel_home):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    for i, name in enumerate(["edges", "lines"]):
        save_tiny_controlnet("sd15", easel_home / "controlnets" / name, seed=i + 1)
    (easel_home / "loras").mkdir()
    for i, name in enumerate("abc"):
        save_random_lora(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]),
                         easel_home / "loras" / f"{name}.safetensors", seed=i + 1)
    return easel_home


def cache():
    return easel.api.default_runner().registry.get("diffusers").cache


def pixels(**kw) -> np.ndarray:
    return np.asarray(easel.generate(PROMPT, **KW, **kw)[0].image)


def test_add_ons_count_and_go_first_under_the_bound(sd15_with_add_ons, monkeypatch):
    home = sd15_with_add_ons
    easel.api.reset_default_runner()
    plain = pixels()
    base = cache().resident_bytes()
    controlnet = tensor_bytes([ControlNetModel.from_pretrained(home / "controlnets" / "edges")])
    units = {name: [{"model": name, "image": outline(), "preprocessor": "canny"}] for name in ("edges", "lines")}
    guided = {name: pixels(control=unit) for name, unit in units.items()}
    unbounded = cache().resident_bytes()
    assert unbounded >= base + 2 * controlnet, "the ledger counts both ControlNets with their pipeline"
    controlnet = (unbounded - base) // 2  # its weights, and on a CPU its packed convolutions' copies (onednn.py)

    # room for the pipeline and one ControlNet: after each request the cache is back under the bound
    bound = base + controlnet * 3 // 2
    monkeypatch.setenv("EASEL_MAX_CACHE_GB", str(bound / 1e9))
    easel.api.reset_default_runner()
    assert np.array_equal(pixels(), plain)
    for name in ("edges", "lines", "edges"):
        assert np.array_equal(pixels(control=units[name]), guided[name]), name
        assert base + controlnet <= cache().resident_bytes() <= bound, f"{name}: the other one went, not this one"
    assert len(cache().keys()) == 1, "the add-ons went, not the pipeline"

    # LoRAs: each one's adapter counts; under the bound the earlier ones are let go, and come back the same
    monkeypatch.setenv("EASEL_MAX_CACHE_GB", "0")
    easel.api.reset_default_runner()
    first = {name: pixels(loras={name: 1.0}) for name in "abc"}
    lora = (cache().resident_bytes() - base) // 3
    assert lora > 0, "the ledger counts the LoRA adapters"
    monkeypatch.setenv("EASEL_MAX_CACHE_GB", str((base + lora * 3 // 2) / 1e9))
    easel.api.reset_default_runner()
    for name in "abcab":
        assert np.array_equal(pixels(loras={name: 1.0}), first[name]), name
        assert base + lora <= cache().resident_bytes() <= base + lora * 3 // 2, name
    assert np.array_equal(pixels(), plain), "no LoRA left on"
