"""Server behaviour that needs no model run: limits, CORS, error shapes (FastAPI's TestClient, in process)."""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from easel.config import Settings
from easel.server.app import create_app


@pytest.fixture
def client(tmp_path):
    app = create_app(Settings(home=tmp_path, cors_origins="http://localhost:3000"), warm=False)
    with TestClient(app) as c:
        yield c


def test_cors_preflight_allows_the_sdk_headers(client):
    r = client.options("/v1/images/generations", headers={
        "origin": "http://localhost:3000", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type, x-stainless-os, x-stainless-lang"})
    assert r.status_code == 200
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "x-stainless-os" in allowed and "authorization" in allowed


def test_decompression_bombs_are_refused_from_the_header(client):
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")
    r = client.post("/v1/images/edits", files={"image": ("bomb.png", buf.getvalue(), "image/png")},
                    data={"prompt": "a red circle"})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "image" and "5000x5000" in error["message"]


def test_oversized_uploads_are_413(client):
    big = b"\x89PNG" + b"0" * (4 * 1024 * 1024 + 10)
    r = client.post("/v1/images/edits", files={"image": ("big.png", big, "image/png")},
                    data={"prompt": "a red circle", "model": "dall-e-2"})
    assert r.status_code == 413 and r.json()["error"]["param"] == "image"


def test_unknown_parameters_and_wrong_types_are_400_not_422(client):
    r = client.post("/v1/images/generations", json={"prompt": "x", "colour": "red"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "colour"
    r = client.post("/v1/images/generations", json={"prompt": "x", "n": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "detail" not in r.json()
    r = client.post("/v1/images/generations", json={"prompt": "x", "background": "transparent"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "background"


def test_health_is_503_while_loading(tmp_path):
    app = create_app(Settings(home=tmp_path), warm=False)
    app.state.warmup.ready.clear()
    with TestClient(app) as c:
        app.state.warmup.ready.clear()
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"


def test_method_not_allowed_and_not_found_use_the_envelope(client):
    r = client.get("/v1/images/generations")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert client.get("/v1/files/abc/content").status_code == 404
