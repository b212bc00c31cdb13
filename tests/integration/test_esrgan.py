"""ESRGAN-family upscalers loaded by spandrel: a randomly initialised ESRGAN (RRDBNet) saved as Real-ESRGAN's
releases are (`.pth` with `params_ema`) and as `.safetensors`, 64x64 upscaled to 256x256 by the library, the CLI,
the hires fix and A1111's extras route; tiled and untiled results match where one tile alone makes the picture.

spandrel needs torchvision, which PyPI has only as a CUDA build for Linux: where it cannot be imported (the CPU wheel
of torch), these tests are skipped and the rest of the suite shows the error a user gets instead
(`test_without_spandrel_the_error_says_what_to_install`)."""

import base64
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import webuiapi
from PIL import Image, ImageDraw
from servers import serving

import easel
import easel.api
from easel.errors import InvalidRequestError, UnsupportedError


def picture(side: int = 64) -> Image.Image:
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    ImageDraw.Draw(im).ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4], fill="orange")
    return im


def has_spandrel() -> bool:
    try:
        import spandrel  # noqa: F401
    except ImportError:
        return False
    return True


def save_esrgan(folder, seed: int = 0) -> dict:
    """A 4x ESRGAN of one RRDB block, random weights, saved in both file forms users bring."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=4)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    last = max((k for k in state if k.endswith(".bias")), key=lambda k: int(k.split(".")[1]))  # the output conv
    state[last] = torch.full_like(state[last], 0.5)  # around mid-grey, so that little is clipped at 0 or 1
    state[last.replace(".bias", ".weight")] *= 8
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, folder / "4x-tiny.pth")  # as Real-ESRGAN's releases wrap theirs
    save_file(state, folder / "4x-tiny-st.safetensors")
    return state


needs_spandrel = pytest.mark.skipif(not has_spandrel(), reason="spandrel (and torchvision) cannot be imported here")


@needs_spandrel
def test_esrgan_files_upscale_in_tiles_like_whole(easel_home, tmp_path):
    save_esrgan(easel_home / "upscalers")
    easel.api.reset_default_runner()
    whole = easel.upscale(picture(), scale=4, upscaler="4x-tiny", tile=0)
    assert whole.size == (256, 256) and np.asarray(whole).std() > 1
    same = easel.upscale(picture(), scale=4, upscaler="4x-tiny-st", tile=0)  # the .safetensors: the same weights
    assert np.array_equal(np.asarray(same), np.asarray(whole))
    # tiles of 40 with an overlap of 8: tiles start at 0 and 24; inputs 0..24 come from the first tile alone, far
    # enough (24 pixels) from its inner edge at 40 for this network's reach (about 19 pixels of 3x3 convolutions)
    tiled = easel.upscale(picture(), scale=4, upscaler="4x-tiny", tile=40)
    alone = np.s_[:64, :64]  # outputs of inputs 0..16 in both directions
    assert np.abs(np.asarray(tiled, dtype=int)[alone] - np.asarray(whole, dtype=int)[alone]).max() <= 1
    assert easel.upscale(picture(), scale=2, upscaler="4x-tiny.pth").size == (128, 128)  # by its file name too
    picture().save(tmp_path / "small.png")
    done = subprocess.run([sys.executable, "-m", "easel.cli", "upscale", str(tmp_path / "small.png"), "--scale", "4",
                           "--upscaler", "4x-tiny"], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "small-x4.png").size == (256, 256)


@needs_spandrel
def test_esrgan_in_the_hires_fix_and_a1111_extras(easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    save_esrgan(easel_home / "upscalers")
    easel.api.reset_default_runner()
    made = easel.generate("a red circle", model="builtin", size="64x64", steps=2, seed=1, hires_scale=2,
                          hires_upscaler="4x-tiny", save=False)
    assert made[0].image.size == (128, 128) and made[0].parameters["hires"]["upscaler"] == "4x-tiny"
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]))
        assert "4x-tiny" in [u["name"] for u in api.get_upscalers()]
        answer = api.extra_single_image(picture(), upscaler_1="4x-tiny", upscaling_resize=4)
        assert answer.image.size == (256, 256)
        expected = easel.upscale(picture(), scale=4, upscaler="4x-tiny")
        assert np.array_equal(np.asarray(answer.image.convert("RGB")), np.asarray(expected))
        refused = api.session.post(f"{base}/sdapi/v1/extra-single-image", json={
            "image": base64.b64encode(_png(picture())).decode(), "upscaler_1": "../upscalers/4x-tiny.pth"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "upscaler_1"


@needs_spandrel
def test_files_that_are_not_upscalers_are_clear_errors(easel_home):
    folder = easel_home / "upscalers"
    folder.mkdir(parents=True)
    (folder / "notes.pth").write_bytes(b"not a checkpoint")
    from safetensors.torch import save_file

    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, folder / "odd.safetensors")
    easel.api.reset_default_runner()
    for name in ("notes", "odd"):
        with pytest.raises(InvalidRequestError, match=f"The upscaler '{name}'") as caught:
            easel.upscale(picture(), upscaler=name)
        assert caught.value.param == "upscaler"


@pytest.mark.skipif(has_spandrel(), reason="spandrel is installed here")
def test_without_spandrel_the_error_says_what_to_install(easel_home):
    (easel_home / "upscalers").mkdir(parents=True)
    torch.save({"conv_first.weight": torch.zeros(1)}, easel_home / "upscalers" / "4x-any.pth")
    easel.api.reset_default_runner()
    with pytest.raises(UnsupportedError, match=r"pip install 'easel\[esrgan\]'") as caught:
        easel.upscale(picture(), upscaler="4x-any")
    assert caught.value.param == "upscaler"
    with pytest.raises(UnsupportedError, match="spandrel") as caught:  # refused before it is queued
        easel.generate("a red circle", model="builtin", hires_scale=2, hires_upscaler="4x-any", save=False)
    assert caught.value.param == "hires_upscaler"


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_with_spandrel_but_no_torchvision_the_error_says_torchvision(monkeypatch):
    """spandrel installed, its torchvision not importing beside this torch: the message says torchvision and the
    command that installs its CPU build, not the extra that is already installed."""
    import builtins
    import importlib.util

    from easel.providers.diffusers import upscalers

    real_find, real_import = importlib.util.find_spec, builtins.__import__

    def find_spec(name, *args, **kwargs):
        return object() if name == "spandrel" else real_find(name, *args, **kwargs)

    def imports(name, *args, **kwargs):
        if name == "spandrel":
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(builtins, "__import__", imports)
    upscalers._spandrel_problem.cache_clear()
    try:
        message = upscalers._without_spandrel("4x-any", "upscaler").message
    finally:
        upscalers._spandrel_problem.cache_clear()
    assert "torchvision" in message and "download.pytorch.org/whl/cpu" in message and "easel[esrgan]" not in message
