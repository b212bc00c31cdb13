"""`quantize=fp8` and `quantize=int8` on SD 1.5's full-size layout (built from configs, random weights), on this
machine: each case in a process of its own (its RSS is its own), loaded through Easel, then one image of a few
steps.

Measured per case: the UNet's weight bytes, the process's RSS after loading and after the image (the comparable one:
a plain model's weights file is mapped and read as it is used, so its RSS after loading says little), the load time
and the seconds per denoising step; each quantization as ratios to fp32 (on a GPU, to the family's fp16). The
UNet's bytes count a quantized tensor by its storage (torchao's int8 weights by their int8 data and scales).

    python benchmarks/bench_quantize.py [--size full|small] [--side 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from _common import own_process, rss, run_case  # noqa: E402 - beside this file


def stored_bytes(tensor) -> int:
    """A parameter's bytes as stored: a torchao int8 tensor's int8 data and scales, else its elements."""
    inner = [part for name in ("qdata", "scale", "zero_point") if (part := getattr(tensor, name, None)) is not None]
    return sum(t.numel() * t.element_size() for t in inner) if inner else tensor.numel() * tensor.element_size()


def case(home: Path, quantize: str, side: int, steps: int) -> dict:
    """One case, in this process: load, then one image (the first step pays for nothing else: the load is apart)."""
    import torch

    import easel
    from easel.api import default_runner

    torch.set_num_threads(os.cpu_count() or 2)
    os.environ["EASEL_HOME"] = str(home)
    started = rss()
    runner = default_runner()
    checked = runner.check(easel.ImageRequest(prompt="a lighthouse", model="sd15-layout", extra={"quantize": quantize}))
    provider = runner.registry.get("diffusers")
    t = time.perf_counter()
    loaded = provider.load(checked.spec, provider.loader.options(checked.spec, {"quantize": quantize}))
    load_s = time.perf_counter() - t
    unet_bytes = sum(stored_bytes(p) for p in loaded.pipe.unet.parameters())
    after_load = rss()
    times = []
    easel.generate("a lighthouse", model="sd15-layout", size=f"{side}x{side}", steps=steps, seed=1, save=False,
                   quantize=quantize, on_step=lambda *_: times.append(time.perf_counter()))
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    return {"quantize": quantize, "unet_gb": round(unet_bytes / 1e9, 3), "load_s": round(load_s, 2),
            "rss_after_load_gb": round(after_load / 1e9, 3), "rss_after_image_gb": round(rss() / 1e9, 3),
            "rss_for_the_model_gb": round((after_load - started) / 1e9, 3), "s_per_step": round(per_step, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    if (args := own_process(parser, case)) is None:
        return

    from bench_lora import build

    home = Path(tempfile.mkdtemp(prefix="easel-bench-quantize-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # the model files: gigabytes
    build(args.size).save_pretrained(home / "models" / "sd15-layout")
    rows = []
    for quantize in ("none", "fp8", "int8"):
        done = run_case(__file__, quantize, home, args.side, args.steps)
        done.check_returncode()
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    plain = rows[0]
    report = {"size": args.size, "side": args.side, "steps": args.steps, "cases": rows}
    for row in rows[1:]:
        q = row["quantize"]
        report[f"unet_{q}_over_plain"] = round(row["unet_gb"] / plain["unet_gb"], 3)
        # after an image: every weight has been read (a plain model's file is mapped, and read as it is used)
        report[f"rss_after_image_{q}_over_plain"] = round(row["rss_after_image_gb"] / plain["rss_after_image_gb"], 3)
        report[f"step_{q}_over_plain"] = round(row["s_per_step"] / plain["s_per_step"], 3)
    (HERE / "results" / f"quantize-{args.size}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}, indent=2))


if __name__ == "__main__":
    main()
