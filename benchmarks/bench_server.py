"""Latency of one generation through `easel serve` (the openai SDK, b64_json) against the same generation through
the library, in the same run, same model and settings; plus the CLI's start-up costs.

    python benchmarks/bench_server.py             # writes benchmarks/results/server.json
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
from _common import free_port, wait_healthy

OUT = Path(__file__).parent / "results" / "server.json"
PROMPT = "a large red circle on the left on a blue background"
RUNS = 15



def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    env = {**os.environ, "EASEL_HOME": str(home)}
    os.environ["EASEL_HOME"] = str(home)

    # CLI start-up, each in a fresh process
    exe = [sys.executable, "-m", "easel.cli"]
    baseline = statistics.median(timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
                                 for _ in range(5))
    help_s = statistics.median(timed(lambda: subprocess.run([*exe, "--help"], check=True, env=env,
                                                            capture_output=True)) for _ in range(5))
    first_image_s = statistics.median(timed(lambda: subprocess.run([*exe, "generate", PROMPT, "--seed", "1"],
                                                                   check=True, env=env, capture_output=True))
                                      for _ in range(3))

    # library: the model stays loaded between calls, as in a long-running program
    import easel

    easel.generate(PROMPT, seed=0)
    library = [timed(lambda: easel.generate(PROMPT, seed=i)) for i in range(RUNS)]

    port = free_port()
    proc = subprocess.Popen([*exe, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x")
        client.images.generate(prompt=PROMPT, extra_body={"seed": 0})
        server = [timed(lambda: client.images.generate(prompt=PROMPT, extra_body={"seed": i})) for i in range(RUNS)]
    finally:
        proc.terminate()
        proc.wait(10)

    result = {
        "runs": RUNS,
        "python_startup_s": round(baseline, 3),
        "cli_help_s": round(help_s, 3),
        "cli_first_image_s": round(first_image_s, 3),
        "library_median_s": round(statistics.median(library), 4),
        "server_median_s": round(statistics.median(server), 4),
        "server_over_library": round(statistics.median(server) / statistics.median(library), 3),
        "server_overhead_ms": round((statistics.median(server) - statistics.median(library)) * 1000, 1),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
