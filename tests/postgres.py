"""A real PostgreSQL server for the tests, from Debian's packages: a fresh cluster made by initdb in a temp folder,
listening on a unix socket there and on no TCP address at all, stopped and removed after."""

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the URL of a new, empty database; skips the test where PostgreSQL is not installed."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="easel-pg-"))  # under /tmp: the server's user must reach it
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user runs it
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL's user 'postgres' does not exist")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, log = folder / "data", folder / "server.log"
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "easel", "-N",
                    "-E", "UTF8"], **run)
    options = f"-c listen_addresses='' -k {folder} -c fsync=off -c synchronous_commit=off -c max_connections=200"
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
                    "start"], **run)
    try:
        yield f"postgresql://easel@/postgres?host={folder}"
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
