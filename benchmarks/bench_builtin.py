"""Speed of the built-in model: load time, seconds per image at batch 1 and at batch 8, default settings, and the
decoder's share of an image.

    python benchmarks/bench_builtin.py            # writes benchmarks/results/builtin.json
    python benchmarks/bench_builtin.py --against FOLDER   # and one image at batch 1 beside another model folder
                                                          # (a previous version), interleaved in this run

A previous version's folder: `git archive REV src/easel/builtin/model | tar -x -C /tmp/prev`.
"""

import argparse

import json
import statistics
import time
from pathlib import Path

import torch

from easel.builtin.pipeline import ShapesPipeline
from easel.catalog import default_catalog

OUT = Path(__file__).parent / "results" / "builtin.json"


def against(pipe: ShapesPipeline, folder: Path, steps: int, guidance: float, prompt: str, rounds: int = 12) -> dict:
    """Seconds for one image at batch 1 with this model and with the one in `folder`, in turn, medians."""
    other = ShapesPipeline.from_pretrained(folder)
    other.set_progress_bar_config(disable=True)
    times: dict[str, list[float]] = {"shipped": [], "against": []}
    for i in range(rounds + 1):
        for name, model in (("shipped", pipe), ("against", other)):
            started = time.perf_counter()
            model([prompt], generator=[torch.Generator().manual_seed(i)], num_inference_steps=steps,
                  guidance_scale=guidance)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - started)
    shipped, other_s = statistics.median(times["shipped"]), statistics.median(times["against"])
    return {"folder": str(folder), "s_per_image_batch1_median": round(other_s, 4),
            "shipped_s_per_image_batch1_median": round(shipped, 4), "shipped_over_against": round(shipped / other_s, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", type=Path, default=None, help="another model folder to time beside the shipped one")
    args = ap.parse_args()
    spec = default_catalog().resolve("builtin")
    folder = spec.local_path
    loads = []
    for _ in range(5):
        started = time.perf_counter()
        pipe = ShapesPipeline.from_pretrained(folder)
        loads.append(time.perf_counter() - started)
    pipe.set_progress_bar_config(disable=True)
    steps, guidance = spec.default_steps, spec.default_guidance
    prompt = "a large red circle on the left on a blue background"

    def run(batch: int, seed: int) -> float:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
        started = time.perf_counter()
        pipe([prompt] * batch, generator=gens, num_inference_steps=steps, guidance_scale=guidance)
        return time.perf_counter() - started

    def decode() -> float:  # the autoencoder's share of one image (version 2): decoding and the palette
        latents = torch.randn(1, pipe.unet.config.out_channels, pipe.latent_size, pipe.latent_size)
        started = time.perf_counter()
        with torch.no_grad():
            pipe.keep_to_palette((pipe.decode_latents(latents) + 1) / 2)
        return time.perf_counter() - started

    run(1, 0)  # warm-up
    batch1 = [run(1, i) for i in range(10)]
    batch8 = [run(8, i) / 8 for i in range(5)]
    decodes = [decode() for _ in range(10)] if pipe.vae is not None else None
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    result = {
        "steps": steps, "guidance": guidance, "threads": torch.get_num_threads(),
        "load_s_median": round(statistics.median(loads), 4),
        "s_per_image_batch1_median": round(statistics.median(batch1), 4),
        "s_per_image_batch8_median": round(statistics.median(batch8), 4),
        "batch8_speedup_per_image": round(statistics.median(batch1) / statistics.median(batch8), 2),
        "decode_s_median": round(statistics.median(decodes), 4) if decodes else None,
        "native_side": pipe.native_size,
        "weights_mb": round(size / 1e6, 2),
    }
    if args.against:
        result["against"] = against(pipe, args.against, steps, guidance, prompt)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
