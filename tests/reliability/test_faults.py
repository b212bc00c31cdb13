"""Faults: whatever fails (the provider at random, saving, the history, a full disk, kill -9), every job ends
final and truthful, nothing half-written is left, and the engine's worker goes on."""

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import fake_server
from PIL import Image

from servers import ServerProcess, job_events, running_server, wait_healthy

import easel.store
from easel.testing import FakeProvider

GEN = "/v1/images/generations"
SMALL = {"prompt": "a red circle", "size": "64x64"}


def generate(base: str, **extra) -> httpx.Response:
    return httpx.post(base + GEN, json={**SMALL, **extra}, timeout=60)


def test_a_failure_outside_the_provider_fails_its_job_not_the_worker(tmp_path, monkeypatch):
    with fake_server(tmp_path / "home") as (base, app):
        engine = app.state.engine
        real = engine.workspace.save_all
        calls = []

        def broken(images):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the image folder went away")
            return real(images)

        monkeypatch.setattr(engine.workspace, "save_all", broken)
        r = generate(base)
        assert r.status_code == 500 and "the image folder went away" in r.json()["error"]["message"]
        assert "Traceback" not in r.text
        assert generate(base).status_code == 200  # the next job runs
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "ok" and health["engine"]["worker_alive"]
        assert "the image folder went away" in health["engine"]["last_error"]["message"]


def test_an_exception_anywhere_in_the_worker_leaves_it_running(tmp_path, monkeypatch):
    """Not only the model and saving: a failure in the engine's own bookkeeping fails the batch, not the thread."""
    with fake_server(tmp_path / "home") as (base, app):
        engine = app.state.engine
        real = engine._run
        calls = []

        def broken(batch):
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("bookkeeping")
            return real(batch)

        monkeypatch.setattr(engine, "_run", broken)
        r = generate(base)
        assert r.status_code == 500 and r.json()["error"]["code"] == "generation_failed"
        assert generate(base).status_code == 200 and engine.worker_alive


def test_a_history_that_cannot_be_written_loses_no_job(tmp_path, monkeypatch):
    """The jobs table refuses writes (SQLITE_FULL) for a while: callers still get their answers, and once writes
    work again every record is brought up to date."""
    with fake_server(tmp_path / "home") as (base, app):
        engine = app.state.engine
        real = engine.store.update
        broken = {"on": False}

        def update(job):
            if broken["on"]:
                raise sqlite3.OperationalError("database or disk is full")
            return real(job)

        monkeypatch.setattr(engine.store, "update", update)
        first = httpx.post(f"{base}/v1/jobs", json=SMALL).json()["id"]
        broken["on"] = True
        second = httpx.post(f"{base}/v1/jobs", json=SMALL).json()["id"]
        deadline = time.time() + 30
        while engine.jobs[second].state != "succeeded" and time.time() < deadline:
            time.sleep(0.05)
        assert engine.jobs[second].state == "succeeded"
        assert engine.store.get(second)["state"] != "succeeded" and engine.health()["unsynced_records"] >= 1
        broken["on"] = False
        assert generate(base).status_code == 200
        assert engine.store.get(second)["state"] == "succeeded" and engine.health()["unsynced_records"] == 0
        assert engine.store.get(first)["state"] == "succeeded"


def test_saving_is_all_or_nothing(tmp_path, monkeypatch):
    """The second of two images hits a full disk: the job is a 507 and the first image is gone again, file and
    history row, so that the history never lists half a job."""
    with fake_server(tmp_path / "home") as (base, app):
        real = easel.store.write_atomically
        written = []

        def write(path, data):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(path)
            real(path, data)

        monkeypatch.setattr(easel.store, "write_atomically", write)
        r = generate(base, n=2)
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
        assert str(tmp_path / "home") in r.json()["error"]["message"]
        assert written and not Path(written[0]).exists()
        rows = sqlite3.connect(tmp_path / "home" / "history.db").execute("SELECT count(*) FROM generations")
        assert rows.fetchone()[0] == 0
        monkeypatch.setattr(easel.store, "write_atomically", real)
        assert generate(base, n=2).status_code == 200


def test_a_provider_failing_at_random_never_hangs_a_request(tmp_path):
    provider = FakeProvider(fail_rate=0.3, rng_seed=7, step_s=0.002)
    # one job per call, so that the seeded draws fail the same jobs on every run
    with fake_server(tmp_path / "home", provider, max_batch_images=1) as (base, app):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda s: generate(base, seed=s), range(48)))
        codes = sorted({a.status_code for a in answers})
        assert set(codes) <= {200, 500}, codes
        assert 500 in codes and 200 in codes
        for a in answers:
            if a.status_code == 500:
                assert a.json()["error"]["code"] == "generation_failed" and "Traceback" not in a.text
        assert app.state.engine.worker_alive and app.state.engine.counts() == {"queued": 0, "running": 0}
        assert httpx.get(f"{base}/health").status_code == 200


