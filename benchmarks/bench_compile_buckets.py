"""A compiled model under a server's varying batch sizes: Easel pads a compiled pipeline's batch to the next power of
two (`providers/diffusers/inputs.to_bucket`), so that 1..8 images need 4 compiled shapes rather than 8. Each case
runs in a process of its own (a fresh torch.compile cache): batches of 1, 2, ..., 8 images then the same again, on
a tiny SD 1.5 pipeline (on a GPU, full size: `--full`), with and without the buckets (the latter by replacing
`to_bucket` with the identity in that process). Reported: the graphs torch compiled, the seconds of the first
pass (compiling) and of the second (all compiled).

    python benchmarks/bench_compile_buckets.py [--full] [--out benchmarks/results/compile-buckets.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]


def case(folder: str, buckets: bool, side: int, device_compile: str) -> dict:
    import torch

    import easel
    from easel.providers.diffusers import inputs

    if not buckets:
        inputs.to_bucket = lambda batch: batch
    passes = []
    for _ in range(2):
        started = time.perf_counter()
        for n in range(1, 9):
            easel.generate("a lighthouse at dawn", model=folder, n=n, size=f"{side}x{side}", steps=2, seed=1,
                           save=False, compile=device_compile)
        passes.append(round(time.perf_counter() - started, 2))
    return {"graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"], "first_pass_s": passes[0],
            "second_pass_s": passes[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full-size SD 1.5 from its configs (for a GPU)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    side = 512 if args.full else 64
    if args.case:
        import torch

        mode = "reduce-overhead" if torch.cuda.is_available() else "default"  # CUDA graphs: one per shape
        print(json.dumps(case(args.folder, args.case == "buckets", side, mode)))
        return
    folder = Path(tempfile.mkdtemp(prefix="easel-bench-buckets-")) / "sd15"
    if args.full:
        from bench_gpu import full_size

        full_size("sd15").save_pretrained(folder)
    else:
        from tiny_pipelines import save_tiny

        save_tiny("sd15", folder)
    report = {"pipeline": "full-size SD 1.5" if args.full else "tiny SD 1.5", "side": side,
              "batches": "1..8 images, twice"}
    for name in ("no buckets", "buckets"):
        done = subprocess.run([sys.executable, __file__, "--case", name.replace("no ", "no-"), "--folder",
                               str(folder)] + (["--full"] if args.full else []), capture_output=True, text=True,
                              env={**os.environ, "EASEL_HOME": tempfile.mkdtemp()})
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        report[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, report[name], flush=True)
    report["first_pass_ratio"] = round(report["buckets"]["first_pass_s"] / report["no buckets"]["first_pass_s"], 3)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
