"""Providers are plugins: a package that declares an `easel.providers` entry point is loaded beside the built-in
ones, through the same hook."""

import importlib
import sys
import textwrap

from easel.catalog import default_catalog
from easel.config import Settings
from easel.providers.base import ProviderRegistry
from easel.types import ImageRequest

PLUGIN = '''
from PIL import Image

from easel.providers.base import Provider, ProviderOutput


class SolidProvider(Provider):
    """Paints every image one colour (a plugin written the way a third party would)."""

    name = "solid"

    def __init__(self, settings):
        self.home = settings.home

    def run(self, spec, request, seeds, on_step=None):
        return ProviderOutput(images=[Image.new("RGB", (request.width, request.height), (seed % 256, 0, 0))
                                      for seed in seeds])


def register(add, settings):
    add(SolidProvider(settings))
'''


def test_a_third_party_provider_loads_through_the_entry_point_group(tmp_path, monkeypatch):
    (tmp_path / "easel_solid.py").write_text(PLUGIN)
    dist = tmp_path / "easel_solid-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: easel-solid\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [easel.providers]
        solid = easel_solid:register
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()

    registry = ProviderRegistry(Settings(home=tmp_path / "home"))
    assert {"diffusers", "openai", "hf", "solid"} <= set(registry.names())
    provider = registry.get("solid")
    assert provider.home == tmp_path / "home" and provider.describe().startswith("Paints every image")
    spec = default_catalog().resolve("builtin")
    out = provider.run(spec, ImageRequest(prompt="x", width=8, height=8, num_images=2), [3, 4])
    assert [im.getpixel((0, 0)) for im in out.images] == [(3, 0, 0), (4, 0, 0)]
    sys.modules.pop("easel_solid", None)
