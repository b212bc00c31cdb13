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


def test_a_control_map_is_made_by_the_engines_worker_not_by_the_check(monkeypatch):
    """The check only validates a ControlNet unit (its preprocessor among the known ones); its map (Canny's edges,
    which take a while on a large picture) is made by the runner, on the engine's worker."""
    import easel.engine.runner as runner_module
    from easel.catalog import default_catalog
    from easel.checks import check_request
    from easel.control import ControlUnit
    from easel.errors import InvalidRequestError
    from easel.types import ImageRequest

    unit = ControlUnit("edges", Image.new("RGB", (64, 64), "white"), "canny")
    checked = check_request(ImageRequest(prompt="a lighthouse", model="sd15", control=[unit]), default_catalog())
    assert checked.request.control[0].map is None
    with pytest.raises(InvalidRequestError) as caught:
        check_request(ImageRequest(prompt="a lighthouse", model="sd15",
                                   control=[ControlUnit("edges", unit.image, "sobel")]), default_catalog())
    assert caught.value.param == "control" and "'sobel'" in caught.value.message
    made = []
    monkeypatch.setattr(runner_module, "preprocess", lambda u: made.append(u) or u.image)

    seen = []

    class Provider:
        name = "diffusers"

        def run_batch(self, batch, progress):
            seen.extend(u.map for u in batch.first.control)
            raise RuntimeError("enough")

    runner = runner_module.Runner.__new__(runner_module.Runner)
    runner.registry = type("Registry", (), {"get": staticmethod(lambda name: Provider())})()
    with pytest.raises(RuntimeError, match="enough"):
        runner._run_batch(checked.spec, [checked.request], runner_module.Progress())
    assert len(made) == 1 and seen == [unit.image]  # made by the runner, before the model runs
