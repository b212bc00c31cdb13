"""Memory under EASEL_MAX_CACHE_GB: a server's engine loads 6 LoRAs and 2 ControlNets one after another on SD
1.5's layout (built from configs, random weights), its cache bounded to the pipeline plus one ControlNet; then it
sits idle past EASEL_IDLE_UNLOAD_S and releases the pipeline.

Measured in this process: RSS once the engine has started with its libraries imported (`started`), and once it
has made one image with the built-in model and let it go (`fresh`: a server whose torch runtime is up, as it stays
after any first image); then after every request the RSS and the cache's ledger (its resident bytes, add-ons
included), then after the idle unload. Goals: RSS <= the fresh RSS + the bound (plus the working memory of one
call) through every request; after the idle unload, RSS within 10% of the fresh server's.

On a CUDA machine the pipeline runs there (fp16) and the device memory torch holds (reserved, which is what other
programs cannot have) is measured beside the RSS; the idle unload's goal there is to give it all back.

    python benchmarks/bench_memory.py [--size full|small]      # full: SD 1.5 itself (about 5 GB of RAM)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from _common import rss  # noqa: E402 - beside this file


def gpu_reserved() -> int | None:
    """The device memory torch holds on CUDA (None on a machine without one)."""
    import torch

    return torch.cuda.memory_reserved() if torch.cuda.is_available() else None


def gb(value: int | None) -> float | None:
    return None if value is None else round(value / 1e9, 3)


def prepare(work: Path, size: str) -> dict:
    """The model, its 6 LoRAs and 2 ControlNets as files (in a process of their own, so that the measuring one
    starts as a fresh server does); their sizes."""
    import torch
    from bench_lora import build
    from diffusers import ControlNetModel
    from tiny_pipelines import save_random_lora

    from easel.providers.diffusers.cache import tensor_bytes

    pipe = build(size)
    pipe.save_pretrained(work / "models" / "sd15-layout")
    pipeline_bytes = tensor_bytes([pipe])
    (work / "loras").mkdir()
    for i in range(6):
        save_random_lora(pipe, work / "loras" / f"lora{i}.safetensors", seed=i, rank=16)
    for i in range(2):
        torch.manual_seed(i)
        controlnet = ControlNetModel.from_unet(build(size).unet)
        controlnet.save_pretrained(work / "controlnets" / f"control{i}")
    return {"pipeline_bytes": pipeline_bytes, "controlnet_bytes": tensor_bytes([controlnet])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--idle", type=float, default=3.0, help="EASEL_IDLE_UNLOAD_S for the run")
    parser.add_argument("--preprocessor", default="none", help="the ControlNet units' preprocessor: none (the map "
                        "given as it is) or canny (which imports OpenCV on its first use: a library that stays)")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the child that writes the files
    args = parser.parse_args()
    if args.prepare is not None:
        print(json.dumps(prepare(args.prepare, args.size)))
        return

    work = Path(tempfile.mkdtemp(prefix="easel-bench-memory-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the model files: gigabytes
    made = subprocess.run([sys.executable, __file__, "--size", args.size, "--prepare", str(work)],
                          capture_output=True, text=True, check=True)
    sizes = json.loads(made.stdout.splitlines()[-1])
    pipeline_bytes, controlnet_bytes = sizes["pipeline_bytes"], sizes["controlnet_bytes"]
    bound = pipeline_bytes + controlnet_bytes * 3 // 2

    import torch
    from PIL import Image, ImageDraw

    from easel.config import Settings
    from easel.control import ControlUnit
    from easel.engine.queue import Engine
    from easel.engine.runner import Runner
    from easel.types import ImageRequest

    # a fresh server has its libraries imported (it loads its default model at start): so does this process
    import peft  # noqa: F401
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    torch.set_num_threads(os.cpu_count() or 2)
    guide = Image.new("RGB", (64, 64), "black")  # an edge map, as the canny preprocessor would make one
    ImageDraw.Draw(guide).rectangle([16, 16, 48, 48], outline="white", width=3)

    settings = Settings(home=work, max_cache_gb=bound / 1e9, idle_unload_s=args.idle)
    engine = Engine.from_settings(Runner(settings)).start()
    provider = engine.runner.registry.get("diffusers")
    started = rss()
    # a server that has made its first image (the built-in model's, 8 MB): torch's CPU runtime is up, as it stays
    warm = engine.submit(ImageRequest(prompt="a red circle", seed=1))
    warm.done.wait(120)
    provider.release()
    fresh = rss()
    base = dict(prompt="a lighthouse", model="sd15-layout", width=64, height=64, num_inference_steps=1, seed=1)
    uses = [("plain", {})] + [(f"lora{i}", {"loras": {f"lora{i}": 0.8}}) for i in range(6)] + \
        [(f"control{i}", {"control": [ControlUnit(f"control{i}", guide, args.preprocessor)]}) for i in range(2)]
    rows = []
    for name, use in uses:
        job = engine.submit(ImageRequest(**base, **use))
        job.done.wait(600)
        assert job.state == "succeeded", (name, job.error)
        rows.append({"request": name, "rss_gb": round(rss() / 1e9, 3),
                     "over_fresh_gb": round((rss() - fresh) / 1e9, 3),
                     "ledger_gb": round(provider.cache.resident_bytes() / 1e9, 3),
                     "gpu_reserved_gb": gb(gpu_reserved())})
        print(json.dumps(rows[-1]), flush=True)
    deadline = time.time() + args.idle + 30
    while engine.models_released_at is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    released, released_gpu = rss(), gpu_reserved()
    engine.stop()
    peak_over = max(r["over_fresh_gb"] for r in rows)
    report = {
        "size": args.size, "pipeline_gb": round(pipeline_bytes / 1e9, 3),
        "controlnet_gb": round(controlnet_bytes / 1e9, 3), "bound_gb": round(bound / 1e9, 3),
        "started_rss_gb": round(started / 1e9, 3), "fresh_rss_gb": round(fresh / 1e9, 3), "requests": rows,
        "peak_rss_over_fresh_gb": peak_over, "under_bound": all(r["ledger_gb"] <= bound / 1e9 for r in rows),
        "rss_after_idle_unload_gb": round(released / 1e9, 3),
        "after_unload_over_fresh": round(released / fresh, 3),
        "after_unload_over_started": round(released / started, 3), "released_at": engine.models_released_at,
        "device": "cuda" if released_gpu is not None else "cpu", "preprocessor": args.preprocessor,
        "gpu_reserved_peak_gb": max((r["gpu_reserved_gb"] or 0) for r in rows) if released_gpu is not None else None,
        "gpu_reserved_after_idle_unload_gb": gb(released_gpu),
    }
    tags = ("-cuda" if released_gpu is not None else "") + \
        ("" if args.preprocessor == "none" else f"-{args.preprocessor}")
    out = HERE / "results" / f"memory-{args.size}{tags}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "requests"}, indent=2))


if __name__ == "__main__":
    main()
