"""Load (64 clients against a queue of 16, bounded in count and time, on loopback) and schemathesis against the
server's own /openapi.json: every client is answered, and no generated case gets a 5xx."""

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import fake_server

from easel.testing import FakeProvider


def test_64_clients_against_a_queue_of_16_are_all_answered(tmp_path):
    provider = FakeProvider(step_s=0.02, max_steps=4)
    with fake_server(tmp_path / "home", provider, max_queue=16, max_batch_images=4) as (base, app):
        def one(i: int) -> tuple[int, float, dict]:
            started = time.perf_counter()
            r = httpx.post(f"{base}/v1/images/generations", timeout=60,
                           json={"prompt": "a red circle", "size": "64x64", "seed": i})
            return r.status_code, time.perf_counter() - started, dict(r.headers)

        started = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(one, range(64)))
        elapsed = time.perf_counter() - started
        codes = [code for code, _, _ in answers]
        assert set(codes) <= {200, 429}, codes
        assert codes.count(200) >= 16  # at least a full queue's worth ran
        for code, _, headers in answers:
            if code == 429:
                assert int(headers["retry-after"]) >= 1
        assert max(seconds for _, seconds, _ in answers) < 60 and elapsed < 60
        assert app.state.engine.counts() == {"queued": 0, "running": 0} and app.state.engine.worker_alive
        assert httpx.get(f"{base}/health").status_code == 200
        print(f"\nload: 64 clients, queue 16: {codes.count(200)} x 200, {codes.count(429)} x 429, "
              f"slowest answer {max(s for _, s, _ in answers):.2f} s, all in {elapsed:.2f} s")


SCHEMATHESIS_SECONDS = os.environ.get("EASEL_SCHEMATHESIS_SECONDS", "90")  # the run's budget; ~100 cases a second


@pytest.mark.skipif(shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis is not installed (pip install -e '.[test]')")
def test_schemathesis_finds_no_server_error(tmp_path):
    """Schemathesis generates valid and invalid requests for every operation in /openapi.json; the check is that
    none is answered with a status >= 500. The models run on FakeProvider so that the run takes a few minutes. One
    worker: with two, their threads parse hypothesis's lambdas at once, which CPython 3.11 can fail with "AST
    constructor recursion depth mismatch" (python/cpython#106905), a crash of the tool, not of the server."""
    binary = str(Path(sys.executable).parent / "schemathesis")
    with fake_server(tmp_path / "home", FakeProvider(max_steps=2), max_queue=64) as (base, _):
        done = subprocess.run(
            [binary, "run", f"{base}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "20",
             "--seed", "1", "--workers", "1", "--request-timeout", "60", "--max-time", SCHEMATHESIS_SECONDS,
             "--no-color", "--generation-database", "none", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=float(SCHEMATHESIS_SECONDS) + 120, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", output)) or sum(
        int(n) for n in re.findall(r"Test cases:\s*(\d+)", output))
    assert cases >= 500, output[-3000:]
    print(f"\nschemathesis: {cases} cases, 0 responses >= 500")
