"""Auth on every route the app has (listed from the app itself, the web UI included), against every kind of bad
credential; key lists are parsed once and a malformed one never starts a server without auth."""

import base64
import subprocess
import sys

import httpx
import pytest
from conftest import fake_app
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.routing import Mount

from servers import free_port, serving

from easel.config import Settings
from easel.server.auth import check_bind, is_loopback

KEY = "sk-reliability-1"
# routes open without a key, each for its reason: health checks, links whose signature is the credential, and
# the web UI, which asks for the key on its own login page (its API calls check the session it grants)
PUBLIC = {"/health", "/favicon.ico", "/v1/files/{image_id}/content", "/files/{image_id}/content", "/ui"}

BAD_CREDENTIALS = {
    "none": {},
    "a comma for a key": {"authorization": "Bearer ,"},
    "scheme only": {"authorization": "Bearer"},
    "wrong key": {"authorization": "Bearer sk-wrong"},
    "key with a suffix": {"authorization": f"Bearer {KEY}x"},
    "key prefix": {"authorization": f"Bearer {KEY[:-1]}"},
    "other scheme": {"authorization": f"Token {KEY}"},
    "basic, wrong password": {"authorization": "Basic " + base64.b64encode(b"user:sk-wrong").decode()},
    "basic, not base64": {"authorization": "Basic %%%"},
    "basic, key as user": {"authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()},
    "key in the query": {},  # sent as ?api_key=... below
    "key in another header": {"x-api-key": KEY},
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    app = fake_app(tmp_path_factory.mktemp("auth-home"), api_keys=KEY, ui=True)
    with serving(app) as base:
        yield base, app


def every_route(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every route, through included routers (FastAPI keeps those as wrappers) and mounts."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += every_route(inner.routes, prefix + (route.include_context.prefix or ""))
        elif isinstance(route, Mount):
            found.append(("GET", prefix + route.path))
        elif isinstance(route, APIRoute) or getattr(route, "methods", None):
            found += [(method, prefix + route.path) for method in sorted(route.methods) if method != "HEAD"]
    return found


def concrete(path: str) -> str:
    return path.replace("{model_id:path}", "builtin").replace("{model:path}", "builtin").replace(
        "{image_id}", "abc").replace("{job_id}", "job_x")


def test_every_route_but_the_public_ones_needs_a_key(keyed):
    base, app = keyed
    routes = every_route(app.routes)
    assert len(routes) > 25, routes
    open_routes = []
    for method, path in routes:
        r = httpx.request(method, base + concrete(path), timeout=30, json={} if method == "POST" else None)
        if r.status_code != 401:
            open_routes.append((method, path, r.status_code))
    assert {path for _, path, _ in open_routes} <= PUBLIC, f"routes open without a key: {open_routes}"


@pytest.mark.parametrize("kind", list(BAD_CREDENTIALS))
def test_bad_credentials_are_401_on_every_kind_of_route(keyed, kind):
    base, _ = keyed
    query = f"?api_key={KEY}" if kind == "key in the query" else ""
    for method, path in [("POST", "/v1/images/generations"), ("GET", "/v1/models"), ("GET", "/v1/jobs"),
                         ("POST", "/models/builtin"), ("POST", "/sdapi/v1/txt2img"), ("GET", "/metrics"),
                         ("GET", "/api/v1/image_generator")]:
        r = httpx.request(method, base + path + query, headers=BAD_CREDENTIALS[kind], json={"prompt": "a"})
        assert r.status_code == 401, (kind, path, r.status_code)
        assert r.json()["error"]["code"] == "invalid_api_key" and KEY not in r.text


def test_the_right_key_opens_the_routes(keyed):
    base, _ = keyed
    for auth in (f"Bearer {KEY}", f"bearer {KEY}", "Basic " + base64.b64encode(f"any:{KEY}".encode()).decode()):
        r = httpx.get(f"{base}/v1/models", headers={"authorization": auth})
        assert r.status_code == 200, auth


@pytest.mark.parametrize("raw", [",", " , ", ",,,", "key one", "sk-\u00e9", "a\tb"])
def test_a_malformed_key_list_is_refused_at_start_up(raw):
    with pytest.raises(ValidationError, match="EASEL_API_KEYS|key"):
        Settings(api_keys=raw)


@pytest.mark.parametrize("raw", ["", "   "])
def test_an_empty_key_list_means_no_keys(raw):
    assert Settings(api_keys=raw).server_keys == []


def test_keys_are_parsed_once_into_a_list():
    assert Settings(api_keys=" k1 , k2,").server_keys == ["k1", "k2"]


@pytest.mark.parametrize("keys", [",", " "])
def test_serve_refuses_a_public_host_with_junk_keys(tmp_path, keys):
    """`EASEL_API_KEYS=","` or `" "` with --host 0.0.0.0 used to start with no auth. The command exits at once,
    before binding (run in a network namespace with loopback only, where unshare is allowed)."""
    env = {"EASEL_HOME": str(tmp_path), "EASEL_API_KEYS": keys, "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "easel.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "EASEL_API_KEYS" in done.stderr and "Traceback" not in done.stderr


def test_mcp_over_http_refuses_a_public_host_with_junk_keys(tmp_path):
    env = {"EASEL_HOME": str(tmp_path), "EASEL_API_KEYS": " ", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "easel.cli", "mcp", "--transport", "http", "--host", "0.0.0.0", "--port",
               str(free_port())]
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "EASEL_API_KEYS" in done.stderr, done.stderr


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True),
                                           ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                           ("127.evil.example", False), ("10.0.0.1", False)])
def test_loopback_is_an_address_not_a_prefix(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        assert check_bind(host, []) is None
    else:
        with pytest.raises(ValueError, match="refusing"):
            check_bind(host, [])
        assert check_bind(host, [], insecure=True).startswith("Warning")
        assert check_bind(host, ["k"]) is None
