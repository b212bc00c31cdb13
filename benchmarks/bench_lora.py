"""LoRA switching cost: a request with LoRA A after one with LoRA B, against a request with A after one with A,
through Easel's diffusers provider (the adapters of a pipeline are loaded once and switched with set_adapters).

The pipeline is SD 1.5's architecture built from configs with random weights: `--size small` (the default, for a
CPU: SD 1.5's layout at a quarter of its width, 256x256) or `--size full` (SD 1.5 itself, 512x512: for a GPU).
The LoRAs are rank 16 on the UNet's and the text encoder's attention, made with peft and saved as diffusers saves
them. Goal: switching costs under 10% of a 30-step image.

    python benchmarks/bench_lora.py [--size small|full] [--steps 30] [--rounds 3]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_pipelines import save_random_lora  # noqa: E402  (the LoRAs the tests make, at rank 16)


def build(size: str):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    full = size == "full"
    width = 1 if full else 4  # the divisor of SD 1.5's widths
    unet = UNet2DConditionModel(
        block_out_channels=tuple(c // width for c in (320, 640, 1280, 1280)), layers_per_block=2,
        cross_attention_dim=768 // width, attention_head_dim=8, sample_size=64 if full else 32,
        norm_num_groups=32 // width if not full else 32)
    vae = AutoencoderKL(block_out_channels=[c // width for c in (128, 256, 512, 512)],
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        latent_channels=4, layers_per_block=2, norm_num_groups=32 // width if not full else 32)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768 // width, intermediate_size=3072 // width,
                                           num_hidden_layers=12 if full else 4, num_attention_heads=12 // width,
                                           vocab_size=len(vocab), bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    return StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="timed requests per case")
    args = parser.parse_args()

    import torch

    side = 512 if args.size == "full" else 256
    work = Path(tempfile.mkdtemp(prefix="easel-bench-lora-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # the model files: gigabytes
    os.environ["EASEL_HOME"] = str(work)  # its loras folder holds a and b
    pipe = build(args.size)
    pipe.save_pretrained(work / "model")
    (work / "loras").mkdir()
    save_random_lora(pipe, work / "loras" / "a.safetensors", seed=1, rank=16)
    save_random_lora(pipe, work / "loras" / "b.safetensors", seed=2, rank=16)
    del pipe

    import easel
    from easel.providers.diffusers import pick_device

    device = pick_device()

    def run(loras: dict[str, float]) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        easel.generate("a lighthouse on a cliff", model=str(work / "model"), size=f"{side}x{side}", steps=args.steps,
                       seed=1, loras=loras, save=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    first_load = run({"a": 0.8})  # the pipeline and LoRA a: the first request pays both
    cold_b = run({"b": 0.8})  # LoRA b's first use: read and attach its weights
    plain = [run({}) for _ in range(args.rounds)]
    same = []
    for _ in range(args.rounds):
        run({"a": 0.8})
        same.append(run({"a": 0.8}))
    switched = []
    for _ in range(args.rounds):
        run({"b": 0.8})
        switched.append(run({"a": 0.8}))
    med_same, med_switch, med_plain = (statistics.median(x) for x in (same, switched, plain))

    # the switch itself, timed alone (whole images on a shared CPU vary by more than it costs): making a the active
    # LoRA after b, against making it active again after a, on the pipeline the requests ran on
    runner = easel.api.default_runner()
    checked = runner.check(easel.ImageRequest(prompt="-", model=str(work / "model"), loras={"a": 0.8}))
    provider = runner.registry.get("diffusers")
    loaded = provider.load(checked.spec, provider.loader.options(checked.spec, {}))

    def use(name: str) -> float:
        started = time.perf_counter()
        with loaded.lock:
            provider._use_loras(loaded, {name: 0.8})
        return time.perf_counter() - started

    op_same, op_switch = [], []
    for _ in range(20):
        use("a")
        op_same.append(use("a"))
        use("b")
        op_switch.append(use("a"))
    op_cost = statistics.median(op_switch) - statistics.median(op_same)
    result = {
        "size": args.size, "device": device, "steps": args.steps, "side": side, "rounds": args.rounds,
        "first_request_s": round(first_load, 3), "first_use_of_second_lora_s": round(cold_b, 3),
        "no_lora_s": round(med_plain, 3), "same_lora_s": round(med_same, 3), "switched_lora_s": round(med_switch, 3),
        "image_switch_minus_same_s": round(med_switch - med_same, 3),
        "set_adapters_same_s": round(statistics.median(op_same), 5),
        "set_adapters_switched_s": round(statistics.median(op_switch), 5),
        "switch_cost_s": round(op_cost, 5),
        "switch_cost_share_of_image": round(op_cost / med_same, 5),
        "lora_overhead_vs_none": round(med_same / med_plain, 3),
        "runs": {"same": [round(x, 3) for x in same], "switched": [round(x, 3) for x in switched],
                 "none": [round(x, 3) for x in plain]},
    }
    RESULTS.mkdir(exist_ok=True)
    name = f"lora-{device}-{args.size}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
