"""Cutting the work on a CPU: full-size SD 1.5 (512x512, fp32, random weights from its configs) through bare
diffusers and through Easel, plain and with each option that does less, round by round in one process:

  1-step images (turbo-style, no guidance): bare diffusers / Easel plain / Easel `decoder=tiny` (TAESD's
  architecture) -- the decode is most of a 1-step image on a CPU -- alone, with token downsampling
  (`tokens=todo`, `tokens=todo:2:2`), with int8 compute (`quantize=int8_dynamic`) and with both; `--compile`: and
  with `compile=default` (minutes to compile); `--bf16`: Easel plain and `decoder=tiny` with EASEL_DTYPE=bfloat16
  (a CPU with AVX512-BF16 or AMX computes it natively);
  20 guided steps: bare diffusers / Easel plain / Easel `cache=deepcache:3` / with `tokens=todo` too;
  `--control`: those cases' guided steps with a full-size ControlNet (SD 1.5's, from its UNet) beside the pipeline,
  bare diffusers' ControlNet pipeline against Easel's `control` (no other case).

Each case's seconds per image, per step and for the decode (from the step callbacks' clock), and the process's
peak RSS; ratios against bare diffusers and Easel plain. Timing does not depend on the weights' values.

    python benchmarks/bench_cpu.py [--rounds 2] [--steps 20]     # writes results/cpu-cut-the-work.json
    python benchmarks/bench_cpu.py --one-step --rounds 3 --out benchmarks/results/cpu-one-step.json
    python benchmarks/bench_cpu.py --control --steps 4 --rounds 3 --out benchmarks/results/cpu-controlnet.json
    python benchmarks/bench_cpu.py --tiny                       # the harness on tiny pipelines (no speed figure)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]
from bench_gpu import full_size, install_tiny_decoder  # noqa: E402 (it also gives the run a hub cache of its own)

PROMPT = "a lighthouse on a cliff at dawn, oil painting"


def build(home: Path, tiny: bool, control: bool) -> Path:
    """The pipeline as a folder, and a tiny autoencoder of TAESD's architecture in the hub cache; with `control`, a
    ControlNet made from its UNet in Easel's controlnets folder (as `edges`)."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from tiny_pipelines import save_tiny, save_tiny_controlnet

    folder = home / "sd15"
    if tiny:
        save_tiny("sd15", folder)
    else:
        full_size("sd15").save_pretrained(folder, safe_serialization=True)
    install_tiny_decoder("sd15", tiny, home)
    if control and tiny:
        save_tiny_controlnet("sd15", home / "easel" / "controlnets" / "edges", seed=1)
    elif control:
        ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(folder / "unet")).save_pretrained(
            home / "easel" / "controlnets" / "edges")
    return folder


