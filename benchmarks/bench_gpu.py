"""Easel against bare diffusers on the same pipeline, in one run, the paths alternating call by call.

On a GPU it builds full-size SD 1.5 (512x512) and SDXL (1024x1024) pipelines from their configs with random fp16
weights (timing does not depend on weight values); on a CPU, tiny pipelines of the same classes (so that CI keeps
the script working; those figures say nothing about a GPU). Measured, as ratios to bare diffusers:

  (1) `easel.generate` (saving its PNGs) at batch 1 and 4;
  (2) with --compile: diffusers optimised by hand (channels-last, fused QKV, torch.compile) against Easel with
      the same options (`compile`, `channels_last`, `fuse_qkv`);
  (3) `easel serve` under 8 concurrent clients (one image each, 3 requests) against bare diffusers at batch 8,
      with the mean batch the engine formed;
  (4) a job streaming previews every 5 steps against the same job without;
  (5) the options that cut the work at batch 1 (`decoder=tiny`, `cache=deepcache:3`, `tokens=todo`) against
      Easel plain, with a tiny autoencoder of TAESD's architecture (random weights) as the family's;
  and the peak device memory of the in-process paths.

    python benchmarks/bench_gpu.py                  # full size on CUDA, tiny on CPU; writes results/gpu*.json
    python benchmarks/bench_gpu.py --family sd15 --compile
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import free_port, wait_healthy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# a hub cache of the benchmark's own (the tiny autoencoders go there), before huggingface_hub reads it
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="easel-bench-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
OUT = Path(__file__).parent / "results"
PROMPT = "a lighthouse on a cliff at dawn, oil painting"
TINY_DECODERS = {"sd15": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}


def full_size(family: str):
    """A full-size pipeline of `family` from its published configs, random weights, a stand-in tokenizer."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from tiny_pipelines import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    clip = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    if family == "sd15":
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                    cross_attention_dim=768, attention_head_dim=8)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, **clip))
        return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    unet = UNet2DConditionModel(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                                cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, **clip))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                        num_attention_heads=20, num_hidden_layers=32,
                                                        projection_dim=1280, **clip))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=clip_tokenizer(),
                                     tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler)


def build(family: str, tiny: bool, folder: Path) -> Path:
    """The pipeline saved as a folder, the way a user's model reaches Easel."""
    if tiny:
        from tiny_pipelines import save_tiny

        return save_tiny(family, folder)
    import torch

    full_size(family).to(torch.float16).save_pretrained(folder)
    return folder


