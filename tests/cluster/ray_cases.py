"""`easel serve --ray` with real Ray, the real `openai` client and real PostgreSQL, inside a loopback-only network
namespace (run by test_ray.py): a model replica killed mid-batch loses nothing, autoscaling goes up and down, and
two ingress replicas share their jobs through PostgreSQL."""

import base64
import concurrent.futures
import io
import os
import signal
import time

import httpx
import numpy as np
import openai
import pytest
from netns import require_loopback_namespace
from PIL import Image
from postgres import postgres_server
from ray_server import RayServer, replica_pids
from servers import job_events

pytestmark = pytest.mark.ray
PROMPT = "a large red circle on the left on a blue background"


@pytest.fixture(autouse=True)
def _inside():
    require_loopback_namespace()


def _cluster(server: RayServer) -> dict:
    return httpx.get(f"{server.base}/health", timeout=10).json()["engine"]["cluster"]


def _running(server: RayServer) -> int:
    deployments = _cluster(server)["deployments"]
    return deployments.get("model-builtin", {}).get("replicas", {}).get("RUNNING", 0)


def _wait(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


def _cpu_ticks(pid: int) -> int:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busiest(pids: list[int]) -> int:
    """The replica process that used the most CPU over the last quarter second (the one denoising a batch)."""
    before = {pid: _cpu_ticks(pid) for pid in pids}
    time.sleep(0.25)
    return max(pids, key=lambda pid: _cpu_ticks(pid) - before[pid])


def _mid_batch(server: RayServer) -> bool:
    """Some job is running with at least half of its steps still to go."""
    jobs = httpx.get(f"{server.base}/v1/jobs", params={"limit": 20}, timeout=10).json()["data"]
    return any(j["status"] == "running" and 2 <= j["step"] <= j["total_steps"] // 2 for j in jobs)


def test_a_replica_killed_mid_batch_loses_no_request(tmp_path):
    """2 replicas on 2 logical GPUs; 24 requests through the openai SDK, 8 at a time; one replica is killed with
    kill -9 while it runs a batch. Every request gets its image, every job record is final and true, and Ray
    brings the replica back."""
    env = {"EASEL_RAY_REPLICAS": "2", "EASEL_RAY_NUM_GPUS": "2", "EASEL_RAY_GPUS_PER_REPLICA": "1", "EASEL_UI": "1"}
    with RayServer(tmp_path / "home", env) as server:
        # /health is 200 once one replica runs; the second may still be starting on a loaded machine
        _wait(lambda: _running(server) == 2, 120, "both replicas running")
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="x", max_retries=0, timeout=300)

        # long enough a batch (96 steps) that the replicas are busy whenever the kill lands, not between batches
        def one(i: int):
            res = client.images.generate(prompt=PROMPT, size="256x256",
                                         extra_body={"seed": 1000 + i, "num_inference_steps": 96})
            return Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(24)]
            _wait(lambda: sum(f.done() for f in futures) >= 4, 120, "the first answers")
            # the kill lands while a batch is well inside its steps, on the replica that is running it
            _wait(lambda: _mid_batch(server), 60, "a job in the middle of its steps")
            victim = _busiest(replica_pids("model-builtin"))
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            images = [f.result() for f in futures]  # raises if any request failed
        assert len(images) == 24 and all(im.size == (256, 256) for im in images)
        assert _cluster(server)["retried"] >= 1  # the kill hit requests in flight, and they were sent again
        _wait(lambda: _running(server) == 2 and victim not in replica_pids("model-builtin"), 120,
              "a new replica in place of the killed one")
        print(f"replica replaced {time.monotonic() - killed_at:.1f} s after its death")
        jobs = httpx.get(f"{server.base}/v1/jobs", params={"limit": 100}).json()["data"]
        assert len(jobs) == 24 and {j["status"] for j in jobs} == {"succeeded"}
        assert all(len(j["image_ids"]) == 1 for j in jobs)
        for job in jobs[:5]:
            png = httpx.get(job["urls"][0])
            assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (256, 256)
        # the same seed gives the same image, whichever replica ran it, retried or not, alone or in a batch: a
        # batch's float rounding may flip a pixel on the edge between two colours, and nothing more
        again = client.images.generate(prompt=PROMPT, size="256x256",
                                       extra_body={"seed": 1000, "num_inference_steps": 96})
        first = Image.open(io.BytesIO(base64.b64decode(again.data[0].b64_json)))
        differ = int((np.asarray(first) != np.asarray(images[0])).any(-1).sum())
        assert differ <= 16, f"{differ} pixels differ"
        # the web UI, served by the ingress, makes images through the replicas too
        from gradio_client import Client

        ui = Client(f"{server.base}/ui/", verbose=False)
        made, status, meta = ui.predict(prompt=PROMPT, negative="", model="builtin", aspect="custom", width=64,
                                        height=64, steps=10, guidance=4, seed=3, n=2, api_name="/generate")
        assert len(made) == 2 and status.startswith("Done") and meta["seed"] == 3


