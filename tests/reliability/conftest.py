"""Servers for the reliability suite: the real app on 127.0.0.1, backed by FakeProvider where a test is about the
server rather than the model (so that hundreds of requests take seconds), or by the built-in model."""

import contextlib
import shutil
from pathlib import Path

import pytest

from servers import serving

from easel.config import Settings
from easel.engine.runner import Runner
from easel.providers.base import ProviderRegistry
from easel.server.app import create_app
from easel.testing import FakeProvider

BUILTIN_FOLDER = Path(__import__("easel").__file__).parent / "builtin" / "model"


def fake_app(home: Path, provider: FakeProvider | None = None, **settings):
    """create_app whose local models (the built-in one included) run on FakeProvider."""
    options = {"home": home, "ui": False, **settings}
    config = Settings(**options)
    registry = ProviderRegistry(config)
    registry.add(provider or FakeProvider())
    return create_app(config, runner=Runner(config, registry=registry, allow_paths=False))


@contextlib.contextmanager
def fake_server(home: Path, provider: FakeProvider | None = None, **settings):
    app = fake_app(home, provider, **settings)
    with serving(app) as base:
        yield base, app


@pytest.fixture(scope="module")
def fast_server(tmp_path_factory):
    """One FakeProvider-backed server for a module: (base URL, app)."""
    with fake_server(tmp_path_factory.mktemp("fast-home")) as served:
        yield served


def copy_builtin(target: Path) -> Path:
    """A copy of the built-in model's pipeline folder (a real diffusers folder) at `target`."""
    shutil.copytree(BUILTIN_FOLDER, target)
    return target
