"""The server's event loop only routes: the request check (which reads add-on files and makes ControlNet maps),
image decoding and the job's first database write run in worker threads, on every front that makes images."""

import asyncio
import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from easel.config import Settings
from easel.server.app import create_app

PROMPT = "a large red circle on the left on a blue background"


def png(size=(64, 64), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "blue").save(buf, format="PNG")
    return buf.getvalue()


def on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def spied(tmp_path, monkeypatch):
    """The app, and for each blocking call the routes make, whether it ran on the event loop."""
    import easel.types

    app = create_app(Settings(home=tmp_path, ui=False), warm=False)
    seen: list[tuple[str, bool]] = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen.append((name, on_a_loop()))
            return fn(*args, **kwargs)
        return wrapped

    decode = easel.types.image_from_bytes
    for module in ("easel.server.openai.router", "easel.server.a1111"):
        monkeypatch.setattr(f"{module}.image_from_bytes", spy("decode", decode), raising=False)
    with TestClient(app) as client:
        engine = app.state.engine
        monkeypatch.setattr(engine.runner, "check", spy("check", engine.runner.check))
        monkeypatch.setattr(engine.store, "insert", spy("insert", engine.store.insert))
        yield client, seen


ROUTES = [
    ("openai generation", "/v1/images/generations", {"json": {"prompt": PROMPT, "size": "64x64"}}),
    ("openai edit", "/v1/images/edits", {"files": {"image": ("a.png", png(), "image/png"),
                                                    "mask": ("m.png", png(mode="RGBA"), "image/png")},
                                          "data": {"prompt": PROMPT}}),
    ("openai variation", "/v1/images/variations", {"files": {"image": ("a.png", png(), "image/png")}}),
    ("jobs", "/v1/jobs", {"json": {"prompt": PROMPT, "size": "64x64"}}),
    ("a1111 txt2img", "/sdapi/v1/txt2img", {"json": {"prompt": PROMPT, "width": 64, "height": 64}}),
    ("a1111 img2img", "/sdapi/v1/img2img", {"json": {"prompt": PROMPT, "init_images": [
        base64.b64encode(png()).decode()], "denoising_strength": 0.5}}),
    ("hugging face", "/models/builtin", {"json": {"inputs": PROMPT}}),
    ("kdeps", "/api/v1/image_generator", {"params": {"q": PROMPT}}),
]


@pytest.mark.parametrize("name, path, options", ROUTES, ids=[r[0] for r in ROUTES])
def test_the_blocking_work_of_a_request_runs_beside_the_event_loop(spied, name, path, options):
    client, seen = spied
    answer = client.request("GET" if name == "kdeps" else "POST", path, **options)
    assert answer.status_code in (200, 202), answer.text[:300]
    assert {"check", "insert"} <= {what for what, _ in seen}, seen
    assert not [what for what, loop in seen if loop], f"{name} ran {seen} on the event loop"
