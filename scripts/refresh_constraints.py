"""Move the tested versions forward: resolve the newest releases that pyproject.toml's ranges allow, run the whole
suite on them, and only if it passes write them to constraints.txt.

constraints.txt is the exact set of versions (every direct and indirect dependency of the extras named) that the
suite passed with; the README's commands and .ci/run install through it (`pip install -c constraints.txt ...`), so
a fresh machine gets what CI tested, whatever was released since. This script is the one way it changes: it makes a
new virtual environment beside the checkout, installs torch's CPU wheel (the version pinned now, or --torch), then
`-e ".[EXTRAS]"` with no constraints, runs `python -m pytest` there, and writes `pip freeze` of that environment
(torch without its local label, so that a CUDA build of the same version satisfies it too). On a failure it writes
nothing and keeps the environment for a look. Commit the new file with the suite's result.

    python scripts/refresh_constraints.py                 # test and ray extras, the whole suite (~20 minutes)
    python scripts/refresh_constraints.py --torch 2.14.1  # move torch too (then change the README's pin)
    python scripts/refresh_constraints.py --pytest-args "-m 'not ray'" --keep
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# spandrel (the esrgan extra) needs torchvision, whose Linux wheels on PyPI are CUDA builds that do not import beside
# torch's CPU wheel: a machine that reaches PyTorch's index may add it with --extras test,ray,esrgan
DEFAULT_EXTRAS = "test,ray"


def pinned_torch() -> str:
    """The torch version constraints.txt pins now (the README's commands install the same one)."""
    found = re.search(r"^torch==([^\s+]+)", CONSTRAINTS.read_text(), re.M) if CONSTRAINTS.exists() else None
    return found.group(1) if found else "2.13.0"


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    print("+", shlex.join(args), flush=True)
    return subprocess.run(args, check=False, **kw)


def header(extras: str, pytest_args: list[str], summary: str) -> str:
    today = datetime.date.today().isoformat()
    return "\n".join([
        "# The exact versions Easel's test suite passed with: pip reads it with -c (the README's commands and .ci/run",
        "# do). pyproject.toml keeps the ranges that library users get. Written by scripts/refresh_constraints.py;",
        "# do not edit by hand: run it to move forward, suite green.",
        f"# Resolved {today} for Python {platform.python_version()} on {platform.system()} {platform.machine()},",
        f"# extras [{extras}], torch's CPU wheel; suite: python -m pytest {shlex.join(pytest_args)}".rstrip(),
        f"# {summary}",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default=DEFAULT_EXTRAS, help="extras of easel to resolve (default: %(default)s)")
    parser.add_argument("--torch", default=pinned_torch(), help="torch version (default: the pinned one, %(default)s)")
    parser.add_argument("--pytest-args", default="-q", help="arguments for pytest (default: %(default)s)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-refresh", help="where to build the environment")
    parser.add_argument("--keep", action="store_true", help="keep the environment after a pass")
    args = parser.parse_args()
    torch_before = pinned_torch()

    if args.venv.exists():
        shutil.rmtree(args.venv)
    run(sys.executable, "-m", "venv", str(args.venv)).check_returncode()
    python = str(args.venv / "bin" / "python")
    run(python, "-m", "pip", "install", f"torch=={args.torch}", "--extra-index-url", TORCH_INDEX).check_returncode()
    run(python, "-m", "pip", "install", "-e", f".[{args.extras}]", cwd=ROOT).check_returncode()

    pytest_args = shlex.split(args.pytest_args)
    print("+", shlex.join([python, "-m", "pytest", *pytest_args]), flush=True)
    suite = subprocess.Popen([python, "-m", "pytest", *pytest_args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    summary = ""
    for line in suite.stdout:  # shown as it runs, the last summary line kept for the file's header
        print(line, end="", flush=True)
        summary = line.strip().strip("= ") if " passed" in line else summary
    if suite.wait() != 0:
        print(f"The suite failed on the newest versions ({summary or 'no summary'}): constraints.txt is unchanged; "
              f"the environment stays in {args.venv}. Fix the code, or bound the range that broke in pyproject.toml "
              "with a comment naming the break, and run this again.", file=sys.stderr)
        return 1

    frozen = run(python, "-m", "pip", "freeze", "--exclude-editable", stdout=subprocess.PIPE, text=True).stdout
    # torch's CPU wheel is 2.13.0+cpu: pin the release, which a CUDA build of the same version also satisfies
    lines = sorted((re.sub(r"^(torch==[^+\s]+)\+\S+$", r"\1", line) for line in frozen.splitlines()
                    if line and not line.startswith("#")), key=str.lower)
    old = set(CONSTRAINTS.read_text().splitlines()) if CONSTRAINTS.exists() else set()
    CONSTRAINTS.write_text(header(args.extras, pytest_args, summary) + "\n".join(lines) + "\n")
    moved = [line for line in lines if line not in old]
    print(f"constraints.txt: {len(lines)} packages, {len(moved)} new or moved: {', '.join(moved) or 'none'}")
    if args.torch != torch_before:
        print(f"torch moved to {args.torch}: change `torch==` in the README's two commands and in .ci/run too.")
    if not args.keep:
        shutil.rmtree(args.venv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
