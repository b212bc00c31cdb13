"""Upscaling (image filters, and a tiny SD x4 upscaler built from configs) and A1111's hires fix, end to end on the
built-in model and a tiny SD 1.5, through the library, the CLI, the openai SDK and A1111's API (webuiapi)."""

import base64
import io
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
from tiny_pipelines import save_tiny_upscaler

import easel
import easel.api
from easel.errors import InvalidRequestError, UnsupportedError
from easel.providers.diffusers import onednn
from easel.providers.diffusers.cache import tensor_bytes


def picture(side: int = 32) -> Image.Image:
    im = Image.new("RGB", (side, side), "navy")
    ImageDraw.Draw(im).ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4], fill="orange")
    return im


@pytest.fixture
def upscaler(easel_home):
    save_tiny_upscaler(easel_home / "upscalers" / "x4")
    easel.api.reset_default_runner()
    return "x4"


def test_upscale_by_a_filter_or_a_model(upscaler, tmp_path):
    assert np.array_equal(np.asarray(easel.upscale(picture(), scale=2)),
                          np.asarray(picture().resize((64, 64), Image.Resampling.LANCZOS)))
    by_model = easel.upscale(picture(), scale=4, upscaler="x4")
    assert by_model.size == (128, 128)
    cache = easel.api.default_runner().registry.get("diffusers").cache
    [loaded] = [cache.get(key, None) for key in cache.keys() if key[-1] == "upscaler"]
    if onednn.available():  # as every CPU pipeline: its convolutions packed, its copies in the ledger
        assert onednn.packed_bytes([loaded.pipe.unet]) > 0 and loaded.resident_bytes() > tensor_bytes([loaded.pipe])
    in_tiles = easel.upscale(picture(48), scale=4, upscaler="x4", tile=32)  # 2x2 tiles of 32, blended
    assert in_tiles.size == (192, 192)
    with pytest.raises(InvalidRequestError, match="`tile`"):
        easel.upscale(picture(), upscaler="x4", tile=5)
    assert easel.upscale(picture(), scale=2, upscaler="x4").size == (64, 64)  # x4, then down to the size asked
    with pytest.raises(InvalidRequestError, match=r"No upscaler 'x8' \(the upscalers folder has: x4\)"):
        easel.upscale(picture(), upscaler="x8")
    with pytest.raises(InvalidRequestError, match="from 1 to 8"):
        easel.upscale(picture(), scale=0.5)
    picture().save(tmp_path / "small.png")
    done = subprocess.run([sys.executable, "-m", "easel.cli", "upscale", str(tmp_path / "small.png"), "--scale", "4",
                           "--upscaler", "x4"], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "small-x4.png")
    assert Image.open(tmp_path / "small-x4.png").size == (128, 128)


def test_a1111_extras_upscales_with_the_servers_own_models(upscaler, easel_home):
    """The Extras route runs the upscaler model the server holds: one copy in memory, in the server's cache (no
    second runner, no second cache)."""
    from easel.config import Settings
    from easel.server.app import create_app

    app = create_app(Settings(home=easel_home, ui=False), warm=False)
    with serving(app) as base:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]), sampler="")
        assert api.extra_single_image(picture(), upscaler_1="x4", upscaling_resize=4).image.size == (128, 128)
    assert any("upscaler" in key for key in app.state.runner.registry.get("diffusers").cache.keys())
    assert easel.api._runner is None, "the route made a runner (and a model cache) of its own"


