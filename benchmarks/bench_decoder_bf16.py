"""The tiny decoder in bfloat16 on a CPU (what `decoder=tiny` does where the CPU computes bfloat16 in hardware):
its seconds against float32 for a 512x512 decode (TAESD's architecture, random weights: timing does not depend on
their values), round by round, and how far bfloat16 moves a trained decoder's pixels (the built-in model's
autoencoder, which ships with Easel, on the latents of its own evaluation grid's pictures), in levels of 255.

    python benchmarks/bench_decoder_bf16.py [--rounds 5]     # writes results/decoder-bf16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image

from easel.providers.diffusers.onednn import Bfloat16Layers, native_bfloat16

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def seconds(rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    full = AutoencoderTiny().eval().to(memory_format=torch.channels_last)
    half = AutoencoderTiny().eval()
    half.decoder.layers = Bfloat16Layers(half.decoder.layers)
    half = half.to(memory_format=torch.channels_last)
    latents = torch.randn(1, 4, 64, 64)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round warms
            for name, model in (("float32", full), ("bfloat16", half)):
                started = time.perf_counter()
                model.decode(latents)
                times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(t[1:]), 3) for name, t in times.items()}


def levels(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    d = (a.clamp(-1, 1) - b.clamp(-1, 1)).abs().flatten() * 127.5
    return {"mean": round(d.mean().item(), 3), "p99": round(d.quantile(0.99).item(), 2),
            "max": round(d.max().item(), 2)}


def pixels_moved(side: int = 256, tiles: int = 16) -> dict[str, float]:
    vae = AutoencoderKL.from_pretrained(ROOT / "src" / "easel" / "builtin" / "model" / "vae").eval()
    grid = np.asarray(Image.open(ROOT / "training" / "eval" / "grid.png").convert("RGB"), dtype=np.float32)
    h, w = grid.shape[:2]
    crops = [grid[y:y + side, x:x + side] for y in range(0, h - side + 1, side) for x in range(0, w - side + 1, side)]
    images = torch.from_numpy(np.stack(crops[:tiles]) / 127.5 - 1).permute(0, 3, 1, 2)
    with torch.inference_mode():
        latents = vae.encode(images).latent_dist.mean
        full = vae.decode(latents).sample
        vae.decoder = Bfloat16Layers(vae.decoder)
        half = vae.decode(latents).sample
    return levels(half, full)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decoder-bf16.json")
    args = parser.parse_args()
    took = seconds(args.rounds)
    report = {"what": __doc__.splitlines()[0], "bfloat16_in_hardware": native_bfloat16(),
              "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
              "taesd_512_decode_s": took, "speedup": round(took["float32"] / took["bfloat16"], 2),
              "builtin_autoencoder_bf16_levels_moved": pixels_moved()}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
