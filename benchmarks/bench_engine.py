"""The engine under 8 concurrent clients, in one run, same model and settings:

  (a) the server with batching on; (b) the same clients served one request at a time (max batch 1, as most
  peers run); (c) the physical limit: direct pipeline calls at the batch size the engine reached, no server.

    python benchmarks/bench_engine.py             # writes benchmarks/results/engine.json and engine.png
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from _common import free_port, wait_healthy

OUT = Path(__file__).parent / "results"
CLIENTS, PER_CLIENT = 8, 4
PROMPT = "a small red circle on the left on a white background"



def metric(base: str, name: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def serve_and_load(max_batch: int) -> dict:
    home = tempfile.mkdtemp(prefix="easel-bench-")
    port = free_port()
    env = {**os.environ, "EASEL_HOME": home, "EASEL_MAX_BATCH_IMAGES": str(max_batch), "EASEL_MAX_QUEUE": "64"}
    proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", timeout=300)
        client.images.generate(prompt=PROMPT)  # warm-up

        def one_client(c: int) -> list[float]:
            latencies = []
            for i in range(PER_CLIENT):
                started = time.perf_counter()
                client.images.generate(prompt=PROMPT, size="32x32", extra_body={"seed": c * 100 + i})
                latencies.append(time.perf_counter() - started)
            return latencies

        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            latencies = [x for group in pool.map(one_client, range(CLIENTS)) for x in group]
        wall = time.perf_counter() - started
        calls = metric(base, "easel_batch_images_count") - 1
        images = metric(base, "easel_batch_images_sum") - 1
    finally:
        proc.terminate()
        proc.wait(10)
    latencies.sort()
    return {"images_per_s": round(CLIENTS * PER_CLIENT / wall, 3), "wall_s": round(wall, 2),
            "p50_s": round(statistics.median(latencies), 3),
            "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
            "mean_batch": round(images / max(calls, 1), 2)}


def direct(batch: int, total: int) -> dict:
    import torch

    from easel.builtin.pipeline import ShapesPipeline
    from easel.catalog import default_catalog

    spec = default_catalog().resolve("builtin")
    pipe = ShapesPipeline.from_pretrained(spec.local_path)
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, num_inference_steps=spec.default_steps)
    started = time.perf_counter()
    for start in range(0, total, batch):
        n = min(batch, total - start)
        pipe([PROMPT] * n, generator=[torch.Generator().manual_seed(start + i) for i in range(n)],
             num_inference_steps=spec.default_steps, guidance_scale=spec.default_guidance)
    wall = time.perf_counter() - started
    return {"images_per_s": round(total / wall, 3), "wall_s": round(wall, 2), "batch": batch}


def overhead_per_job(jobs: int = 200) -> float:
    """Engine cost per job (queue, record, batch, save) with a provider that returns at once."""
    from PIL import Image

    from easel.config import Settings
    from easel.engine.queue import Engine
    from easel.engine.runner import Runner
    from easel.providers.base import Provider, ProviderOutput, ProviderRegistry
    from easel.types import ImageRequest

    class Instant(Provider):
        name = "diffusers"

        def run_batch(self, batch, progress):
            return [ProviderOutput([Image.new("RGB", (request.width, request.height)) for _ in seeds])
                    for request, seeds in batch]

    registry = ProviderRegistry()
    registry.add(Instant())
    runner = Runner(Settings(home=Path(tempfile.mkdtemp())), registry=registry)
    engine = Engine(runner, batch_wait_s=0).start()
    started = time.perf_counter()
    for i in range(jobs):
        engine.submit(ImageRequest(prompt="a red circle", size="32x32", seed=i)).wait()
    per_job = (time.perf_counter() - started) / jobs
    engine.stop()
    return per_job


def main() -> None:
    batched = serve_and_load(8)
    serial = serve_and_load(1)
    limit = direct(max(1, round(batched["mean_batch"])), CLIENTS * PER_CLIENT)
    result = {
        "clients": CLIENTS, "requests_per_client": PER_CLIENT, "model": "builtin (default steps, 32x32)",
        "a_batched": batched, "b_one_at_a_time": serial, "c_direct_pipeline": limit,
        "a_over_b": round(batched["images_per_s"] / serial["images_per_s"], 3),
        "a_over_c": round(batched["images_per_s"] / limit["images_per_s"], 3),
        "engine_overhead_ms_per_job": round(overhead_per_job() * 1000, 2),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "engine.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, OUT / "engine.png")
    print(json.dumps(result, indent=2))


def plot(result: dict, path: Path) -> None:
    """A bar chart of images per second for (a), (b) and (c)."""
    from PIL import Image, ImageDraw

    bars = [("(a) server, batching", result["a_batched"]["images_per_s"]),
            ("(b) one at a time", result["b_one_at_a_time"]["images_per_s"]),
            ("(c) direct pipeline", result["c_direct_pipeline"]["images_per_s"])]
    top = max(v for _, v in bars)
    img = Image.new("RGB", (520, 220), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), f"images/s, {result['clients']} concurrent clients, built-in model", fill="black")
    for i, (label, value) in enumerate(bars):
        y = 40 + i * 55
        width = int(300 * value / top)
        draw.rectangle((170, y, 170 + width, y + 35), fill=(40, 80, 220))
        draw.text((10, y + 12), label, fill="black")
        draw.text((176 + width, y + 12), f"{value:.2f}", fill="black")
    img.save(path)


if __name__ == "__main__":
    main()