def install_tiny_decoder(family: str, tiny: bool, root: Path) -> None:
    """A tiny autoencoder (random weights; TAESD's architecture, or a small one for tiny pipelines) where Easel
    finds the family's for `decoder=tiny`: the hub cache, as a download would leave it."""
    import torch
    from diffusers import AutoencoderTiny
    from tiny_pipelines import install_in_hub_cache

    torch.manual_seed(0)
    taesd = AutoencoderTiny(encoder_block_out_channels=(4, 4), decoder_block_out_channels=(4, 4),
                            num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4) if tiny \
        else AutoencoderTiny()  # 2.4 M parameters against the VAE's 83.7 M
    taesd.save_pretrained(root / f"tiny-decoder-{family}")
    install_in_hub_cache(root / f"tiny-decoder-{family}", Path(os.environ["HF_HOME"]) / "hub", TINY_DECODERS[family])


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def alternate(paths: dict, runs: int) -> dict[str, float]:
    """Each path once per round, round after round (so that a slow spell of the machine hits them all)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        fn()  # warm-up (and compilation)
    for _ in range(runs):
        for name, fn in paths.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def in_process(folder: Path, device: str, size: int, steps: int, runs: int, compile_: bool) -> dict:
    import torch
    from diffusers import DiffusionPipeline

    import easel

    dtype = torch.float16 if device == "cuda" else torch.float32
    bare = DiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
    bare.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=steps, width=size, height=size, guidance_scale=7.5)

    def diffusers_call(n):
        return lambda: bare([PROMPT] * n, generator=[torch.Generator("cpu").manual_seed(i) for i in range(n)], **kw)

    def easel_call(n, **options):
        return lambda: easel.generate(PROMPT, model=str(folder), n=n, size=f"{size}x{size}", steps=steps,
                                      guidance=7.5, seed=1, **options)

    medians = alternate({"diffusers_b1": diffusers_call(1), "easel_b1": easel_call(1),
                         "diffusers_b4": diffusers_call(4), "easel_b4": easel_call(4)}, runs)
    result = {f"{k}_s": round(v, 4) for k, v in medians.items()}
    result["easel_over_diffusers_b1"] = round(medians["easel_b1"] / medians["diffusers_b1"], 3)
    result["easel_over_diffusers_b4"] = round(medians["easel_b4"] / medians["diffusers_b4"], 3)
    # the server's baseline, taken before compiling: a pipeline compiled for batch 1 recompiles for 8
    result["diffusers_b8_s"] = round(median_s(diffusers_call(8), max(1, runs // 2)), 4)
    # (5) each option that cuts the work against Easel plain, alternating
    options = {"decoder=tiny": {"decoder": "tiny"}, "cache=deepcache:3": {"cache": "deepcache:3"},
               "tokens=todo": {"tokens": "todo"}}
    cut = alternate({"plain": easel_call(1), **{name: easel_call(1, **kw) for name, kw in options.items()}}, runs)
    result["options_b1_s"] = {name: round(v, 4) for name, v in cut.items()}
    result["options_speedup_b1"] = {name: round(cut["plain"] / cut[name], 3) for name in options}
    if compile_:
        mode = "reduce-overhead" if device == "cuda" else "default"
        bare.unet.to(memory_format=torch.channels_last)
        bare.fuse_qkv_projections()
        bare.unet.compile(mode=mode, fullgraph=False, dynamic=False)
        bare.vae.decoder.compile(mode=mode, fullgraph=False, dynamic=False)
        fast = alternate({"diffusers_opt_b1": diffusers_call(1),
                          "easel_compile_b1": easel_call(1, compile=mode, channels_last=True, fuse_qkv=True)}, runs)
        result.update({f"{k}_s": round(v, 4) for k, v in fast.items()})
        result["easel_compile_over_diffusers_opt"] = round(fast["easel_compile_b1"] / fast["diffusers_opt_b1"], 3)
        result["diffusers_opt_over_plain_b1"] = round(fast["diffusers_opt_b1"] / medians["diffusers_b1"], 3)
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def served(folder: Path, size: int, steps: int, clients: int = 8, per_client: int = 3) -> dict:
    """`easel serve` with the folder as its model, 8 concurrent clients, one image a request."""
    home = tempfile.mkdtemp(prefix="easel-bench-gpu-")
    port = free_port()
    env = {**os.environ, "EASEL_HOME": home, "EASEL_UI": "0", "EASEL_MAX_QUEUE": "64", "EASEL_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "serve", "--port", str(port), "--model", str(folder)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    body = {"prompt": PROMPT, "size": f"{size}x{size}", "num_inference_steps": steps, "guidance_scale": 7.5}
    try:
        wait_healthy(base, timeout=900)
        with httpx.Client(base_url=base, timeout=900) as http:
            http.post("/v1/images/generations", json=body).raise_for_status()  # warm-up

            def one_client(c: int) -> None:
                for i in range(per_client):
                    http.post("/v1/images/generations", json={**body, "seed": c * 100 + i}).raise_for_status()

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one_client, range(clients)))
            wall = time.perf_counter() - started
            metrics = {line.split()[0]: float(line.split()[-1]) for line in http.get("/metrics").text.splitlines()
                       if line.startswith("easel_batch_images_")}
            previews = {}
            for watched in (False, True):  # (4) the same job, its previews streamed or not
                job = http.post("/v1/jobs", json={**body, "seed": 7}).json()
                started_job = time.perf_counter()
                with http.stream("GET", f"/v1/jobs/{job['id']}/events",
                                 params={"previews": str(watched).lower()}) as stream:
                    for _ in stream.iter_lines():
                        pass
                previews["with" if watched else "without"] = time.perf_counter() - started_job
    finally:
        proc.terminate()
        proc.wait(60)
    calls = metrics.get("easel_batch_images_count", 1) - 1  # the warm-up ran alone, one image
    images = clients * per_client
    return {"clients": clients, "images": images, "images_per_s": round(images / wall, 3),
            "mean_batch": round((metrics.get("easel_batch_images_sum", 1) - 1) / max(1, calls), 2),
            "previews_over_none": round(previews["with"] / previews["without"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=("sd15", "sdxl"), action="append")
    parser.add_argument("--tiny", action="store_true", help="tiny pipelines even on a GPU")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--runs", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("EASEL_HOME", tempfile.mkdtemp(prefix="easel-bench-home-"))
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    families = args.family or (["sd15"] if tiny else ["sd15", "sdxl"])
    runs = args.runs or (3 if tiny else 7)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
              "pipelines": "tiny (from tests/tiny_pipelines.py)" if tiny else "full size from configs, fp16",
              "families": {}}
    for family in families:
        size, steps = (64, 10) if tiny else ((512, 30) if family == "sd15" else (1024, 30))
        # a folder's name is its model's name on the server: never one of the catalog's own (sd15, sdxl)
        root = Path(tempfile.mkdtemp(prefix=f"easel-{family}-"))
        folder = build(family, tiny, root / f"bench-{family}")
        install_tiny_decoder(family, tiny, root)
        row = {"size": size, "steps": steps, **in_process(folder, device, size, steps, runs, args.compile)}
        server = served(folder, size, steps)
        server["over_diffusers_b8"] = round(server["images_per_s"] / (8 / row["diffusers_b8_s"]), 3)
        row["server"] = server
        report["families"][family] = row
        print(json.dumps({family: row}, indent=2), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / ("gpu.json" if device == "cuda" and not tiny else "gpu-cpu-tiny.json")).write_text(
        json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
