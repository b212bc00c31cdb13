"""`easel serve --ray` for the tests: a local Ray cluster with its own temp folder, so that every process it
started can be found (and ended) when the test is over."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servers import free_port, wait_healthy


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def replica_pids(deployment: str) -> list[int]:
    """The processes of a deployment's replicas (Ray names them `ray::ServeReplica:easel:<deployment>`)."""
    return _processes_with(f"ServeReplica:easel:{deployment}")


class RayServer:
    """`easel serve --ray` in a subprocess, healthy on entry, stopped (with every Ray process it started) on exit."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ray_tmp = tempfile.mkdtemp(prefix="easel-ray-")  # short: Ray's unix sockets live under it
        env = {**os.environ, "EASEL_HOME": str(self.home), "EASEL_UI": "0", "RAY_TMPDIR": self.ray_tmp,
               "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.log = open(self.home / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--ray", "--port", str(self.port),
                                      *args], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "RayServer":
        try:
            wait_healthy(self.base, timeout=240)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        deadline = time.time() + 10
        while _processes_with(self.ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        for pid in _processes_with(self.ray_tmp):  # whatever Ray left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
