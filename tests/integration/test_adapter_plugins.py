"""A kind of add-on is a plugin: a package outside Easel gives `add` an `Adapter` (FreeU here, which re-weighs the
UNet's skip connections for one call), and the library runs it on the models of the families it fits, records it,
undoes it after the call, and refuses its option on other models, with no change to Easel's files."""

import shutil

import numpy as np
import pytest
from plugins import install_plugin, uninstall_plugin

import easel
from easel.errors import InvalidRequestError

PLUGIN = '''
import contextlib

from easel.plugins import Adapter, OptionSpec


class FreeU(Adapter):
    """FreeU (Si et al. 2023) on the UNet of SD 1.5 and SDXL, for the calls that ask for it."""

    kind = param = "freeu"
    option = OptionSpec("freeu", "float", "FreeU's backbone factor b1 (1.0 to 1.6); the others follow it.")
    families = ("sd15", "sdxl")

    @contextlib.contextmanager
    def enter(self, call, uses):
        call.pipe.enable_freeu(s1=0.9, s2=0.2, b1=uses, b2=uses + 0.2)
        call.details["freeu"] = {"b1": uses}
        try:
            yield {}
        finally:
            call.pipe.disable_freeu()


def register(add, settings):
    add(FreeU())
'''


@pytest.fixture
def freeu_plugin(tmp_path, monkeypatch):
    """The plugin installed as a package outside the repository: a module and its .dist-info entry point."""
    yield install_plugin(tmp_path, monkeypatch, "easel_freeu", PLUGIN)
    uninstall_plugin("easel_freeu")


def test_a_plugins_adapter_kind_runs_from_the_library(tiny_models, easel_home, freeu_plugin):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    easel.api.reset_default_runner()
    kw = dict(model="tiny", size="64x64", steps=2, seed=5, save=False)

    def pixels(**options):
        made = easel.generate("a lighthouse", **kw, **options)
        return np.asarray(made[0].image, dtype=np.int16), made[0].parameters

    plain, record = pixels()
    freed, freed_record = pixels(freeu=1.4)
    again, _ = pixels()
    assert np.abs(freed - plain).max() > 0, "the adapter changed the picture"
    assert np.array_equal(again, plain), "and undid itself after its call"
    assert freed_record["freeu"] == {"b1": 1.4} and "freeu" not in record
    assert freed_record["extra"] == {"freeu": 1.4}  # as asked, so that `--from` asks again

    with pytest.raises(InvalidRequestError) as caught:  # its option is checked like the family's own
        easel.generate("a lighthouse", **kw, freeu="strong")
    assert caught.value.param == "freeu"
    with pytest.raises(InvalidRequestError) as caught:  # a family it does not fit does not take it
        easel.generate("a red circle", model="builtin", size="64x64", freeu=1.2, save=False)
    assert caught.value.param == "freeu" and "Unknown option" in caught.value.message
