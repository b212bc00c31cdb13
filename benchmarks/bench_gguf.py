"""A FULL-SIZE FLUX.1-dev transformer (11.9B parameters, random weights) as GGUF files, loaded through Easel on this
machine: its memory against the 23.8 GB of its bf16 weights, the load time, and seconds per denoising step.

Each file is written tensor by tensor (random Q4_0/Q8_0 blocks, the small tensors in float32, as ComfyUI-GGUF keeps
them), so that the model is never whole in memory. Its base is a pipeline of FLUX's widths with one-layer text
encoders (T5 at d_model 4096, CLIP at 768; no hub, tokenizers of the tests) and FLUX's full VAE, whose own memory is
measured apart. Each case runs in a process of its own: load through Easel's provider, then one image of `--steps`
steps at `--side` pixels; the seconds per step are between the step callbacks (no text encoding, no decode).

    python benchmarks/bench_gguf.py [--quants Q4_0,Q8_0] [--side 256] [--steps 2]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from _common import own_process, rss, run_case  # noqa: E402 - beside this file

# black-forest-labs/FLUX.1-dev's transformer/config.json
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
BF16_GB = 23.8  # the transformer's weights in bfloat16, as released
# weights of standard deviation about 0.02 (a trained model's scale): the per-block scale of each type's codes
SCALES = {"Q4_0": 0.02 / 4.6, "Q8_0": 0.02 / 74}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_gguf(path: Path, quant: str) -> int:
    """FLUX.1-dev's transformer in diffusers' key names as a `quant` GGUF file, one tensor at a time; its bytes."""
    import gguf
    import numpy as np
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        shapes = {k: tuple(v.shape) for k, v in FluxTransformer2DModel(**FLUX_DEV).state_dict().items()}
    qtype = gguf.GGMLQuantizationType[quant]
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch="flux")
    plan = []
    for name, shape in shapes.items():
        if len(shape) == 2 and shape[1] % block == 0:
            packed = (shape[0], shape[1] // block, block_bytes)
            writer.add_tensor_info(name, (shape[0], packed[1] * block_bytes), np.dtype(np.uint8),
                                   int(np.prod(packed)), raw_dtype=qtype)
        else:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        plan.append((name, shape, len(shape) == 2 and shape[1] % block == 0))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    scale = np.frombuffer(np.float16(SCALES[quant]).tobytes(), dtype=np.uint8)
    for name, shape, quantized in plan:
        if quantized:  # random codes, and the scale in each block's first two bytes
            data = rng.integers(0, 256, size=(shape[0], shape[1] // block, block_bytes), dtype=np.uint8)
            data[..., :2] = scale
            data = data.reshape(shape[0], -1)
        elif "norm" in name and len(shape) == 1:
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        writer.write_tensor_data(data)
    writer.close()
    return path.stat().st_size


def write_base(folder: Path) -> None:
    """A FLUX pipeline folder of FLUX's widths: one-layer text encoders, FLUX's full VAE, the transformer's
    configuration only (its weights come from the GGUF file)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from tiny_pipelines import clip_tokenizer, t5_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=1, vocab_size=100, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=1, projection_dim=768))
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=64,
                                 decoder_start_token_id=0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                        use_quant_conv=False, use_post_quant_conv=False)
    small = dict(FLUX_DEV, num_layers=1, num_single_layers=1)
    FluxPipeline(transformer=FluxTransformer2DModel(**small), scheduler=FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), vae=vae, text_encoder=clip,
        tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer()).save_pretrained(folder)
    for weights in (folder / "transformer").glob("*.safetensors*"):
        weights.unlink()
    config = json.loads((folder / "transformer" / "config.json").read_text())
    config.update(num_layers=FLUX_DEV["num_layers"], num_single_layers=FLUX_DEV["num_single_layers"])
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))


def case(home: Path, model: str, side: int, steps: int) -> dict:
    """One GGUF file through Easel, in this process: load, then one image; or (model "base") the base alone."""
    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    started = rss()
    if model == "base":  # the text encoders and the VAE, which the GGUF cases include
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(home / "base", transformer=None)
        with torch.no_grad():
            pipe.encode_prompt("a lighthouse", prompt_2=None)
            pipe.vae.decode(torch.zeros(1, 16, side // 8, side // 8))
        return {"model": "base", "rss_gb": round(rss() / 1e9, 3), "peak_rss_gb": round(peak_rss() / 1e9, 3),
                "rss_before_gb": round(started / 1e9, 3)}
    import easel
    from easel.api import default_runner

    os.environ["EASEL_HOME"] = str(home)
    runner = default_runner()
    base = str(home / "base")
    checked = runner.check(easel.ImageRequest(prompt="a lighthouse", model=model, extra={"base": base}))
    provider = runner.registry.get("diffusers")
    t = time.perf_counter()
    loaded = provider.load(checked.spec, provider.loader.options(checked.spec, {}))
    load_s = time.perf_counter() - t
    transformer = loaded.pipe.transformer
    held = sum(p.numel() * p.element_size() for p in transformer.parameters())
    after_load = rss()
    times = []
    made = easel.generate("a lighthouse", model=model, base=base, size=f"{side}x{side}", steps=steps, seed=1,
                          save=False, on_step=lambda *_: times.append(time.perf_counter()))
    return {"model": model, "quant": made[0].parameters["gguf"]["quant"], "load_s": round(load_s, 1),
            "transformer_params_gb": round(held / 1e9, 3), "rss_after_load_gb": round(after_load / 1e9, 3),
            "rss_after_image_gb": round(rss() / 1e9, 3), "peak_rss_gb": round(peak_rss() / 1e9, 3),
            "s_per_step": round((times[-1] - times[0]) / (len(times) - 1), 1), "image_s": round(time.perf_counter()
                                                                                                 - t - load_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quants", default="Q4_0,Q8_0")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    if (args := own_process(parser, case)) is None:
        return
    home = Path(tempfile.mkdtemp(prefix="easel-bench-gguf-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # the GGUF files: 7-13 GB each
    (home / "models").mkdir()
    write_base(home / "base")
    rows = []
    for quant in ["base", *args.quants.split(",")]:
        if quant != "base":
            t = time.perf_counter()
            size = write_gguf(home / "models" / f"flux-dev-{quant}.gguf", quant)
            print(json.dumps({"wrote": quant, "gb": round(size / 1e9, 3), "s": round(time.perf_counter() - t)}),
                  flush=True)
        model = "base" if quant == "base" else f"flux-dev-{quant}"
        done = run_case(__file__, model, home, args.side, args.steps)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        row = json.loads(done.stdout.splitlines()[-1])
        if quant != "base":
            row.update(file_gb=round(size / 1e9, 3), peak_rss_over_bf16_weights=round(row["peak_rss_gb"] / BF16_GB, 3),
                       peak_rss_over_base_gb=round(row["peak_rss_gb"] - rows[0]["peak_rss_gb"], 3))
            (home / "models" / f"flux-dev-{quant}.gguf").unlink()  # the disk for the next one
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"model": "FLUX.1-dev transformer, full size, random weights", "bf16_weights_gb": BF16_GB,
              "side": args.side, "steps": args.steps, "threads": os.cpu_count(), "cases": rows}
    (HERE / "results" / "gguf-flux-full.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