def test_autoscaling_adds_a_replica_under_load_and_removes_it_when_idle(tmp_path):
    env = {"EASEL_RAY_AUTOSCALE": "1:2", "EASEL_RAY_NUM_GPUS": "2", "EASEL_RAY_GPUS_PER_REPLICA": "1",
           "EASEL_RAY_UPSCALE_DELAY_S": "1", "EASEL_RAY_DOWNSCALE_DELAY_S": "4", "EASEL_MAX_QUEUE": "64"}
    with RayServer(tmp_path / "home", env) as server:
        _wait(lambda: _running(server) == 1, 120, "the first replica running")
        stop = time.monotonic() + 90
        scaled = []

        def load():
            while time.monotonic() < stop and not scaled:
                httpx.post(f"{server.base}/v1/images/generations", timeout=300,
                           json={"prompt": PROMPT, "size": "256x256", "num_inference_steps": 30})

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            workers = [pool.submit(load) for _ in range(20)]
            took = _wait(lambda: _running(server) == 2, 90, "a second replica under load")
            scaled.append(took)
            for w in workers:
                w.result()
        _wait(lambda: _running(server) == 1, 90, "back to one replica when idle")


def test_two_ingress_replicas_share_jobs_through_postgres(tmp_path):
    """Requests land on either ingress replica: a job created through one is seen, followed (SSE) and cancelled
    through whichever answers, because both keep their jobs in PostgreSQL and their images in one home."""
    with postgres_server() as url:
        env = {"EASEL_RAY_INGRESS_REPLICAS": "2", "EASEL_DATABASE_URL": url}
        with RayServer(tmp_path / "home", env) as server:
            assert _cluster(server)["deployments"]["ingress"]["replicas"]["RUNNING"] == 2
            body = {"prompt": PROMPT, "size": "256x256"}
            made = [httpx.post(f"{server.base}/v1/jobs", json=body).json() for _ in range(6)]
            for job in made:
                for _ in range(4):  # each lookup may land on either replica
                    seen = httpx.get(f"{server.base}/v1/jobs/{job['id']}")
                    assert seen.status_code == 200 and seen.json()["id"] == job["id"]
            for job in made:
                final = job_events(server.base, job["id"])[-1]
                assert final[0] == "succeeded" and httpx.get(final[1]["urls"][0]).status_code == 200
            long = httpx.post(f"{server.base}/v1/jobs", json={**body, "num_inference_steps": 500}).json()
            _wait(lambda: httpx.get(f"{server.base}/v1/jobs/{long['id']}").json()["status"] == "running", 60,
                  "the long job running")
            assert httpx.delete(f"{server.base}/v1/jobs/{long['id']}").status_code == 200
            assert job_events(server.base, long["id"])[-1][0] == "cancelled"
            listed = httpx.get(f"{server.base}/v1/jobs", params={"limit": 50}).json()["data"]
            assert {j["id"] for j in listed} >= {j["id"] for j in made} | {long["id"]}


