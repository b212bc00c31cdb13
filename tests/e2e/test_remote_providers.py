"""Remote providers and the routes other clients speak, through real clients and real servers on 127.0.0.1:
the OpenAI provider (openai SDK) and the HF provider (InferenceClient) against `easel serve`, the A1111 routes
with `webuiapi`, and a small HF-protocol server for the loading and error cases."""

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

import easel
from easel.api import reset_default_runner
from easel.keys import set_key

PROMPT = "a large red circle on the left on a white background"


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def local(prompt: str, seed: int, size: str = "32x32", steps: int | None = None, guidance: float | None = None):
    return easel.generate(prompt, model="builtin", size=size, seed=seed, steps=steps, guidance=guidance,
                          save=False)[0].image


@pytest.fixture
def remote_env(monkeypatch, server):
    monkeypatch.setenv("EASEL_OPENAI_BASE_URL", f"{server.base}/v1")
    monkeypatch.setenv("EASEL_HF_BASE_URL", server.base)
    reset_default_runner()
    return server


# -- OpenAI provider -------------------------------------------------------------------------------------------------
def test_openai_provider_against_easel_serve_gives_the_local_image(remote_env):
    result = easel.generate(PROMPT, model="openai:builtin", size="32x32", seed=11, n=2)
    assert result.model == "openai:builtin" and len(result) == 2
    assert [im.seed for im in result] == [11, 12] and all(im.path for im in result)
    assert result[0].parameters["provider"] == "openai"
    for im, seed in zip(result, (11, 12)):  # the seed travels as Easel's extension: the same image as locally
        assert np.abs(pixels(im.image) - pixels(local(PROMPT, seed))).max() <= 3


def test_openai_provider_edit_with_mask_and_variation(remote_env):
    base = local(PROMPT, 1)
    mask = Image.new("L", base.size, 0)
    mask.paste(255, (0, 0, 16, 32))  # repaint the left half
    edited = easel.edit(base, "a large blue square on the left on a white background", mask=mask,
                        model="openai:builtin", seed=2)
    left, right = pixels(edited[0].image)[:, :16], pixels(edited[0].image)[:, 24:]
    # beyond the band of 8 pixels (twice the mask blur) where the edit blends in, the image is kept
    assert np.abs(right - pixels(base)[:, 24:]).mean() < 8, "outside the mask the image is kept"
    assert np.abs(left - pixels(base)[:, :16]).mean() > 8, "inside the mask it is repainted"
    varied = easel.vary(base, model="openai:builtin", seed=3, n=2)
    assert len(varied) == 2 and varied[0].image.size == (32, 32)


def test_a_remote_default_model_serves_every_call_that_names_none(remote_env, monkeypatch):
    from easel.tools import generate_image

    monkeypatch.setenv("EASEL_DEFAULT_MODEL", "openai:builtin")
    reset_default_runner()
    assert easel.generate(PROMPT, size="32x32").model == "openai:builtin"
    assert "(model openai:builtin," in generate_image(PROMPT, size="32x32")


def test_openai_rules_are_checked_before_any_call(remote_env):
    for kwargs, param in [(dict(model="openai:dall-e-3", size="512x512"), "size"),
                          (dict(model="openai:dall-e-3", n=2), "n"),
                          (dict(model="openai:dall-e-2", size="1024x1024", quality="hd"), "quality"),
                          (dict(model="openai:gpt-image-1", steps=10), "num_inference_steps"),
                          (dict(model="openai:dall-e-3", negative_prompt="blur"), "negative_prompt")]:
        with pytest.raises(easel.InvalidRequestError) as err:
            easel.generate("a cat", **kwargs)
        assert err.value.param == param, (kwargs, err.value.message)
    with pytest.raises(easel.UnsupportedError):
        easel.vary(local(PROMPT, 1), model="openai:dall-e-3")


def test_openai_provider_content_policy_and_errors_come_back_as_easel_errors(remote_env):
    with pytest.raises(easel.ContentPolicyError) as err:
        _generate_unmoderated("a nude figure")  # refused by the server, not by the local check
    assert "content policy" in err.value.message.lower() and "openai:builtin" in err.value.message
    with pytest.raises(easel.InvalidRequestError) as err:  # the built-in model takes 300 characters
        easel.generate("a red circle " * 40, model="openai:builtin", size="32x32")
    assert err.value.param == "prompt" and "300" in err.value.message


def _generate_unmoderated(prompt: str):
    """The provider's refusal, not the local check: turn the local content policy off for this call."""
    from easel.config import Settings
    from easel.engine.runner import Runner
    from easel.types import ImageRequest

    runner = Runner(Settings(moderation=False))
    return runner.run(ImageRequest(prompt=prompt, model="openai:builtin", size="32x32"), save=False)


def test_openai_provider_key_from_the_key_store(auth_server, monkeypatch, easel_home):
    monkeypatch.setenv("EASEL_OPENAI_BASE_URL", f"{auth_server.base}/v1")
    reset_default_runner()
    with pytest.raises(easel.AuthenticationError):
        easel.generate(PROMPT, model="openai:builtin", size="32x32")
    set_key(easel_home / "keys.json", "openai", "sk-test-2")
    reset_default_runner()
    assert easel.generate(PROMPT, model="openai:builtin", size="32x32")[0].image.size == (32, 32)


