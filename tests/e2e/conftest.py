"""Servers for the end-to-end tests: `easel serve` as a subprocess, and an in-process uvicorn with a clock the
test controls. Both bind 127.0.0.1 only."""

import time

import pytest

from servers import running_server, serving


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
    from easel.config import Settings
    from easel.server.app import create_app

    clock = Clock()
    app = create_app(Settings(home=tmp_path / "home"), clock=clock)
    with serving(app) as base:
        yield base, clock, app
