"""`quantize=fp8`: the denoiser's weights stored as float8 (layerwise casting), per request or per server; a
picture close to the unquantized one, the weights in a quarter of their memory, recorded, and a bad value refused;
int8 (weight-only) and int8_dynamic (int8 compute on a CPU) the same way."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

import easel
import easel.api
from easel.errors import InvalidRequestError

KW = dict(model="tiny", size="64x64", steps=2, seed=4, save=False)


@pytest.fixture
def sd15(tiny_models, easel_home):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    easel.api.reset_default_runner()


def denoiser_bytes() -> dict:
    """The bytes of the loaded tiny UNets, by whether they are quantized."""
    provider = easel.api.default_runner().registry.get("diffusers")
    out = {}
    for key in provider.cache.keys():
        unet = provider.cache.get(key, None).pipe.unet
        out[dict(key[3])["quantize"]] = sum(p.numel() * p.element_size() for p in unet.parameters())
    return out


def test_fp8_stores_the_denoiser_in_a_quarter_and_draws_nearly_the_same(sd15):
    plain = np.asarray(easel.generate("a lighthouse", **KW)[0].image, dtype=np.int16)
    made = easel.generate("a lighthouse", quantize="fp8", **KW)[0]
    fp8 = np.asarray(made.image, dtype=np.int16)
    other = np.asarray(easel.generate("a lighthouse", **{**KW, "seed": 5})[0].image, dtype=np.int16)
    assert made.parameters["quantize"] == "fp8" and made.parameters["extra"] == {"quantize": "fp8"}
    assert 0 < np.abs(fp8 - plain).mean() < np.abs(other - plain).mean() / 4  # close, not the same
    sizes = denoiser_bytes()
    assert sizes["fp8"] < sizes["none"] * 0.4  # the linear and conv weights at 1 byte of 4 (norms stay)
    with pytest.raises(InvalidRequestError) as caught:
        easel.generate("a lighthouse", quantize="int3", **KW)
    assert caught.value.param == "quantize" and "'int3'" in caught.value.message


def test_a_servers_default_quantization_is_recorded(sd15, monkeypatch):
    monkeypatch.setenv("EASEL_QUANTIZE", "fp8")
    easel.api.reset_default_runner()
    made = easel.generate("a lighthouse", **KW)[0]
    assert made.parameters["quantize"] == "fp8" and "extra" not in made.parameters
    cache = easel.api.default_runner().registry.get("diffusers").cache
    [key] = cache.keys()
    assert torch.float8_e4m3fn in {p.dtype for p in cache.get(key, None).pipe.unet.parameters()}
    assert easel.generate("a lighthouse", quantize="none", **KW)[0].parameters.get("quantize") is None


def test_int8_stores_the_denoisers_linear_layers_in_8_bits(sd15):
    plain = np.asarray(easel.generate("a lighthouse", **KW)[0].image, dtype=np.int16)
    made = easel.generate("a lighthouse", quantize="int8", **KW)[0]
    other = np.asarray(easel.generate("a lighthouse", **{**KW, "seed": 5})[0].image, dtype=np.int16)
    assert made.parameters["quantize"] == "int8"
    assert 0 < np.abs(np.asarray(made.image, dtype=np.int16) - plain).mean() < np.abs(other - plain).mean() / 4
    provider = easel.api.default_runner().registry.get("diffusers")
    [key] = [k for k in provider.cache.keys() if dict(k[3])["quantize"] == "int8"]
    unet = provider.cache.get(key, None).pipe.unet
    linear = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(type(w).__name__ == "Int8Tensor" and w.qdata.dtype == torch.int8 for w in linear)


def test_nf4_is_refused_without_cuda_naming_what_works(sd15):
    with pytest.raises(InvalidRequestError) as caught:
        easel.generate("a lighthouse", quantize="nf4", **KW)
    assert caught.value.param == "quantize" and "needs a CUDA GPU" in caught.value.message
    assert "int8" in caught.value.message


def test_int8_dynamic_computes_the_linear_layers_in_8_bits_on_a_cpu(sd15, easel_home, monkeypatch):
    """`quantize=int8_dynamic`: every Linear layer of the denoiser an int8 module (weights and inputs), a picture
    close to the float one, the same seed the same pixels, recorded; a ControlNet and an image prompt run on it;
    refused naming `quantize` with LoRAs, with `fuse_qkv`, and where the pipeline is not float32 on a CPU."""
    from diffusers.models.attention_processor import Attention
    from tiny_pipelines import save_random_lora, save_tiny_controlnet, save_tiny_ip_adapter

    plain = np.asarray(easel.generate("a lighthouse", **KW)[0].image, dtype=np.int16)
    made = easel.generate("a lighthouse", quantize="int8_dynamic", **KW)[0]
    other = np.asarray(easel.generate("a lighthouse", **{**KW, "seed": 5})[0].image, dtype=np.int16)
    pixels = np.asarray(made.image, dtype=np.int16)
    assert made.parameters["quantize"] == "int8_dynamic" and made.parameters["extra"] == {"quantize": "int8_dynamic"}
    assert 0 < np.abs(pixels - plain).mean() < np.abs(other - plain).mean() / 4
    again = easel.generate("a lighthouse", quantize="int8_dynamic", **KW)[0]
    assert np.array_equal(np.asarray(again.image, dtype=np.int16), pixels)
    provider = easel.api.default_runner().registry.get("diffusers")
    [key] = [k for k in provider.cache.keys() if dict(k[3])["quantize"] == "int8_dynamic"]
    unet = provider.cache.get(key, None).pipe.unet
    assert not [m for m in unet.modules() if type(m) is torch.nn.Linear]
    attention = next(m for m in unet.modules() if isinstance(m, Attention))
    assert isinstance(attention.to_q, torch.ao.nn.quantized.dynamic.Linear)
    # add-ons that leave the denoiser's Linear layers alone run on it
    save_tiny_controlnet("sd15", easel_home / "controlnets" / "edges", seed=1)
    save_tiny_ip_adapter("sd15", easel_home / "ip_adapters" / "style", seed=1)
    easel.api.reset_default_runner()
    edges = Image.new("RGB", (64, 64), "black")
    controlled = easel.generate("a lighthouse", quantize="int8_dynamic", control=[{"model": "edges", "image": edges,
                                                                                   "preprocessor": "none"}], **KW)
    prompted = easel.generate("a lighthouse", quantize="int8_dynamic", ip_adapter={"model": "style", "image": edges},
                              **KW)
    assert controlled[0].parameters["control"] and prompted[0].parameters["ip_adapter"]["model"] == "style"
    save_random_lora(StableDiffusionPipeline.from_pretrained(easel_home / "models" / "tiny"),
                     easel_home / "loras" / "ink.safetensors", seed=3)
    for options, fragment in (({"loras": {"ink": 0.8}}, "takes no LoRAs"), ({"fuse_qkv": True}, "fuse_qkv")):
        with pytest.raises(InvalidRequestError) as caught:
            easel.generate("a lighthouse", quantize="int8_dynamic", **options, **KW)
        assert caught.value.param == "quantize" and fragment in caught.value.message, caught.value.message
    monkeypatch.setenv("EASEL_DTYPE", "bfloat16")
    easel.api.reset_default_runner()
    with pytest.raises(InvalidRequestError) as caught:
        easel.generate("a lighthouse", quantize="int8_dynamic", **KW)
    assert caught.value.param == "quantize" and "on cpu in bfloat16" in caught.value.message, caught.value.message