def test_openai_provider_needs_a_key_for_api_openai_com(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(easel.MissingKeyError) as err:
        easel.generate("a cat", model="openai:gpt-image-1")
    assert "easel keys set openai" in err.value.message


# -- Hugging Face provider and route ---------------------------------------------------------------------------------
@pytest.fixture
def hf_client_online(monkeypatch):
    """The tests keep huggingface_hub offline (no hub may be reached); its InferenceClient may reach 127.0.0.1."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)


def test_hf_provider_against_the_servers_hf_route(remote_env, hf_client_online):
    result = easel.generate(PROMPT, model="hf:builtin", size="32x32", seed=21, negative_prompt="blue",
                            steps=12, guidance=3.0)
    assert result.model == "hf:builtin" and result[0].parameters["provider"] == "hf"
    solo = easel.generate(PROMPT, model="builtin", size="32x32", seed=21, negative_prompt="blue", steps=12,
                          guidance=3.0, save=False)[0].image
    assert np.abs(pixels(result[0].image) - pixels(solo)).max() <= 3


def test_hf_route_with_the_real_inference_client(server, hf_client_online):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    client = InferenceClient(model=f"{server.base}/models/builtin")
    image = client.text_to_image(PROMPT, width=32, height=32, seed=5, num_inference_steps=10)
    assert image.size == (32, 32)
    with pytest.raises(HfHubHTTPError) as err:
        client.text_to_image(PROMPT, width=33, height=32)
    assert err.value.response.status_code == 400 and "width" in err.value.response.json()["error"]
    r = httpx.post(f"{server.base}/models/builtin", json={"inputs": PROMPT, "parameters": {"colour": 1}})
    assert r.status_code == 400 and "colour" in r.json()["error"]
    r = httpx.post(f"{server.base}/models/no-such-model", json={"inputs": PROMPT})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{server.base}/models/builtin", json={"inputs": PROMPT, "parameters": {"width": 32,
                   "height": 32}}, headers={"accept": "image/jpeg"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"


def test_server_clients_cannot_name_a_local_folder_as_model(server, tmp_path):
    r = httpx.post(f"{server.base}/models/{tmp_path}", json={"inputs": PROMPT})
    assert r.status_code == 404
    r = httpx.post(f"{server.base}/v1/images/generations", json={"prompt": PROMPT, "model": str(tmp_path)})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


class FakeHFServer:
    """An HF-protocol server that answers a scripted list of (status, content type, body)."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                status, ctype, body = outer.script[min(outer.calls, len(outer.script) - 1)]
                outer.calls += 1
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def _hf(monkeypatch, script, max_wait: float = 30):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    fake = FakeHFServer(script)
    monkeypatch.setenv("EASEL_HF_BASE_URL", fake.base)
    monkeypatch.setenv("EASEL_HF_MAX_WAIT_S", str(max_wait))
    reset_default_runner()
    return fake


LOADING = (503, "application/json", json.dumps({"error": "Model is currently loading",
                                                "estimated_time": 0.5}).encode())


def test_hf_provider_waits_for_a_loading_model_then_gets_the_image(monkeypatch, caplog):
    fake = _hf(monkeypatch, [LOADING, LOADING, (200, "image/png", _png())])
    try:
        started = time.time()
        result = easel.generate("a cat", model="hf:org/model", size="32x32")
        assert fake.calls == 3 and time.time() - started >= 2  # two waits of at least 1 s
        assert pixels(result[0].image)[0, 0].tolist() == [200, 10, 10]
        assert any("loading" in w for w in result.warnings)
        assert any("loading" in r.message for r in caplog.records)
    finally:
        fake.close()


def test_hf_provider_gives_up_after_its_bounded_wait(monkeypatch):
    fake = _hf(monkeypatch, [LOADING], max_wait=1.5)
    try:
        with pytest.raises(easel.ServiceUnavailableError) as err:
            easel.generate("a cat", model="hf:org/model", size="32x32")
        assert "not ready after waiting" in err.value.message and fake.calls <= 3
    finally:
        fake.close()


@pytest.mark.parametrize("status,ctype,body,error,words", [
    (200, "application/json", b'{"error": "quota exceeded"}', easel.ProviderError, "not an image"),
    (200, "image/png", b"not a png at all", easel.ProviderError, "not an image"),
    (500, "application/json", b'{"error": "CUDA out of memory"}', easel.ProviderError, "CUDA out of memory"),
    (400, "application/json", b'{"error": "width too large"}', easel.InvalidRequestError, "width too large"),
    (401, "application/json", b'{"error": "Invalid token"}', easel.AuthenticationError, "Invalid token"),
    (404, "application/json", b'{"error": "Model org/model does not exist"}', easel.ModelNotFoundError, "exist"),
])
def test_hf_provider_never_takes_an_error_body_for_an_image(monkeypatch, status, ctype, body, error, words):
    fake = _hf(monkeypatch, [(status, ctype, body)])
    try:
        with pytest.raises(error) as err:
            easel.generate("a cat", model="hf:org/model", size="32x32")
        assert words in err.value.message
    finally:
        fake.close()


def test_hf_provider_needs_a_token_for_hugging_face(monkeypatch):
    monkeypatch.delenv("EASEL_HF_BASE_URL", raising=False)
    with pytest.raises(easel.MissingKeyError) as err:
        easel.generate("a cat", model="hf:stabilityai/stable-diffusion-xl-base-1.0")
    assert "easel keys set hf" in err.value.message


# -- the A1111 API ---------------------------------------------------------------------------------------------------
def test_a1111_txt2img_img2img_models_and_options_with_webuiapi(server):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port)
    r = api.txt2img(prompt=PROMPT, width=32, height=32, seed=7, steps=20, cfg_scale=4, batch_size=2)
    assert len(r.images) == 2 and r.images[0].size == (32, 32) and r.info["all_seeds"] == [7, 8]
    assert "Seed: 7" in r.info["infotexts"][0]
    assert np.abs(pixels(r.images[0]) - pixels(local(PROMPT, 7, steps=20, guidance=4))).max() <= 3
    assert "builtin" in api.util_get_model_names()
    api.util_set_model("builtin")
    assert api.util_get_current_model() == "builtin"
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 0, 32, 32))
    r2 = api.img2img(images=[r.images[0]], mask_image=mask, prompt="a small green square on the right on a white "
                     "background", width=32, height=32, seed=1, denoising_strength=1.0)
    assert len(r2.images) == 1
    assert np.abs(pixels(r2.images[0])[:, :8] - pixels(r.images[0])[:, :8]).mean() < 8  # beyond the blended band
    r2_hard = api.img2img(images=[r.images[0]], mask_image=mask, prompt="a small green square on the right on a "
                          "white background", width=32, height=32, seed=1, denoising_strength=1.0, mask_blur=0)
    assert np.array_equal(pixels(r2_hard.images[0])[:, :16], pixels(r.images[0])[:, :16])  # A1111's mask_blur
    r3 = api.img2img(images=[r.images[0]], prompt=PROMPT, width=32, height=32, seed=1, denoising_strength=0.3)
    assert r3.images[0].size == (32, 32)
    bad = httpx.post(f"{server.base}/sdapi/v1/txt2img", json={"prompt": "x", "sampler_name": "Nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sampler_name"
    options = httpx.get(f"{server.base}/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "builtin"
    assert not any("key" in k.lower() or "token" in k.lower() for k in options)


def test_a1111_interrupt_stops_its_own_task_only(server):
    base = server.base
    body = {"prompt": PROMPT, "width": 32, "height": 32, "steps": 400, "seed": 2, "force_task_id": "task(mine)"}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, f"{base}/sdapi/v1/txt2img", json=body, timeout=300)
        deadline = time.time() + 180
        while time.time() < deadline:  # until the task shows a preview of its current step
            p = httpx.get(f"{base}/sdapi/v1/progress", params={"id_task": "task(mine)"}, timeout=30)
            if p.status_code == 200 and p.json()["current_image"]:
                break
            time.sleep(0.1)
        assert 0 < p.json()["progress"] < 1 and p.json()["state"]["sampling_step"] >= 5
        Image.open(io.BytesIO(base64.b64decode(p.json()["current_image"]))).verify()
        skipped = httpx.get(f"{base}/sdapi/v1/progress", timeout=30,
                            params={"id_task": "task(mine)", "skip_current_image": True}).json()
        assert skipped["current_image"] is None
        # another front's job, queued behind the A1111 task
        other = httpx.post(f"{base}/v1/jobs", json={"prompt": PROMPT, "size": "32x32", "num_inference_steps": 5,
                                                     "seed": 1}, timeout=30).json()["id"]
        stopped = httpx.post(f"{base}/sdapi/v1/interrupt", params={"id_task": "task(mine)"}, timeout=30).json()
        result = answer.result()
    assert result.status_code == 200 and result.json()["images"] == []
    assert json.loads(result.json()["info"])["interrupted"] is True and len(stopped["interrupted"]) == 1
    while time.time() < deadline + 120:
        state = httpx.get(f"{base}/v1/jobs/{other}", timeout=30).json()["status"]
        if state not in ("queued", "running"):
            break
        time.sleep(0.2)
    assert state == "succeeded", "an A1111 interrupt never touches another front's job"


def test_a1111_clients_authenticate_with_http_basic(auth_server):
    with pytest.raises(RuntimeError) as err:
        webuiapi.WebUIApi(host="127.0.0.1", port=auth_server.port).txt2img(prompt=PROMPT, width=32, height=32)
    assert err.value.args[0] == 401
    api = webuiapi.WebUIApi(host="127.0.0.1", port=auth_server.port, username="me", password="sk-test-1")
    assert api.txt2img(prompt=PROMPT, width=32, height=32, seed=1).image.size == (32, 32)
    assert httpx.get(f"{auth_server.base}/sdapi/v1/options", auth=("me", "wrong")).status_code == 401
