"""The history and the job records on a real PostgreSQL server, and two servers (two engines, as a cluster's two
ingress replicas) sharing it and one home: a job made through one is seen, followed and cancelled through the other."""

import base64
import json
import threading
import time

import httpx
import pytest
from postgres import postgres_server
from servers import job_events, serving

from easel.config import Settings
from easel.db import POSTGRES_MIGRATIONS, PostgresDatabase
from easel.engine.jobs import Job, JobStore
from easel.engine.runner import Runner
from easel.providers.base import ProviderRegistry
from easel.server.app import create_app
from easel.store import History
from easel.testing import FakeProvider
from easel.types import GeneratedImage, ImageRequest


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


def _clear(url: str) -> None:
    db = PostgresDatabase(url)
    for table in ("generations", "jobs", "engines"):
        db.execute(f"DELETE FROM {table}")


def test_migrations_run_once_even_when_replicas_start_together(pg_url):
    errors = []

    def open_history():
        try:
            History(pg_url)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_history) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    db = PostgresDatabase(pg_url)
    assert db.query_one("SELECT version FROM easel_schema")["version"] == len(POSTGRES_MIGRATIONS)
    assert db.query_one("SELECT count(*) AS n FROM easel_schema")["n"] == 1


def test_history_on_postgres_keeps_what_sqlite_keeps(pg_url):
    _clear(pg_url)
    history = History(pg_url)
    from PIL import Image

    for i, prompt in enumerate(["A Red Circle", "a blue square", "50% grey"]):
        image = GeneratedImage(image=Image.new("RGB", (8, 8)), seed=2**40 + i, output_format="png",
                               parameters={"prompt": prompt, "model": "builtin", "guidance_scale": 7.25})
        image.id, image.path = f"img{i}", f"/x/{i}.png"
        history.record(image)
    newest = history.recent(10)
    assert [r["id"] for r in newest] == ["img2", "img1", "img0"]
    assert newest[0]["seed"] == 2**40 + 2 and newest[0]["guidance"] == 7.25
    assert [r["id"] for r in history.recent(10, "red")] == ["img0"]  # any case, as SQLite's LIKE
    assert [r["id"] for r in history.recent(10, "50%")] == ["img2"]
    assert json.loads(history.get("img1")["parameters"])["prompt"] == "a blue square"
    history.delete("img1")
    assert history.get("img1") is None


def test_an_engine_that_is_gone_has_its_jobs_failed_by_another(pg_url):
    _clear(pg_url)
    history = History(pg_url)
    gone, alive = JobStore(history, lease_s=0.5), JobStore(history, lease_s=0.5)
    gone.renew_lease()
    alive.renew_lease()
    job = Job(request=ImageRequest(prompt="x"), total_steps=4)
    gone.insert(job)
    assert alive.fail_orphaned("gone") == 0  # its engine's lease is fresh
    time.sleep(0.7)
    alive.renew_lease()
    assert alive.fail_orphaned("the server stopped") == 1
    row = alive.get(job.id)
    assert row["state"] == "failed" and json.loads(row["error"])["code"] == "server_restarted"


def _app(home, url, provider):
    config = Settings(home=home, ui=False, database_url=url)
    registry = ProviderRegistry(config)
    registry.add(provider)
    return create_app(config, runner=Runner(config, registry=registry, allow_paths=False))


def test_two_servers_on_one_database_share_their_jobs(pg_url, tmp_path):
    """Server A runs the job; B, on the same database and home, lists it, follows it to the end (SSE) and serves
    its image by the signed link it gives; a job started through A is cancelled through B."""
    _clear(pg_url)
    home = tmp_path / "shared-home"
    provider = FakeProvider(max_steps=400, step_s=0.05)
    with serving(_app(home, pg_url, provider)) as a, serving(_app(home, pg_url, FakeProvider())) as b:
        body = {"prompt": "a red circle", "size": "64x64", "num_inference_steps": 20}
        job = httpx.post(f"{a}/v1/jobs", json=body).json()
        seen = httpx.get(f"{b}/v1/jobs/{job['id']}").json()
        assert seen["id"] == job["id"] and seen["status"] in ("queued", "running")
        events = job_events(b, job["id"])
        assert events[-1][0] == "succeeded" and any(name == "progress" for name, _ in events[:-1])
        steps = [e["step"] for name, e in events if name == "progress"]
        assert steps == sorted(steps) and steps[-1] > 0
        previews = [e["preview"] for name, e in events if name == "progress" and "preview" in e]
        assert previews and base64.b64decode(previews[0]).startswith(b"\x89PNG")  # the preview A made, through B
        final = events[-1][1]
        image = httpx.get(final["urls"][0])
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        assert job["id"] in [j["id"] for j in httpx.get(f"{b}/v1/jobs").json()["data"]]

        long = httpx.post(f"{a}/v1/jobs", json={**body, "num_inference_steps": 400}).json()
        deadline = time.time() + 10
        while httpx.get(f"{b}/v1/jobs/{long['id']}").json()["status"] != "running" and time.time() < deadline:
            time.sleep(0.05)
        asked = httpx.delete(f"{b}/v1/jobs/{long['id']}")
        assert asked.status_code == 200 and asked.json()["id"] == long["id"]
        events = job_events(b, long["id"])
        assert events[-1][0] == "cancelled"
        assert httpx.get(f"{a}/v1/jobs/{long['id']}").json()["status"] == "cancelled"
        # a final job cannot be cancelled again, through either
        assert httpx.delete(f"{b}/v1/jobs/{long['id']}").status_code == 404
        assert httpx.delete(f"{b}/v1/jobs/job_nope").status_code == 404