def _can_mount_tmpfs(target: Path) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs to serve as the workspace (root only; elsewhere the test is skipped with the reason)."""
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs needs root and the mount command; the patched-writer test covers saving")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("threshold_mb", ["0", "1"])
def test_a_full_disk_is_a_507_and_the_server_recovers_by_itself(small_disk, threshold_mb):
    """With EASEL_HOME on a full file system: every generating request is a 507 naming the workspace (never a
    hung or lost job), nothing half-written is left, /health tells the truth when free space is under the
    threshold, and generation resumes as soon as space is freed, with no restart."""
    home = small_disk / "home"
    env = {"EASEL_UI": "0", "EASEL_MIN_FREE_DISK_MB": threshold_mb}
    with running_server(home, env=env) as srv:
        assert generate(srv.base, num_inference_steps=2).status_code == 200
        filler = fill(small_disk)
        for route, body in [(GEN, {**SMALL, "num_inference_steps": 2}), ("/v1/jobs", SMALL),
                            ("/sdapi/v1/txt2img", {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2}),
                            ("/models/builtin", {"inputs": "a red circle"})]:
            r = httpx.post(srv.base + route, json=body, timeout=60)
            assert r.status_code == 507, (route, r.status_code, r.text[:300])
            assert "disk" in r.text and "Traceback" not in r.text
        health = httpx.get(f"{srv.base}/health")
        if threshold_mb != "0":
            assert health.status_code == 503 and health.json()["status"] == "unavailable"
            assert "free" in health.json()["error"]
        assert health.json()["engine"]["worker_alive"]
        assert not [p for p in (home / "images").rglob("*") if p.name.startswith(".")], "half-written files"
        filler.unlink()
        r = generate(srv.base, num_inference_steps=2)
        assert r.status_code == 200, r.text
        assert httpx.get(f"{srv.base}/health").status_code == 200
        jobs = httpx.get(f"{srv.base}/v1/jobs?limit=50").json()["data"]
        assert all(j["status"] in ("succeeded", "failed") for j in jobs), jobs


def test_kill_9_mid_batch_then_restart_leaves_every_job_final(tmp_path):
    home = tmp_path / "home"
    srv = ServerProcess(home)
    wait_healthy(srv.base)
    base = f"{srv.base}/v1"
    done = [httpx.post(f"{base}/images/generations", json={**SMALL, "num_inference_steps": 2, "n": 3},
                       timeout=60).status_code for _ in range(2)]
    assert done == [200, 200]
    ids = [httpx.post(f"{base}/jobs", json={"prompt": "a red circle", "num_inference_steps": 400,
                                            "size": "32x32", "seed": s}).json()["id"] for s in range(3)]
    deadline = time.time() + 60
    while httpx.get(f"{base}/jobs/{ids[0]}").json()["status"] != "running" and time.time() < deadline:
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    again = ServerProcess(home)
    try:
        wait_healthy(again.base)
        for job_id in ids:
            record = httpx.get(f"{again.base}/v1/jobs/{job_id}").json()
            assert record["status"] == "failed" and record["error"]["code"] == "server_restarted"
        files = [p for p in (home / "images").rglob("*") if p.is_file()]
        assert [p for p in files if p.name.startswith(".")] == []  # no half-written image
        for path in files:
            Image.open(path).verify()  # every saved image is whole
        rows = sqlite3.connect(home / "history.db").execute("SELECT path FROM generations").fetchall()
        assert sorted(Path(p).name for (p,) in rows) == sorted(p.name for p in files)
    finally:
        again.stop()


def test_a_cancelled_job_is_a_409_on_a_synchronous_route(tmp_path):
    provider = FakeProvider(step_s=0.05, max_steps=200)
    with fake_server(tmp_path / "home", provider) as (base, app):
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(generate, base, num_inference_steps=200)
            deadline = time.time() + 30
            while not app.state.engine.counts()["running"] and time.time() < deadline:
                time.sleep(0.02)
            job_id = httpx.get(f"{base}/v1/jobs?limit=1").json()["data"][0]["id"]
            assert httpx.delete(f"{base}/v1/jobs/{job_id}").status_code == 200
            r = pending.result(30)
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_cancelled", r.text
        record = httpx.get(f"{base}/v1/jobs/{job_id}").json()
        assert record["status"] == "cancelled" and record["error"]["code"] == "job_cancelled"


def test_two_event_streams_of_one_job_each_get_their_previews_and_leave(tmp_path):
    """Events are shared between a job's listeners: one stream must not change what another reads, and a stream
    that ends takes its listener with it."""
    provider = FakeProvider(step_s=0.05, max_steps=20)
    with fake_server(tmp_path / "home", provider) as (base, app):
        job_id = httpx.post(f"{base}/v1/jobs", json={**SMALL, "num_inference_steps": 20}).json()["id"]
        with ThreadPoolExecutor(2) as pool:
            streams = list(pool.map(lambda _: job_events(base, job_id, timeout=60), range(2)))
        for events in streams:
            assert events[-1][0] == "succeeded"
            previews = [e["preview"] for n, e in events if n == "progress" and "preview" in e]
            assert previews and all(isinstance(p, str) and len(p) > 50 for p in previews)
        job = app.state.engine.jobs.get(job_id)
        assert job is None or job.listeners == []