def test_an_upscale_is_a_job_of_the_engine(upscaler, easel_home):
    """Upscaling is routed like any job: A1111's Extras queue one; through the jobs API it reports each tile as a
    step, gives the library's pixels, and stops at the next tile when cancelled."""
    import httpx
    from servers import job_events

    from easel.config import Settings
    from easel.server.app import create_app

    def b64(image) -> str:
        png = io.BytesIO()
        image.save(png, format="PNG")
        return base64.b64encode(png.getvalue()).decode()

    expected = easel.upscale(picture(48), scale=4, upscaler="x4", tile=32)
    app = create_app(Settings(home=easel_home / "server", upscalers_dir=easel_home / "upscalers", ui=False),
                     warm=False)
    with serving(app) as base:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]), sampler="")
        api.extra_single_image(picture(), upscaler_1="x4", upscaling_resize=4)
        [extras] = httpx.get(f"{base}/v1/jobs").json()["data"]
        assert extras["status"] == "succeeded"
        body = {"prompt": "", "mode": "upscale", "image": b64(picture(48)), "upscaler": "x4", "scale": 4, "tile": 32}
        job = httpx.post(f"{base}/v1/jobs", json={"request": body}).json()
        events = job_events(base, job["id"])
        steps = [(data["step"], data["total_steps"]) for name, data in events if name == "progress"]
        assert steps[-1] == (4, 4), steps  # 2x2 tiles of 32 over 48 pixels
        assert events[-1][0] == "succeeded"
        made = Image.open(io.BytesIO(httpx.get(events[-1][1]["urls"][0]).content))
        assert np.array_equal(np.asarray(made), np.asarray(expected))
        many = httpx.post(f"{base}/v1/jobs", json={"request": {**body, "image": b64(picture(160))}}).json()
        httpx.delete(f"{base}/v1/jobs/{many['id']}")
        assert job_events(base, many["id"])[-1][0] == "cancelled"


def test_hires_fix_on_the_builtin_model():
    steps = []
    made = easel.generate("a large red circle on the left on a blue background", size="64x64", seed=2,
                          hires_scale=2, hires_strength=0.5, save=False,
                          on_step=lambda step, total, *_: steps.append((step, total)))
    assert made[0].image.size == (128, 128)
    hires = made[0].parameters["hires"]
    assert hires == {"scale": 2.0, "upscaler": "lanczos", "strength": 0.5, "steps": 12, "first_pass_size": "64x64"}
    assert steps[-1] == (steps[-1][1], 12 + 6)  # one progress over both passes (12 steps, then half of 12)
    with pytest.raises(InvalidRequestError, match="over the 2048"):
        easel.generate("a red circle", size="1024x1024", hires_scale=4, save=False)
    with pytest.raises(UnsupportedError, match="for generation"):
        easel.vary(made[0].image, "a red circle", hires_scale=2, save=False)


def test_latent_upscalers_denoise_the_first_pass_latents_at_the_larger_size(sd15):
    from easel.upscalers import LATENT_UPSCALERS

    captured = {}
    provider = easel.api.default_runner().registry.get("diffusers")
    run_batch = provider.run_batch

    def spy(batch, progress):
        if batch.first.mode == "vary":
            captured["image"], captured["latents"] = batch.first.image, batch.latents
        return run_batch(batch, progress)

    provider.run_batch = spy
    by_picture = easel.generate("a lighthouse", hires_scale=2, hires_upscaler="bicubic", save=False, **KW)
    outputs = {}
    for name in LATENT_UPSCALERS:
        made = easel.generate("a lighthouse", hires_scale=2, hires_upscaler=name, save=False, **KW)
        assert made[0].image.size == (128, 128) and made[0].parameters["hires"]["upscaler"] == name
        assert not made.warnings
        latents = captured["latents"]  # the second pass started from latents: 4 channels at the VAE's scale
        assert tuple(latents.shape) == (4, 64, 64)  # the tiny VAE halves: 128 pixels are 64 latents
        # beside the batch, never in the request's image (which is a picture, as every request's is)
        assert isinstance(captured["image"], Image.Image) and captured["image"].size == (128, 128)
        outputs[name] = np.asarray(made[0].image, dtype=np.int16)
    assert not np.array_equal(outputs["latent-bicubic"], np.asarray(by_picture[0].image, dtype=np.int16))
    assert not np.array_equal(outputs["latent"], outputs["latent-nearest"])


def test_latent_upscalers_elsewhere(tiny_models, easel_home):
    made = easel.generate("a red circle", model="builtin", size="64x64", seed=2, hires_scale=2,
                          hires_upscaler="latent", save=False)  # it draws at its own size: its latents stay there
    assert made[0].image.size == (128, 128)
    assert "builtin's latents cannot be upscaled as they are" in " ".join(made.warnings)
    shutil.copytree(tiny_models["flux"], easel_home / "models" / "tiny-flux")
    easel.api.reset_default_runner()
    packed = easel.generate("a lighthouse", model="tiny-flux", size="64x64", steps=2, seed=1, hires_scale=1.5,
                            hires_upscaler="latent", save=False)
    assert packed[0].image.size == (96, 96)
    assert "resized the picture (bilinear) instead" in " ".join(packed.warnings)
    with pytest.raises(InvalidRequestError, match="must be one of lanczos.*latent-nearest-exact"):
        easel.generate("a red circle", model="builtin", hires_scale=2, hires_upscaler=" ", save=False)


