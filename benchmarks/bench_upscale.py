"""Tiled against untiled upscaling, 512 -> 2048: time and peak memory of each, every variant in a fresh process (its
peak resident memory is its own).

`--upscaler x4`: SD x4's architecture built from configs at a small width (random weights). `--upscaler esrgan`:
Real-ESRGAN x4plus's architecture at its full size (RRDBNet, 23 blocks of 64 filters, random weights) saved as a
`.pth` and loaded by spandrel (needs `easel[esrgan]`). A tile of 0 is untiled.

    python benchmarks/bench_upscale.py [--upscaler x4|esrgan] [--side 512] [--tiles 0,128,256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def one(side: int, tile: int, home: str, upscaler: str) -> dict:
    """Runs in its own process: one upscale, timed; its peak RSS."""
    import numpy as np
    from PIL import Image

    import easel

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).resize((side, side))
    easel.upscale(picture.resize((32, 32)), scale=4, upscaler=upscaler, tile=0)  # load the model first
    started = time.perf_counter()
    out = easel.upscale(picture, scale=4, upscaler=upscaler, tile=tile)
    took = time.perf_counter() - started
    return {"tile": tile, "seconds": round(took, 2), "size": list(out.size),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--tiles", default="0,128,256")
    parser.add_argument("--upscaler", choices=["x4", "esrgan"], default="x4")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), int(args.one[1]), args.one[2], args.upscaler)))
        return
    home = tempfile.mkdtemp(prefix="easel-bench-upscale-")
    if args.upscaler == "x4":
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny_pipelines import save_tiny_upscaler

        save_tiny_upscaler(Path(home) / "upscalers" / "x4")
    else:
        import torch
        from spandrel.architectures.ESRGAN import ESRGAN

        (Path(home) / "upscalers").mkdir(parents=True)
        torch.manual_seed(0)
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
        torch.save({"params_ema": model.state_dict()}, Path(home) / "upscalers" / "esrgan.pth")
    env = {**os.environ, "EASEL_HOME": home, "HF_HUB_OFFLINE": "1"}
    runs = []
    for tile in [int(t) for t in args.tiles.split(",")]:
        done = subprocess.run([sys.executable, __file__, "--upscaler", args.upscaler, "--one", str(args.side),
                               str(tile), home], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            runs.append({"tile": tile, "failed": done.stderr.strip().splitlines()[-1][:300]})
        else:
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    result = {"upscaler": args.upscaler, "side": args.side, "to": args.side * 4, "runs": runs}
    base = next((r for r in runs if r.get("tile") == 0 and "seconds" in r), None)
    if base:
        for r in runs:
            if "seconds" in r:
                r["time_vs_untiled"] = round(r["seconds"] / base["seconds"], 3)
                r["memory_vs_untiled"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
    RESULTS.mkdir(exist_ok=True)
    name = "tiny" if args.upscaler == "x4" else "esrgan"
    (RESULTS / f"upscale-cpu-{name}-{args.side}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
