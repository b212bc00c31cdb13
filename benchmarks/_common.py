"""Helpers shared by the benchmarks: a free loopback port, a server's start-up wait and this process's RSS."""

import socket
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


def rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def own_process(parser, case):
    """For the benchmarks that run each case in a process of its own (its RSS and peak its own): with `--case NAME
    --home DIR`, run `case(home, name, side, steps)` here, print its JSON and return None; else the arguments."""
    import argparse
    import json
    from pathlib import Path

    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(args.home, args.case, args.side, args.steps)))
        return None
    return args


def run_case(script: str, name: str, home, side: int, steps: int):
    """`script`'s case `name` in a new process (see `own_process`): the finished process, its JSON last on stdout."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, script, "--case", name, "--home", str(home), "--side", str(side),
                           "--steps", str(steps)], capture_output=True, text=True)
