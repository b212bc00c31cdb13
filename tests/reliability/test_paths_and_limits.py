"""No client reaches a server folder: signed links serve only real image files inside the images folder, a model a
client names is never opened from the server's disk, and the operator's own folders are served by name. Bodies
are cut off at their limit, chunked or not, and the OpenAPI document references only what it defines."""

import json
import os
import select
import socket
import sqlite3
import time

import httpx
import pytest
from conftest import copy_builtin, fake_server

from servers import running_server, serving

from easel.config import Settings
from easel.server.app import create_app
from easel.server.middleware import MAX_JSON_BYTES

SECRET = "top-secret-server-file"


@pytest.fixture
def served_image(tmp_path):
    """A server with one saved image behind a signed link: (home, link, the image's recorded path, a secret file
    beside the workspace)."""
    secret = tmp_path / "secret.png"
    secret.write_text(SECRET)
    home = tmp_path / "home"
    with fake_server(home) as (base, _):
        r = httpx.post(f"{base}/v1/images/generations", json={"prompt": "a red circle", "size": "64x64",
                                                               "response_format": "url"}, timeout=30)
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        assert httpx.get(url).status_code == 200
        image_id = url.split("/files/")[1].split("/")[0]
        with sqlite3.connect(home / "history.db") as db:
            path = db.execute("SELECT path FROM generations WHERE id = ?", (image_id,)).fetchone()[0]
        yield home, url, image_id, path, secret


def test_a_symlink_planted_at_an_image_path_is_not_followed(served_image):
    _, url, _, path, secret = served_image
    os.unlink(path)
    os.symlink(secret, path)
    r = httpx.get(url)
    assert r.status_code == 404 and SECRET not in r.text


def test_a_history_row_pointing_outside_the_images_folder_is_not_served(served_image):
    home, url, image_id, _, secret = served_image
    for elsewhere in (secret, home / "images" / ".." / ".." / "secret.png"):  # outside, and a climb out
        with sqlite3.connect(home / "history.db") as db:
            db.execute("UPDATE generations SET path = ? WHERE id = ?", (str(elsewhere), image_id))
        r = httpx.get(url)
        assert r.status_code == 404 and SECRET not in r.text


@pytest.fixture
def planted_folder(tmp_path, monkeypatch):
    """A real pipeline folder at evil/model in the server's working directory: a hub-id-shaped name."""
    cwd = tmp_path / "cwd"
    copy_builtin(cwd / "evil" / "model")
    monkeypatch.chdir(cwd)
    return cwd


def test_a_client_cannot_open_a_folder_that_looks_like_a_hub_id(tmp_path, planted_folder):
    app = create_app(Settings(home=tmp_path / "home", ui=False))
    with serving(app) as base:
        attempts = [
            ("/v1/images/generations", {"prompt": "a red circle", "model": "evil/model", "size": "64x64"}),
            ("/v1/jobs", {"prompt": "a red circle", "model": "evil/model"}),
            ("/models/evil/model", {"inputs": "a red circle"}),
            ("/sdapi/v1/txt2img", {"prompt": "a red circle", "width": 64, "height": 64,
                                   "override_settings": {"sd_model_checkpoint": "evil/model"}}),
            ("/sdapi/v1/options", {"sd_model_checkpoint": "evil/model"}),
            ("/v1/images/generations", {"prompt": "a red circle", "model": "./evil/model"}),
            ("/v1/images/generations", {"prompt": "a red circle", "model": str(planted_folder / "evil/model")}),
        ]
        for route, body in attempts:
            r = httpx.post(base + route, json=body, timeout=60)
            assert r.status_code == 404, (route, body, r.status_code, r.text[:200])
        # /options did not stick: the next A1111 request runs the server's own model
        assert httpx.get(f"{base}/sdapi/v1/options").json()["sd_model_checkpoint"] == "builtin"
        loaded = app.state.runner.registry.get("diffusers").cache.keys()
        assert all("evil" not in str(key[0]) for key in loaded), loaded


def test_the_operators_folders_are_served_by_name(tmp_path):
    """`easel serve --model FOLDER` answers with that model (it used to refuse its own model), and each pipeline
    folder in the models folder is a model by its folder name; the server's paths never reach a client."""
    folder = copy_builtin(tmp_path / "operator" / "my-shapes")
    home = tmp_path / "home"
    copy_builtin(home / "models" / "house-style")
    with running_server(home, args=("--model", str(folder))) as srv:
        health = httpx.get(f"{srv.base}/health").json()
        assert health["status"] == "ok"
        r = httpx.post(f"{srv.base}/v1/images/generations",
                       json={"prompt": "a red circle", "size": "64x64", "num_inference_steps": 2}, timeout=60)
        assert r.status_code == 200, r.text
        assert str(tmp_path) not in r.text
        r = httpx.post(f"{srv.base}/v1/images/generations", json={"prompt": "a red circle", "model": "house-style",
                                                                   "size": "64x64", "num_inference_steps": 2},
                       timeout=60)
        assert r.status_code == 200, r.text
        models = [m["id"] for m in httpx.get(f"{srv.base}/v1/models").json()["data"]]
        assert "my-shapes" in models and "house-style" in models
        job = httpx.post(f"{srv.base}/v1/jobs", json={"prompt": "a blue square", "model": "my-shapes",
                                                      "num_inference_steps": 2}).json()
        assert job["status"] in ("queued", "running", "succeeded")


def test_a_chunked_body_is_cut_off_at_the_limit(fast_server):
    """60 MB sent chunked (no content-length): the server answers 413 once 2 MB have arrived, without reading on."""
    base, _ = fast_server
    host, port = base.removeprefix("http://").split(":")
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        answer = b""
        while sent < 60 * 2**20:
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                break
        deadline = time.time() + 10
        while b"\r\n\r\n" not in answer and time.time() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 8 * 2**20, f"the server read {sent} bytes before refusing"
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1].split(b"\r\n0\r\n")[0] or b"{}") if b"{" in answer else {}
    assert not body or body["error"]["code"] == "payload_too_large"


def test_a_declared_body_over_the_limit_is_refused_unread(fast_server):
    base, _ = fast_server
    r = httpx.post(f"{base}/v1/images/generations", content=b"x" * (MAX_JSON_BYTES + 1),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_a_chunked_body_under_the_limit_is_read(fast_server):
    base, _ = fast_server

    def body():
        yield b'{"prompt": "a red circle",'
        yield b' "size": "64x64"}'

    r = httpx.post(f"{base}/v1/images/generations", content=body(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 200, r.text


def test_openapi_references_only_what_it_defines(fast_server):
    base, _ = fast_server
    spec = httpx.get(f"{base}/openapi.json").json()
    defined = set(spec.get("components", {}).get("schemas", {}))
    text = json.dumps(spec)
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= defined, refs - defined
    for route in ("/v1/images/edits", "/v1/images/variations"):
        schema = spec["paths"][route]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert "image" in schema["properties"] and "image" in schema["required"]


def test_a_broken_folder_in_the_models_folder_is_skipped(tmp_path):
    from easel.engine.runner import Runner

    home = tmp_path / "home"
    copy_builtin(home / "models" / "good")
    (home / "models" / "broken").mkdir()
    (home / "models" / "broken" / "model_index.json").write_text("{not json")
    (home / "models" / "notes").mkdir()
    runner = Runner(Settings(home=home), allow_paths=False)
    assert "good" in runner.catalog.models and "broken" not in runner.catalog.models