def test_add_ons_and_a_checkpoint_reach_the_model_replicas(tmp_path, tiny_models, monkeypatch):
    """The operator's folders of every kind reach the model replicas: a LoRA, a ControlNet, a single-file
    checkpoint (with the configuration it loads with) and a GGUF denoiser (with the base the operator names for its
    family) run there, with the library's pixels from the same folders (to rounding); nothing is downloaded."""
    import shutil

    from checkpoints import save_checkpoint
    from diffusers import FluxTransformer2DModel, StableDiffusionPipeline
    from tiny_pipelines import save_gguf, save_random_lora, save_tiny_controlnet

    import easel
    import easel.api

    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(tiny_models["sd15"], home / "models" / "tiny")
    save_checkpoint(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]),
                    home / "models" / "tinyckpt.safetensors")
    shutil.copytree(tiny_models["sd15"], home / "configs" / "v1")  # what the checkpoint loads with, weights and all
    save_gguf(FluxTransformer2DModel.from_pretrained(tiny_models["flux"], subfolder="transformer"),
              home / "models" / "tinyflux.gguf", "Q8_0", "flux")
    shutil.copytree(tiny_models["flux"], home / "flux-base")  # EASEL_GGUF_BASES names it for FLUX GGUF files
    save_random_lora(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]), home / "loras" / "ink.safetensors",
                     seed=3)
    save_tiny_controlnet("sd15", home / "controlnets" / "edges", seed=1)
    edges = Image.new("RGB", (64, 64), "black")
    edges.paste((255, 255, 255), (16, 16, 48, 48))
    png = io.BytesIO()
    edges.save(png, format="PNG")
    control = {"model": "edges", "image": base64.b64encode(png.getvalue()).decode(), "preprocessor": "none"}
    base = {"prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 2, "seed": 4,
            "response_format": "b64_json"}
    asks = [("tiny", {"loras": {"ink": 0.9}}), ("tiny", {"control": [control]}), ("tinyckpt", {}), ("tinyflux", {})]
    env = {"EASEL_RAY_MODELS": "tiny,tinyckpt,tinyflux", "HF_HUB_OFFLINE": "1",
           "EASEL_GGUF_BASES": f"flux={home / 'flux-base'}",
           "EASEL_RAY_CPUS_PER_REPLICA": "0.5"}  # three model deployments on two cores
    with RayServer(home, env) as server:
        made = []
        for model, extra in asks:
            r = httpx.post(f"{server.base}/v1/images/generations", json={**base, "model": model, **extra}, timeout=600)
            assert r.status_code == 200, r.text
            made.append(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))))
        jobs = httpx.get(f"{server.base}/v1/jobs").json()["data"]
        assert {j["status"] for j in jobs} == {"succeeded"}
        assert sorted(_cluster(server)["deployments"]) == ["ingress", "model-tiny", "model-tinyckpt",
                                                           "model-tinyflux"]
    monkeypatch.setenv("EASEL_HOME", str(home))
    monkeypatch.setenv("EASEL_GGUF_BASES", env["EASEL_GGUF_BASES"])
    easel.api.reset_default_runner()
    kw = dict(size="64x64", steps=2, seed=4, save=False)
    expected = [easel.generate("a lighthouse", model="tiny", loras={"ink": 0.9}, **kw)[0].image,
                easel.generate("a lighthouse", model="tiny", control=[{**control, "image": edges}], **kw)[0].image,
                easel.generate("a lighthouse", model="tinyckpt", **kw)[0].image,
                easel.generate("a lighthouse", model="tinyflux", **kw)[0].image]
    plain = np.asarray(easel.generate("a lighthouse", model="tiny", **kw)[0].image, dtype=np.int16)
    for (model, extra), got, want in zip(asks, made, expected):
        # the same pixels but for rounding: a replica runs torch on one thread (Ray's default), this process on all
        difference = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(want, dtype=np.int16))
        assert difference.max() <= 2 and difference.mean() < 0.05, (model, list(extra), difference.max())
        if extra:  # and the add-on was used there: the image is not the plain one
            assert np.abs(np.asarray(got, dtype=np.int16) - plain).mean() > 1, (model, list(extra))
