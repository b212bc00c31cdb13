"""Servers for the tests, on 127.0.0.1 only: `easel serve` as a subprocess, and an app served by uvicorn in a
thread of the test process."""

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import threading
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} did not become healthy in {timeout}s")


class ServerProcess:
    """`easel serve` in a subprocess; `env` adds to the environment, `args` to the command line."""

    def __init__(self, home, keys: str = "", env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 cwd=None):
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "EASEL_HOME": str(home), "EASEL_API_KEYS": keys, **(env or {})}
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "server.log"
        self.log = open(self.log_path, "wb")  # a file, not a pipe: an unread pipe fills and blocks the server
        # EASEL_TEST_SERVE_ARGS=--ray runs a suite against `easel serve --ray` (tests/cluster/test_ray.py)
        args = (*args, *shlex.split(os.environ.get("EASEL_TEST_SERVE_ARGS", "")))
        self.proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--port", str(self.port), *args],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@contextlib.contextmanager
def running_server(home, keys: str = "", **options):
    """`easel serve` in a subprocess, healthy, stopped on exit."""
    srv = ServerProcess(home, keys=keys, **options)
    try:
        wait_healthy(srv.base)
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def serving(app, healthy: bool = True):
    """`app` served by uvicorn in a thread on 127.0.0.1; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        if healthy:
            wait_healthy(base)
        else:
            while not server.started:
                time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


def job_events(base: str, job_id: str, timeout: float = 120) -> list[tuple[str, dict]]:
    """A job's Server-Sent Events from /v1/jobs/{id}/events, to the end: (event name, its JSON data)."""
    import json

    events, name = [], None
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events
