"""Soak: thousands of jobs through one `easel serve` (built-in model, web UI mounted), mixed routes and sizes with
uploads, from a few concurrent clients on 127.0.0.1. Records the server process's RSS, open file descriptors and
threads along the way and the jobs it holds in memory, and compares the p95 latency of the first and the last
hundred jobs: a server that keeps what it made, or leaks descriptors or threads, shows it here.

    python benchmarks/bench_soak.py                 # 2,000 jobs; writes benchmarks/results/soak.json
    python benchmarks/bench_soak.py --jobs 300      # a shorter run
"""

import argparse
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import free_port, wait_healthy
from PIL import Image

OUT = Path(__file__).parent / "results" / "soak.json"
SIZES = [(32, 32), (64, 64), (96, 64), (128, 128)]
STEPS = 2
WARM_UP = 200  # jobs before the baseline sample is taken


def png(width: int, height: int, alpha: bool = False) -> bytes:
    im = Image.new("RGBA" if alpha else "RGB", (width, height), (40, 80, 200, 255) if alpha else (40, 80, 200))
    if alpha:
        im.paste((0, 0, 0, 0), (0, 0, width // 2, height // 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def sample(pid: int, base: str) -> dict:
    """The server process's resident memory, descriptors and threads, and the engine's view of itself."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    engine = httpx.get(f"{base}/health", timeout=30).json().get("engine", {})
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"]), "jobs_in_memory": engine.get("jobs_in_memory"),
            "time": time.time()}


def job(client: httpx.Client, i: int) -> tuple[str, float, int]:
    """One request of the mix; returns (route, seconds, status)."""
    width, height = SIZES[i % len(SIZES)]
    prompt = ["a red circle", "a small blue square on the left", "a green triangle at the top"][i % 3]
    kind = ["openai", "openai_url", "edit", "variation", "kdeps", "a1111", "hf", "job"][i % 8]
    fast = {"num_inference_steps": STEPS, "seed": i}
    started = time.perf_counter()
    if kind == "openai":
        r = client.post("/v1/images/generations", json={"prompt": prompt, "size": f"{width}x{height}", **fast})
    elif kind == "openai_url":
        r = client.post("/v1/images/generations", json={"prompt": prompt, "size": f"{width}x{height}",
                                                        "response_format": "url", **fast})
        if r.status_code == 200:
            r = client.get(r.json()["data"][0]["url"])
    elif kind == "edit":
        r = client.post("/v1/images/edits", files={"image": ("in.png", png(width, height, alpha=True))},
                        data={"prompt": prompt, "num_inference_steps": str(STEPS), "seed": str(i)})
    elif kind == "variation":
        r = client.post("/v1/images/variations", files={"image": ("in.png", png(width, height))},
                        data={"num_inference_steps": str(STEPS), "seed": str(i)})
    elif kind == "kdeps":
        r = client.get("/api/v1/image_generator", params={"q": prompt})
    elif kind == "a1111":
        r = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "width": width, "height": height,
                                                   "steps": STEPS, "seed": i})
    elif kind == "hf":
        r = client.post("/models/builtin", json={"inputs": prompt, "parameters": {
            "width": width, "height": height, "num_inference_steps": STEPS, "seed": i}})
    else:
        created = client.post("/v1/jobs", json={"prompt": prompt, "size": f"{width}x{height}", **fast}).json()
        r = client.get(f"/v1/jobs/{created['id']}")
        while r.status_code == 200 and r.json()["status"] in ("queued", "running"):
            time.sleep(0.05)
            r = client.get(f"/v1/jobs/{created['id']}")
    return kind, time.perf_counter() - started, r.status_code


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--keep-finished-s", type=float, default=60.0, help="the server's EASEL_KEEP_FINISHED_S")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="easel-soak-"))
    port = free_port()
    env = {**os.environ, "EASEL_HOME": str(home), "EASEL_KEEP_FINISHED_S": str(args.keep_finished_s),
           "EASEL_MAX_QUEUE": str(4 * args.clients)}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    samples: list[dict] = []
    results: list[tuple[int, str, float, int]] = []
    lock = threading.Lock()
    counter = itertools.count()
    try:
        wait_healthy(base)
        samples.append({"after_jobs": 0, **sample(proc.pid, base)})

        def worker() -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while (i := next(counter)) < args.jobs:
                    kind, seconds, status = job(client, i)
                    with lock:
                        results.append((i, kind, seconds, status))
                        done = len(results)
                    if (done % 100 == 0 or done == WARM_UP) and done < args.jobs:
                        snapshot = {"after_jobs": done, **sample(proc.pid, base)}
                        with lock:
                            samples.append(snapshot)
                        print(json.dumps(snapshot), flush=True)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for future in [pool.submit(worker) for _ in range(args.clients)]:
                future.result()
        elapsed = time.perf_counter() - started
        samples.append({"after_jobs": args.jobs, "at_end": True, **sample(proc.pid, base)})
        time.sleep(args.keep_finished_s + 2)  # past the grace: finished jobs should have left memory
        samples.append({"after_jobs": args.jobs, "after_grace": True, **sample(proc.pid, base)})
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()

    results.sort()
    latencies = [seconds for _, _, seconds, _ in results]
    statuses: dict[str, int] = {}
    for _, kind, _, status in results:
        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1
    samples.sort(key=lambda s: (s["after_jobs"], s.get("after_grace", False)))
    warm = next(s for s in samples if s["after_jobs"] >= min(WARM_UP, args.jobs))
    end = next(s for s in samples if s.get("at_end"))
    growth = {key: round(end[key] / warm[key], 3) for key in ("rss_mb", "fds", "threads")}
    # flat: memory within 10%; descriptors and threads are a handful, so one more (an idle pool thread, a
    # keep-alive socket) is allowed besides the 10%
    flat = growth["rss_mb"] <= 1.10 and all(end[k] <= max(warm[k] * 1.10, warm[k] + 2) for k in ("fds", "threads"))
    report = {
        "jobs": args.jobs, "clients": args.clients, "seconds": round(elapsed, 1),
        "jobs_per_s": round(args.jobs / elapsed, 2), "statuses": statuses,
        "p95_first_100_s": round(p95(latencies[:100]), 3), "p95_last_100_s": round(p95(latencies[-100:]), 3),
        "after_warm_up": warm, "at_end": end, "after_grace": samples[-1], "end_over_warm_up": growth,
        "flat": flat, "samples": samples,
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
