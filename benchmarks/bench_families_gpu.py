"""Seconds per image of the 2025-26 few-step families at their default steps, FULL-SIZE architectures with random
weights: FLUX.2 [klein] 4B (4 steps, its Qwen3-4B encoder), Z-Image-Turbo 6B (9 steps, Qwen3-4B) and SANA-Sprint 1.6B
(2 steps, Gemma-2 2B, DC-AE), Easel's library against diffusers' own call of the same saved pipeline, round by round
in one process, on a GPU in bfloat16. The goal: Easel / bare <= 1.02.

    python benchmarks/bench_families_gpu.py [--families flux2-klein,z-image-turbo,sana-sprint] [--rounds 3]
    python benchmarks/bench_families_gpu.py --tiny   # the same harness on diffusers' test sizes (a CPU check)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
# family -> its catalog model's defaults (steps, guidance)
DEFAULTS = {"flux2-klein": (4, 1.0), "z-image-turbo": (9, 0.0), "sana-sprint": (2, 4.5)}


def _qwen3_4b(causal: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                         rope_theta=1e6, tie_word_embeddings=True)
    return (Qwen3ForCausalLM if causal else Qwen3Model)(config)


def full_size(family: str):
    """The pipeline at its release's sizes (transformer configs as diffusers' conversion scripts write them)."""
    import diffusers
    from tiny_pipelines import _gemma_tokenizer, _qwen_tokenizer

    if family == "flux2-klein":
        transformer = diffusers.Flux2Transformer2DModel(num_layers=5, num_single_layers=20, num_attention_heads=24,
                                                        joint_attention_dim=7680, guidance_embeds=False)
        return diffusers.Flux2KleinPipeline(transformer=transformer, vae=diffusers.AutoencoderKLFlux2(),
                                            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                            text_encoder=_qwen3_4b(causal=True), tokenizer=_qwen_tokenizer(True),
                                            is_distilled=True)
    if family == "z-image-turbo":
        vae = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                                      down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False,
                                      use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159)
        return diffusers.ZImagePipeline(transformer=diffusers.ZImageTransformer2DModel(), vae=vae,
                                        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        text_encoder=_qwen3_4b(causal=False), tokenizer=_qwen_tokenizer(True))
    if family == "sana-sprint":
        from transformers import Gemma2Config, Gemma2Model

        vits = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
        vae = diffusers.AutoencoderDC(encoder_block_types=vits, decoder_block_types=vits, scaling_factor=0.41407)
        gemma = Gemma2Model(Gemma2Config(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                         num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                         vocab_size=256000))
        transformer = diffusers.SanaTransformer2DModel(qk_norm="rms_norm_across_heads", guidance_embeds=True)
        return diffusers.SanaSprintPipeline(transformer=transformer, vae=vae, scheduler=diffusers.SCMScheduler(),
                                            text_encoder=gemma, tokenizer=_gemma_tokenizer())
    raise ValueError(family)


def tiny(family: str):
    from tiny_pipelines import NEW_FAMILIES

    return NEW_FAMILIES[{"z-image-turbo": "z-image"}.get(family, family)]()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="flux2-klein,z-image-turbo,sana-sprint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true", help="diffusers' test sizes, on whatever device there is")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    import easel
    from easel.api import reset_default_runner

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    side = 64 if args.tiny else args.side
    home = Path(tempfile.mkdtemp(prefix="easel-bench-families-"))
    os.environ["EASEL_HOME"] = str(home)
    reset_default_runner()
    report = {"what": "s/image at the family's default steps, Easel's library vs diffusers' own call, one process",
              "sizes": "diffusers' test sizes" if args.tiny else "full-size architectures, random weights",
              "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "side": side, "rounds": args.rounds, "families": []}
    out = args.out or HERE / "results" / ("families-tiny.json" if args.tiny else "families-gpu.json")
    for family in args.families.split(","):
        steps, guidance = DEFAULTS[family]
        folder = home / family
        with torch.device(device):
            torch.manual_seed(0)
            (tiny(family) if args.tiny else full_size(family)).to(dtype).save_pretrained(folder)
        if cuda:
            torch.cuda.empty_cache()
        bare = DiffusionPipeline.from_pretrained(folder, dtype=dtype).to(device)
        bare.set_progress_bar_config(disable=True)

        def diffusers_call():
            return bare(prompt=[PROMPT], width=side, height=side, num_inference_steps=steps, guidance_scale=guidance,
                        generator=[torch.Generator("cpu").manual_seed(1)]).images[0]

        def easel_call():
            return easel.generate(PROMPT, model=str(folder), size=f"{side}x{side}", steps=steps, guidance=guidance,
                                  seed=1, save=False)[0].image

        timings = {"diffusers": [], "easel": []}
        images = {}
        for name, call in (("diffusers", diffusers_call), ("easel", easel_call)):
            images[name] = call()  # warm: loads, first-call kernels
        for _ in range(args.rounds):
            for name, call in (("diffusers", diffusers_call), ("easel", easel_call)):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                call()
                if cuda:
                    torch.cuda.synchronize()
                timings[name].append(time.perf_counter() - t)
        same = bool(np.array_equal(np.asarray(images["diffusers"]), np.asarray(images["easel"])))
        row = {"family": family, "steps": steps, "guidance": guidance, "same_pixels": same,
               "diffusers_s": round(statistics.median(timings["diffusers"]), 3),
               "easel_s": round(statistics.median(timings["easel"]), 3)}
        row["easel_over_diffusers"] = round(row["easel_s"] / row["diffusers_s"], 3)
        report["families"].append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        bare = None  # noqa: F841 - its memory goes before the next family's
        easel.api.reset_default_runner()
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
