"""The hires fix against generating directly at the large size: total time of each, same model, same final size.

The model is SD 1.5's layout at a quarter of its width built from configs (as bench_lora.py builds it; `--size
full`: SD 1.5 itself, for a GPU). Hires: 30 steps at the small size, Lanczos x2, then 30 steps at strength 0.55.
Direct: 30 steps at the large size.

    python benchmarks/bench_hires.py [--side 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--side", type=int, default=256, help="the first pass's side; the result is twice that")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="easel-bench-hires-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the model files: gigabytes
    os.environ["EASEL_HOME"] = str(work)
    from bench_lora import build

    build(args.size).save_pretrained(work / "model")
    import easel

    small, big = f"{args.side}x{args.side}", f"{2 * args.side}x{2 * args.side}"
    common = dict(model=str(work / "model"), steps=args.steps, seed=1, save=False)
    easel.generate("warm up", size="64x64", **{**common, "steps": 1})

    def timed(**options) -> float:
        started = time.perf_counter()
        easel.generate("a lighthouse on a cliff at dusk", **common, **options)
        return time.perf_counter() - started

    hires, direct = [], []
    for _ in range(args.rounds):
        hires.append(timed(size=small, hires_scale=2, hires_strength=0.55))
        direct.append(timed(size=big))
    result = {"size": args.size, "first_pass": small, "final": big, "steps": args.steps, "hires_strength": 0.55,
              "hires_s": round(statistics.median(hires), 2), "direct_s": round(statistics.median(direct), 2),
              "hires_vs_direct": round(statistics.median(hires) / statistics.median(direct), 3),
              "runs": {"hires": [round(x, 2) for x in hires], "direct": [round(x, 2) for x in direct]}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"hires-{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