@pytest.fixture
def sd15(tiny_models, easel_home, upscaler):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    easel.api.reset_default_runner()


KW = dict(model="tiny", size="64x64", steps=2, seed=6)


def test_hires_fix_on_sd15_through_every_front(sd15, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    made = easel.generate("a lighthouse", hires_scale=2, hires_steps=4, hires_strength=0.5, **KW)
    first = easel.generate("a lighthouse", save=False, **KW)[0].image
    assert made[0].image.size == (128, 128)
    resized = np.asarray(first.resize((128, 128), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.abs(np.asarray(made[0].image, dtype=np.int16) - resized).mean() > 1  # the second pass painted
    by_model = easel.generate("a lighthouse", hires_scale=2, hires_upscaler="x4", save=False, **KW)
    assert by_model[0].image.size == (128, 128) and by_model[0].parameters["hires"]["upscaler"] == "x4"
    again = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "--from", made[0].path, "--json"],
                           capture_output=True, text=True, env={**os.environ})
    assert again.returncode == 0, again.stderr
    import json

    path = json.loads(again.stdout.splitlines()[0])["path"]
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(made[0].path)))

    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        res = client.images.generate(prompt="a lighthouse", model="tiny", size="64x64", extra_body={
            "num_inference_steps": 2, "seed": 6, "hires_scale": 2, "hires_steps": 4, "hires_strength": 0.5})
        served = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))
        assert np.array_equal(np.asarray(served), np.asarray(made[0].image))

        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]), sampler="")
        names = [u["name"] for u in api.get_upscalers()]
        assert names[:3] == ["Lanczos", "Bicubic", "Nearest"] and "x4" in names
        answer = api.txt2img(prompt="a lighthouse", width=64, height=64, steps=2, seed=6, cfg_scale=7.5,
                             sampler_name="", enable_hr=True, hr_scale=2, hr_upscaler="Lanczos",
                             hr_second_pass_steps=4, denoising_strength=0.5,
                             override_settings={"sd_model_checkpoint": "tiny"})
        assert answer.image.size == (128, 128)
        assert np.array_equal(np.asarray(answer.image), np.asarray(made[0].image))
        assert "Hires upscale: 2.0" in answer.info["infotexts"][0]
        latent = api.txt2img(prompt="a lighthouse", width=64, height=64, steps=2, seed=6, cfg_scale=7.5,
                             sampler_name="", enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)",
                             override_settings={"sd_model_checkpoint": "tiny"})
        expected = easel.generate("a lighthouse", size="64x64", steps=2, seed=6, model="tiny", hires_scale=1.5,
                                  hires_upscaler="latent-bicubic", hires_strength=0.7, save=False)
        assert latent.image.size == (96, 96) and not latent.info["warnings"]
        modes = [m["name"] for m in api.session.get(f"{base}/sdapi/v1/latent-upscale-modes").json()]
        assert modes[0] == "Latent" and "Latent (bicubic antialiased)" in modes and len(modes) == 6
        assert np.array_equal(np.asarray(latent.image), np.asarray(expected[0].image))
        bigger = api.extra_single_image(picture(), upscaler_1="x4", upscaling_resize=4)
        assert bigger.image.size == (128, 128)
        plain = api.extra_single_image(picture(), upscaler_1="Lanczos", upscaling_resize=2)
        assert np.array_equal(np.asarray(plain.image), np.asarray(easel.upscale(picture(), scale=2)))
        refused = api.session.post(f"{base}/sdapi/v1/extra-single-image", json={
            "image": base64.b64encode(b"not an image").decode(), "upscaler_1": "Lanczos"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "image"
        png = io.BytesIO()
        picture().save(png, format="PNG")
        path = api.session.post(f"{base}/sdapi/v1/extra-single-image", json={
            "image": base64.b64encode(png.getvalue()).decode(), "upscaler_1": str(easel_home / "upscalers" / "x4")})
        assert path.status_code == 400 and "not a path" in path.json()["error"]["message"]
