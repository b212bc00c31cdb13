"""Providers are plugins: a package that declares an `easel.providers` entry point is loaded beside the built-in
ones, through the same hook."""

import base64
import io
import json
import subprocess
import sys

import pytest
from plugins import install_plugin, uninstall_plugin
from fastapi.testclient import TestClient
from PIL import Image

from easel.catalog import default_catalog
from easel.config import Settings
from easel.providers.base import Batch, Progress, ProviderRegistry
from easel.server.app import create_app
from easel.types import ImageRequest

PLUGIN = '''
from PIL import Image

from easel.plugins import ModelFamily, ModelSpec, Provider, ProviderOutput


class SolidProvider(Provider):
    """Paints every image one colour (a plugin written the way a third party would)."""

    name = "solid"

    def __init__(self, settings):
        self.home = settings.home

    def run_batch(self, batch, progress):
        return [ProviderOutput(images=[Image.new("RGB", (request.width, request.height), (seed % 256, 0, 0))
                                       for seed in seeds]) for request, seeds in batch]


FAMILY = ModelFamily(name="solid", size=(64, 64), size_step=8, max_side=1024, negative_prompt=False,
                     max_prompt_chars=500, schedulers=(), supports=("generate",), aspects={"1:1": (64, 64)},
                     provider="solid", steps=None, guidance=None, takes=("seed",))


def register(add, settings):
    add(SolidProvider(settings))
    add(FAMILY)
    add(ModelSpec(name="solid-red", family=FAMILY, source="solid", provider="solid", aliases=("red-paint",),
                  description="One red image per seed."))
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """The plugin installed as a package outside the repository: a module and its .dist-info entry point."""
    yield install_plugin(tmp_path, monkeypatch, "easel_solid", PLUGIN)
    uninstall_plugin("easel_solid")


def test_a_third_party_provider_loads_through_the_entry_point_group(tmp_path, installed_plugin):
    registry = ProviderRegistry(Settings(home=tmp_path / "home"))
    assert {"diffusers", "openai", "hf", "solid"} <= set(registry.names())
    provider = registry.get("solid")
    assert provider.home == tmp_path / "home" and provider.describe().startswith("Paints every image")
    spec = default_catalog().resolve("builtin")
    batch = Batch(spec, [ImageRequest(prompt="x", width=8, height=8, num_images=2)], [[3, 4]])
    [out] = provider.run_batch(batch, Progress())
    assert [im.getpixel((0, 0)) for im in out.images] == [(3, 0, 0), (4, 0, 0)]


def test_a_plugins_model_is_reached_from_the_library_the_cli_and_the_server(tmp_path, installed_plugin):
    """A package adds a provider, a family and a model name: every front runs that name on the plugin."""
    import easel
    from easel.api import reset_default_runner

    reset_default_runner()
    result = easel.generate("anything", model="solid-red", seed=7)
    assert result.model == "solid-red" and result[0].image.getpixel((0, 0)) == (7, 0, 0)
    assert easel.generate("anything", model="red-paint", seed=9)[0].image.getpixel((0, 0)) == (9, 0, 0)

    cli = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "a thing", "-m", "solid-red", "--seed",
                          "5", "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    line = json.loads(cli.stdout.splitlines()[0])
    assert line["model"] == "solid-red" and Image.open(line["path"]).getpixel((0, 0)) == (5, 0, 0)
    listed = subprocess.run([sys.executable, "-m", "easel.cli", "models", "--json"], capture_output=True, text=True,
                            timeout=120)
    assert "solid-red" in [row["name"] for row in json.loads(listed.stdout)]

    app = create_app(Settings(home=tmp_path / "server-home", ui=False), warm=False)
    with TestClient(app) as client:
        r = client.post("/v1/images/generations", json={"prompt": "a thing", "model": "solid-red", "seed": 11,
                                                        "response_format": "b64_json"})
        assert r.status_code == 200, r.text
        image = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
        assert image.getpixel((0, 0)) == (11, 0, 0)
        assert "solid-red" in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_a_plugin_cannot_take_a_known_models_name(tmp_path):
    from easel.catalog import ModelSpec

    catalog = default_catalog()
    with pytest.raises(ValueError, match="builtin"):
        catalog.with_models([], [ModelSpec(name="builtin", family=catalog.families["sd15"], source="x/y")])
