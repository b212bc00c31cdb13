"""A kind of add-on is a plugin: a package outside Easel gives `add` an `Adapter` (FreeU here, which re-weighs the
UNet's skip connections for one call), and the library runs it on the models of the families it fits, records it,
undoes it after the call, and refuses its option on other models, with no change to Easel's files."""

import importlib
import os
import shutil
import sys
import textwrap

import numpy as np
import pytest

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
    (tmp_path / "easel_freeu.py").write_text(PLUGIN)
    dist = tmp_path / "easel_freeu-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: easel-freeu\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [easel.providers]
        freeu = easel_freeu:register
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("easel_freeu", None)


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
