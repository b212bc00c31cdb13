"""A CLI call's wall time: `easel generate` for one built-in image (256x256, its default 15 steps), handed to a
running `easel serve` (warm model) against the same call run in-process (`--local`: imports and model load every
time), beside the model's own time for that image in a warm process, all in one run on this machine.

    python benchmarks/bench_cli.py            # writes benchmarks/results/cli.json
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port, wait_healthy

OUT = Path(__file__).parent / "results" / "cli.json"
PROMPT = "a large red circle on the left on a blue background"
RUNS = 7


def timed_call(env: dict[str, str], *extra: str, seed: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "easel.cli", "generate", PROMPT, "--seed", str(seed), *extra], env=env,
                   check=True, capture_output=True)
    return time.perf_counter() - started


def model_time() -> float:
    """The model's own time for the image, in a warm process (the floor of any call)."""
    code = ("import time, easel; easel.generate('x a red circle', seed=0, save=False); t = []\n"
            "for i in range(5):\n"
            "    s = time.perf_counter(); easel.generate('" + PROMPT + "', seed=i, save=False); "
            "t.append(time.perf_counter() - s)\n"
            "print(sorted(t)[2])")
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split()[-1])


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="easel-bench-cli-"))
    port = free_port()
    env = {**os.environ, "EASEL_HOME": str(home), "EASEL_API_KEYS": ""}
    server = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        via_server = {**env, "EASEL_HOST": f"127.0.0.1:{port}"}
        timed_call(via_server, seed=0)  # the first call: the server's caches warm
        served = [timed_call(via_server, seed=i) for i in range(1, RUNS + 1)]
        local = [timed_call({**env, "EASEL_HOST": "off"}, seed=i) for i in range(1, 4)]
    finally:
        server.terminate()
        server.wait(30)
    floor = model_time()
    result = {
        "image": "built-in model, 256x256, 15 steps", "runs": RUNS, "cpus": os.cpu_count(),
        "served_median_s": round(statistics.median(served), 3), "served_max_s": round(max(served), 3),
        "in_process_median_s": round(statistics.median(local), 3),
        "model_own_s": round(floor, 3),
        "served_overhead_s": round(statistics.median(served) - floor, 3),
        "in_process_over_served": round(statistics.median(local) / statistics.median(served), 2),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
