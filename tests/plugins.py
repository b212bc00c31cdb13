"""A plugin package installed outside the repository, as a third party's would be: its module and a .dist-info
whose entry point names its `register` in the group `easel.providers`."""

import importlib
import os
import sys
import textwrap
from pathlib import Path


def install_plugin(folder: Path, monkeypatch, module: str, source: str) -> Path:
    """`source` as the module `module` in `folder`, with its entry point; on sys.path and PYTHONPATH (for the CLI's
    subprocesses) for the test. The caller drops `module` from sys.modules after it."""
    (folder / f"{module}.py").write_text(source)
    name = module.replace("_", "-")
    dist = folder / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [easel.providers]
        {module.removeprefix("easel_")} = {module}:register
    """))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    importlib.invalidate_caches()
    return folder


def uninstall_plugin(module: str) -> None:
    sys.modules.pop(module, None)
