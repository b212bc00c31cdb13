"""constraints.txt, the versions the suite passed with, agrees with what installs through it: every requirement of
pyproject.toml (the package, its test and ray extras) is pinned there within its range, and the README's commands
and .ci/run install through it with the torch it pins. A range moved in pyproject.toml without a refresh
(scripts/refresh_constraints.py) fails here, before a fresh machine finds out."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[canonicalize_name(name)] = version.strip()
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["test"]
    listed += project["optional-dependencies"]["ray"]
    return [Requirement(line) for line in listed]


def test_every_requirement_is_pinned_within_its_range():
    pinned = pins()
    for req in requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is required by pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject.toml's {req}: refresh it"


def test_the_readme_and_ci_install_through_it_with_the_torch_it_pins():
    torch = pins()["torch"]
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines()[:30] if line.startswith("python3 -m venv")]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert len(commands) == 2 and ci == [commands[1]], "the README's test command is what .ci/run runs"
    for command in commands:
        assert re.search(r"pip install -c constraints\.txt -e ", command), command
        assert f"pip install torch=={torch} " in command, f"the README installs another torch than {torch}"
