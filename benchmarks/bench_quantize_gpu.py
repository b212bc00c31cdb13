"""FLUX.1-dev's FULL-SIZE transformer (random weights) on a GPU through Easel: bfloat16 against GGUF Q4_0, int8
(torchao) and nf4 (bitsandbytes), and bfloat16 under each offload the memory plan may choose: the GPU memory it holds
loaded, its peak while making an image, the load time and the seconds per denoising step.

The pipeline around it is bench_gguf.py's base (one-layer text encoders of FLUX's widths, FLUX's full VAE), so that
the figures are the transformer's and its work's (the diffusers blog's peaks for FLUX.1-dev on an H100 include
T5-XXL's 9.5 GB: bf16 36.2 GB, nf4 17.3 GB, GGUF Q4_1 21.3 GB). Each case runs in a process of its own.

    python benchmarks/bench_quantize_gpu.py [--cases bf16,Q4_0,int8,nf4] [--side 1024] [--steps 6]
    python benchmarks/bench_quantize_gpu.py --cases bf16,model-offload,group-offload,sequential-offload \
        --out benchmarks/results/offload-flux-gpu.json
"""

from __future__ import annotations

import argparse
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
from _common import own_process, run_case  # noqa: E402 - beside this file
from bench_gguf import FLUX_DEV, write_base, write_gguf  # noqa: E402

CASES = {"bf16": ("flux-dev-bf16", {}), "int8": ("flux-dev-bf16", {"quantize": "int8"}),
         "nf4": ("flux-dev-bf16", {"quantize": "nf4"}), "Q4_0": ("flux-dev-Q4_0", {"base": "BASE"}),
         "Q8_0": ("flux-dev-Q8_0", {"base": "BASE"}),
         # the placements the memory plan chooses from, asked for by name
         "model-offload": ("flux-dev-bf16", {"offload": "model"}),
         "group-offload": ("flux-dev-bf16", {"offload": "group"}),
         "sequential-offload": ("flux-dev-bf16", {"offload": "sequential"})}
GB = 1e9


def build(home: Path, cases: list[str]) -> dict:
    """The base, the bf16 transformer's folder (random weights made on the GPU) and the GGUF files the cases use."""
    import torch
    from diffusers import FluxTransformer2DModel

    made = {}
    t = time.perf_counter()
    write_base(home / "base")
    if any(CASES[name][0] == "flux-dev-bf16" for name in cases):
        folder = home / "models" / "flux-dev-bf16"
        shutil.copytree(home / "base", folder)
        with torch.device("cuda"):
            torch.manual_seed(0)
            transformer = FluxTransformer2DModel(**FLUX_DEV).to(torch.bfloat16)
        transformer.save_pretrained(folder / "transformer")
        del transformer
        torch.cuda.empty_cache()
    for quant in ("Q4_0", "Q8_0"):
        if quant in cases:
            made[quant] = round(write_gguf(home / "models" / f"flux-dev-{quant}.gguf", quant) / GB, 3)
    made["build_s"] = round(time.perf_counter() - t, 1)
    return made


def case(home: Path, name: str, side: int, steps: int) -> dict:
    import torch

    import easel
    from easel.api import default_runner

    os.environ["EASEL_HOME"] = str(home)
    model, extra = CASES[name]
    extra = {k: str(home / "base") if v == "BASE" else v for k, v in extra.items()}
    runner = default_runner()
    checked = runner.check(easel.ImageRequest(prompt="a lighthouse", model=model, extra=extra))
    provider = runner.registry.get("diffusers")
    t = time.perf_counter()
    loaded = provider.load(checked.spec, provider.loader.options(checked.spec, extra))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    held = torch.cuda.memory_allocated()
    load_peak = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []

    def step(*_):
        torch.cuda.synchronize()
        times.append(time.perf_counter())

    easel.generate("a lighthouse", model=model, size=f"{side}x{side}", steps=2, seed=1, save=False, **extra)  # warm
    times.clear()
    torch.cuda.reset_peak_memory_stats()
    easel.generate("a lighthouse", model=model, size=f"{side}x{side}", steps=steps, seed=1, save=False,
                   on_step=step, **extra)
    params = sum(p.numel() * p.element_size() for p in loaded.pipe.transformer.parameters())
    return {"case": name, "load_s": round(load_s, 1), "transformer_params_gb": round(params / GB, 3),
            "gpu_held_loaded_gb": round(held / GB, 3), "gpu_peak_loading_gb": round(load_peak / GB, 3),
            "gpu_peak_image_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
            "gpu_reserved_peak_gb": round(torch.cuda.max_memory_reserved() / GB, 3),
            "s_per_step": round((times[-1] - times[0]) / (len(times) - 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="bf16,Q4_0,int8,nf4")
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quantize-flux-gpu.json")
    if (args := own_process(parser, case)) is None:
        return
    import torch

    cases = args.cases.split(",")
    home = Path(tempfile.mkdtemp(prefix="easel-bench-quantize-gpu-"))
    (home / "models").mkdir()
    report = {"model": "FLUX.1-dev transformer, full size, random weights; one-layer text encoders",
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "side": args.side,
              "steps": args.steps, "files": build(home, cases), "cases": []}
    print(json.dumps(report["files"]), flush=True)
    for name in cases:
        done = run_case(__file__, name, home, args.side, args.steps)
        row = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else \
            {"case": name, "error": done.stderr.strip().splitlines()[-1][:400] if done.stderr.strip() else "?"}
        report["cases"].append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    bf16 = next((r for r in report["cases"] if r["case"] == "bf16" and "error" not in r), None)
    if bf16:
        for row in report["cases"]:
            if "error" not in row:
                row["peak_over_bf16"] = round(row["gpu_peak_image_gb"] / bf16["gpu_peak_image_gb"], 3)
                row["step_over_bf16"] = round(row["s_per_step"] / bf16["s_per_step"], 3)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
