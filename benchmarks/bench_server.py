"""Latency of one generation through `easel serve` (the openai SDK, b64_json; A1111's txt2img through webuiapi;
a ComfyUI workflow as Open WebUI's ComfyUI engine runs it: socket, /prompt, wait, /history, /view) against the same
generation through the library, in the same run, same model and settings; plus the CLI's start-up costs.

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


def comfy_image(base: str, seed: int) -> bytes:
    """One image as Open WebUI's ComfyUI engine gets it: the socket, /prompt, `executing` with no node, /history,
    /view."""
    import httpx
    from websockets.sync.client import connect

    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 12, "cfg": 4.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "builtin"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}
    with connect(f"{base.replace('http', 'ws')}/ws?clientId=bench") as ws:
        prompt_id = httpx.post(f"{base}/prompt", json={"prompt": graph, "client_id": "bench"}).json()["prompt_id"]
        while True:
            message = ws.recv(timeout=300)
            if isinstance(message, str):
                data = json.loads(message)
                if data["type"] == "executing" and data["data"]["node"] is None \
                        and data["data"]["prompt_id"] == prompt_id:
                    break
    image = httpx.get(f"{base}/history/{prompt_id}").json()[prompt_id]["outputs"]["9"]["images"][0]
    return httpx.get(f"{base}/view", params=image).content


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
    same = dict(size="256x256", steps=12, guidance=4.0, scheduler="euler")  # what the A1111 and ComfyUI calls ask
    library_euler = [timed(lambda: easel.generate(PROMPT, seed=i, **same)) for i in range(RUNS)]

    port = free_port()
    proc = subprocess.Popen([*exe, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x")
        client.images.generate(prompt=PROMPT, extra_body={"seed": 0})
        server = [timed(lambda: client.images.generate(prompt=PROMPT, extra_body={"seed": i})) for i in range(RUNS)]
        import webuiapi

        a1111 = webuiapi.WebUIApi(host="127.0.0.1", port=port)
        a1111_s = [timed(lambda: a1111.txt2img(prompt=PROMPT, seed=i, width=256, height=256, steps=12, cfg_scale=4.0,
                                               sampler_name="Euler")) for i in range(RUNS)]
        comfy_s = [timed(lambda: comfy_image(base, i)) for i in range(RUNS)]
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
        "library_euler_256_median_s": round(statistics.median(library_euler), 4),
        "a1111_webuiapi_median_s": round(statistics.median(a1111_s), 4),
        "a1111_over_library": round(statistics.median(a1111_s) / statistics.median(library_euler), 3),
        "comfyui_open_webui_median_s": round(statistics.median(comfy_s), 4),
        "comfyui_over_library": round(statistics.median(comfy_s) / statistics.median(library_euler), 3),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
