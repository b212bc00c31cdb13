"""The engine under concurrent clients, with the built-in model and real servers on 127.0.0.1."""

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from servers import ServerProcess, wait_healthy

import easel


HTTP = httpx.Client(timeout=60)  # a busy 2-core machine can be slow to answer a status poll


def b64_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def batch_histogram(base: str) -> tuple[float, float]:
    text = httpx.get(f"{base}/metrics").text
    count = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("easel_batch_images_count"))
    total = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("easel_batch_images_sum"))
    return count, total


def test_eight_concurrent_clients_are_batched_and_each_gets_its_own_image(server):
    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=120)
    calls_before, images_before = batch_histogram(server.base)

    def one(seed: int):
        r = client.images.generate(prompt=f"a small red circle on the {'left' if seed % 2 else 'right'} on a "
                                   f"white background", size="32x32", extra_body={"seed": seed})
        return seed, b64_pixels(r.data[0].b64_json)

    with ThreadPoolExecutor(8) as pool:
        results = dict(pool.map(one, range(8)))
    calls, images = batch_histogram(server.base)
    assert images - images_before == 8
    assert calls - calls_before < 8, "the 8 requests should share model calls"
    for seed, served in results.items():
        solo = easel.generate(f"a small red circle on the {'left' if seed % 2 else 'right'} on a white background",
                              size="32x32", seed=seed, save=False)[0].image
        # batch-mates may differ from a solo run by float summation order: at most a couple of levels of 255
        assert np.abs(served - np.asarray(solo.convert("RGB"), dtype=np.int16)).max() <= 3


def test_cancel_one_job_of_a_running_batch(server):
    base = f"{server.base}/v1"
    # 200 steps: seconds of batch after the cancel, for the batch-mate to be seen still running
    body = {"prompt": "a large blue square on a yellow background", "num_inference_steps": 200, "size": "32x32"}
    with ThreadPoolExecutor(3) as pool:  # at once, so that they share a batch
        ids = list(pool.map(lambda s: HTTP.post(f"{base}/jobs", json={**body, "seed": s}).json()["id"], range(3)))
    deadline = time.time() + 60
    running = []
    while len(running) < 2 and time.time() < deadline:
        running = [i for i in ids if HTTP.get(f"{base}/jobs/{i}").json()["status"] == "running"]
        time.sleep(0.05)
    victim, mate = running[0], running[1]
    assert HTTP.delete(f"{base}/jobs/{victim}").json()["id"] == victim
    # it stops at the next step, while its batch-mate is still running
    while HTTP.get(f"{base}/jobs/{victim}").json()["status"] != "cancelled" and time.time() < deadline:
        time.sleep(0.05)
    assert HTTP.get(f"{base}/jobs/{mate}").json()["status"] == "running"
    states = {}
    while time.time() < deadline + 300:
        states = {i: HTTP.get(f"{base}/jobs/{i}").json() for i in ids}
        if all(s["status"] in ("succeeded", "failed", "cancelled") for s in states.values()):
            break
        time.sleep(0.2)
    assert states[victim]["status"] == "cancelled" and states[victim]["image_ids"] == []
    others = [i for i in ids if i != victim]
    assert all(states[i]["status"] == "succeeded" and len(states[i]["image_ids"]) == 1 for i in others), states


def test_a_client_that_disconnects_cancels_its_job(server):
    body = {"prompt": "a large green circle on a black background", "size": "32x32", "num_inference_steps": 499}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.base}/v1/images/generations", json=body, timeout=1.5)
    deadline = time.time() + 60
    job = None
    while time.time() < deadline:
        job = next(j for j in httpx.get(f"{server.base}/v1/jobs").json()["data"]
                   if j["total_steps"] == 499)  # no other test asks for 499 steps
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert job["status"] == "cancelled", job
    assert job["step"] < 499


def test_job_events_stream_progress_then_the_result(server):
    base = f"{server.base}/v1"
    job = httpx.post(f"{base}/jobs", json={"prompt": "a green circle on a black background",
                                           "num_inference_steps": 10}).json()
    assert job["status"] == "queued" and job["id"].startswith("job_")
    events = []
    with httpx.stream("GET", f"{base}/jobs/{job['id']}/events", timeout=120) as r:
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, line[6:]))
    names = [n for n, _ in events]
    assert names[-1] == "succeeded" and "progress" in names
    assert any('"preview"' in data for n, data in events if n == "progress")
    assert httpx.get(f"{base}/jobs/nope").status_code == 404


@pytest.fixture
def small_queue_server(tmp_path):
    os.environ["EASEL_MAX_QUEUE"] = "1"
    try:
        srv = ServerProcess(tmp_path / "home")
    finally:
        del os.environ["EASEL_MAX_QUEUE"]
    wait_healthy(srv.base)
    yield srv
    srv.stop()


def test_a_full_queue_answers_429_and_nothing_hangs(small_queue_server):
    base = f"{small_queue_server.base}/v1"
    slow = {"prompt": "a red circle", "num_inference_steps": 120, "size": "32x32"}
    answers = [httpx.post(f"{base}/jobs", json={**slow, "seed": s}) for s in range(4)]
    codes = [a.status_code for a in answers]
    assert 429 in codes and codes[0] == 202
    refused = answers[codes.index(429)]
    assert refused.json()["error"]["type"] == "rate_limit_error" and int(refused.headers["retry-after"]) >= 1
    client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        for _ in range(3):
            client.images.generate(prompt="a red circle", extra_body={"num_inference_steps": 120})
    started = time.time()
    health = httpx.get(f"{small_queue_server.base}/health")
    assert time.time() - started < 2  # /health stays fast under load
    assert health.status_code == 200, health.text
    for accepted in (a for a in answers if a.status_code == 202):  # done with: the server stops without them
        assert httpx.delete(f"{base}/jobs/{accepted.json()['id']}").status_code == 200