def edges(side: int):
    """A control map: white outlines on black."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (side, side), "black")
    ImageDraw.Draw(im).rectangle([side // 4, side // 4, 3 * side // 4, 3 * side // 4], outline="white", width=4)
    return im


class Clock:
    """Step callbacks' times: per-step seconds, and the decode's (from the last step to the end)."""

    def __init__(self):
        self.marks: list[float] = []

    def diffusers(self, pipe, i, t, tensors):
        self.marks.append(time.perf_counter())
        return {}

    def easel(self, *_):
        self.marks.append(time.perf_counter())


def run(call, clock: Clock) -> dict:
    clock.marks.clear()
    start = time.perf_counter()
    call()
    end = time.perf_counter()
    steps = [b - a for a, b in zip(clock.marks, clock.marks[1:])]
    return {"s": end - start, "step_s": statistics.median(steps) if steps else None,
            "decode_s": end - clock.marks[-1] if clock.marks else None}


def ratios(c: dict[str, dict], n: int) -> dict[str, float]:
    """Each ratio whose two cases ran: of their seconds per image, or (the ControlNet's) per step."""
    tiny = "1-step: Easel decoder=tiny"
    pairs = {
        "1-step bare / Easel decoder=tiny (goal >= 4)": ("1-step: bare diffusers", tiny, "s"),
        **{f"1-step bare / Easel decoder=tiny {option}": ("1-step: bare diffusers", f"{tiny} {option}", "s")
           for option in ("tokens=todo", "tokens=todo:2:2", "quantize=int8_dynamic",
                          "quantize=int8_dynamic tokens=todo", "compile=default", "bfloat16")},
        "1-step Easel / bare (goal <= 1.02)": ("1-step: Easel", "1-step: bare diffusers", "s"),
        f"{n} steps Easel / Easel cache=deepcache:3 (goal >= 1.7)": (
            f"{n} guided steps: Easel", f"{n} guided steps: Easel cache=deepcache:3", "s"),
        f"{n} steps Easel / Easel cache=deepcache:3 tokens=todo": (
            f"{n} guided steps: Easel", f"{n} guided steps: Easel cache=deepcache:3 tokens=todo", "s"),
        f"{n} steps Easel / bare (goal <= 1.02)": (f"{n} guided steps: Easel", f"{n} guided steps: bare diffusers",
                                                   "s"),
        **{f"{n} steps with a ControlNet Easel / bare, {what}": (
            f"{n} guided steps with a ControlNet: Easel", f"{n} guided steps with a ControlNet: bare diffusers", key)
           for what, key in (("per image", "s"), ("per step", "step_s"))}}
    return {name: round(c[a][key] / c[b][key], 3) for name, (a, b, key) in pairs.items() if a in c and b in c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--one-step", action="store_true", help="the 1-step cases only")
    parser.add_argument("--compile", action="store_true", help="a 1-step case with compile=default too")
    parser.add_argument("--bf16", action="store_true", help="1-step cases with EASEL_DTYPE=bfloat16 too")
    parser.add_argument("--control", action="store_true", help="only the guided steps with a ControlNet")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import resource

    import torch
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline, \
        StableDiffusionPipeline

    import easel
    from easel.api import default_runner, reset_default_runner, use_runner
    from easel.config import Settings
    from easel.engine.runner import Runner

    home = Path(tempfile.mkdtemp(prefix="easel-bench-cpu-"))
    os.environ["EASEL_HOME"] = str(home / "easel")
    reset_default_runner()
    side = 64 if args.tiny else 512
    folder = build(home, args.tiny, args.control)
    bare = StableDiffusionPipeline.from_pretrained(folder)
    bare.set_progress_bar_config(disable=True)
    clock = Clock()
    edge_map = edges(side)
    bare_control = StableDiffusionControlNetPipeline(
        **bare.components, controlnet=ControlNetModel.from_pretrained(home / "easel" / "controlnets" / "edges")
    ) if args.control else None
    if bare_control is not None:
        bare_control.set_progress_bar_config(disable=True)

    def diffusers_image(steps: int, guidance: float, control: bool = False):
        pipe, extra = (bare_control, {"image": edge_map}) if control else (bare, {})
        pipe.scheduler = EulerDiscreteScheduler.from_config(bare.scheduler.config)
        return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, width=side, height=side,
                    generator=torch.Generator().manual_seed(1), callback_on_step_end=clock.diffusers, **extra).images[0]

    def easel_image(steps: int, guidance: float, **options):
        return easel.generate(PROMPT, model=str(folder), size=f"{side}x{side}", steps=steps, guidance=guidance,
                              seed=1, scheduler="euler", save=False, on_step=clock.easel, **options)

    fp32 = default_runner()
    bf16 = Runner(Settings(home=home / "easel-bf16", dtype="bfloat16")) if args.bf16 else None

    def easel_bf16_image(**options):
        """A 1-step image through the same call as the other Easel cases, on a runner whose dtype is bfloat16."""
        use_runner(bf16)
        try:
            return easel_image(1, 0.0, **options)
        finally:
            use_runner(fp32)

    cases = {
        "1-step: bare diffusers": lambda: diffusers_image(1, 0.0),
        "1-step: Easel": lambda: easel_image(1, 0.0),
        "1-step: Easel decoder=tiny": lambda: easel_image(1, 0.0, decoder="tiny"),
        "1-step: Easel decoder=tiny tokens=todo": lambda: easel_image(1, 0.0, decoder="tiny", tokens="todo"),
        "1-step: Easel decoder=tiny tokens=todo:2:2": lambda: easel_image(1, 0.0, decoder="tiny", tokens="todo:2:2"),
        "1-step: Easel decoder=tiny quantize=int8_dynamic": lambda: easel_image(1, 0.0, decoder="tiny",
                                                                                quantize="int8_dynamic"),
        "1-step: Easel decoder=tiny quantize=int8_dynamic tokens=todo": lambda: easel_image(
            1, 0.0, decoder="tiny", quantize="int8_dynamic", tokens="todo"),
        "1-step: Easel decoder=tiny compile=default": lambda: easel_image(1, 0.0, decoder="tiny", compile="default"),
        "1-step: Easel bfloat16": lambda: easel_bf16_image(),
        "1-step: Easel decoder=tiny bfloat16": lambda: easel_bf16_image(decoder="tiny"),
        f"{args.steps} guided steps: bare diffusers": lambda: diffusers_image(args.steps, 7.5),
        f"{args.steps} guided steps: Easel": lambda: easel_image(args.steps, 7.5),
        f"{args.steps} guided steps: Easel cache=deepcache:3": lambda: easel_image(args.steps, 7.5,
                                                                                   cache="deepcache:3"),
        f"{args.steps} guided steps: Easel cache=deepcache:3 tokens=todo": lambda: easel_image(
            args.steps, 7.5, cache="deepcache:3", tokens="todo"),
        f"{args.steps} guided steps with a ControlNet: bare diffusers": lambda: diffusers_image(args.steps, 7.5, True),
        f"{args.steps} guided steps with a ControlNet: Easel": lambda: easel_image(
            args.steps, 7.5, control=[{"model": "edges", "image": edge_map}]),
    }
    if not args.compile:
        del cases["1-step: Easel decoder=tiny compile=default"]
    if not args.bf16:
        del cases["1-step: Easel bfloat16"], cases["1-step: Easel decoder=tiny bfloat16"]
    if args.one_step:
        cases = {name: call for name, call in cases.items() if name.startswith("1-step")}
    cases = {name: call for name, call in cases.items() if ("ControlNet" in name) == args.control}
    easel_image(1, 0.0)  # warm: loading, first-call allocations
    if args.control:
        cases[f"{args.steps} guided steps with a ControlNet: Easel"]()
        diffusers_image(1, 7.5, True)
    else:
        easel_image(1, 0.0, decoder="tiny")
        easel_image(1, 0.0, decoder="tiny", quantize="int8_dynamic")  # loads the quantized pipeline
    if args.compile:
        easel_image(1, 0.0, decoder="tiny", compile="default")  # compiles (minutes on 2 cores)
    if args.bf16:
        easel_bf16_image(decoder="tiny")
    diffusers_image(1, 0.0)
    timings: dict[str, list[dict]] = {name: [] for name in cases}
    out = args.out or HERE / "results" / ("cpu-cut-the-work-tiny.json" if args.tiny else "cpu-cut-the-work.json")
    report = {"what": __doc__.splitlines()[0], "model": "tiny SD 1.5" if args.tiny else
              "SD 1.5's full-size architecture from configs, fp32, random weights", "side": side,
              "torch_threads": torch.get_num_threads(), "rounds": args.rounds, "cases": {}}
    for round_ in range(args.rounds):
        for name, call in cases.items():
            timings[name].append(run(call, clock))
            row = timings[name][-1]
            print(json.dumps({"round": round_, "case": name, **{k: round(v, 3) if v else v for k, v in row.items()}}),
                  flush=True)
        for name, rows in timings.items():
            report["cases"][name] = {k: round(statistics.median(r[k] for r in rows), 3) if rows[0][k] is not None
                                     else None for k in rows[0]}
        report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
        report["ratios"] = ratios(report["cases"], args.steps)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))


if __name__ == "__main__":
    main()
