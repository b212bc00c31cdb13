"""Servers for the end-to-end tests: `easel serve` as a subprocess, and an in-process uvicorn with a clock the
test controls. Both bind 127.0.0.1 only."""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} did not become healthy in {timeout}s")


class ServerProcess:
    def __init__(self, home, keys: str = ""):
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EASEL_HOME": str(home), "EASEL_API_KEYS": keys}
        home.mkdir(parents=True, exist_ok=True)
        self.log = open(home / "server.log", "wb")  # a file, not a pipe: an unread pipe fills and blocks the server
        self.proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--port", str(self.port)],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@contextlib.contextmanager
def running_server(home, keys: str = ""):
    """`easel serve` in a subprocess, healthy, stopped on exit."""
    srv = ServerProcess(home, keys=keys)
    try:
        wait_healthy(srv.base)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("server-home")) as srv:
        yield srv


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("auth-home"), keys="sk-test-1,sk-test-2") as srv:
        yield srv


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked_server(tmp_path):
    """create_app with an injected clock, served by uvicorn in a thread on 127.0.0.1."""
    import uvicorn

    from easel.config import Settings
    from easel.server.app import create_app

    clock = Clock()
    app = create_app(Settings(home=tmp_path / "home"), clock=clock)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    yield base, clock, app
    uv.should_exit = True
    thread.join(10)
