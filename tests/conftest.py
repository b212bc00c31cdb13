"""Test set-up: every test gets its own Easel workspace, and nothing can reach a model hub."""

import os
import sys
import tempfile
from pathlib import Path

# before anything imports huggingface_hub, which reads these once
_HF_HOME = tempfile.mkdtemp(prefix="easel-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

import easel.api  # noqa: E402


@pytest.fixture(autouse=True)
def easel_home(tmp_path, monkeypatch):
    home = tmp_path / "easel-home"
    monkeypatch.setenv("EASEL_HOME", str(home))
    monkeypatch.delenv("EASEL_DEFAULT_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # the CLI hands its jobs to a server at 127.0.0.1:8000 when one answers: tests name theirs, never a stray one
    monkeypatch.setenv("EASEL_HOST", "off")
    easel.api.reset_default_runner()
    yield home
    easel.api.reset_default_runner()


@pytest.fixture(scope="session")
def hub_cache() -> Path:
    return Path(_HF_HOME) / "hub"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny pipelines of each family, saved as folders."""
    from tiny_pipelines import BUILDERS, save_tiny

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny(family, root / family) for family in BUILDERS}
