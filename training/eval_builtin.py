"""Score the built-in model's prompt adherence with the pixel checker of `shapes.py`.

    python training/eval_builtin.py                      # the model shipped in src/easel/builtin/model
    python training/eval_builtin.py --model training/runs/main/checkpoint --out /tmp/eval

Writes OUT/report.json (accuracy per attribute on seen and held-out colour-shape pairs, and on two-shape
captions) and OUT/grid.png (samples with their prompts), and prints the table for training/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "src"))
import shapes  # noqa: E402
from easel.builtin.pipeline import ShapesPipeline  # noqa: E402

TARGETS = {
    "seen": {"background": 0.97, "shape_colour": 0.95, "position": 0.95, "shape_kind": 0.85},
    "held_out": {"background": 0.95, "shape_colour": 0.90, "position": 0.90, "shape_kind": 0.75},
}


def build_cases(n: int, seeds: int, seed: int) -> dict[str, list[tuple[shapes.Scene, str, int]]]:
    rng = random.Random(seed)
    cases: dict[str, list] = {"seen": [], "held_out": [], "two_shapes": []}
    for split in cases:
        count = n if split != "two_shapes" else max(1, n // 2)
        for i in range(count):
            scene = shapes.sample_scene(rng, held_out=split == "held_out", two_shapes=split == "two_shapes",
                                        p_size=1.0, p_position=1.0)
            prompt = shapes.caption(scene, rng)
            for s in range(seeds):
                cases[split].append((scene, prompt, 1000 * i + s))
    return cases


def run(pipe: ShapesPipeline, cases, steps: int, guidance: float, batch: int):
    images = []
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        gens = [torch.Generator().manual_seed(s) for _, _, s in chunk]
        out = pipe([p for _, p, _ in chunk], generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                   output_type="np")
        images.extend(out.images)
    return images


def grid(samples: list[tuple[np.ndarray, str]], path: Path, cols: int = 6, cell: int = 128) -> None:
    font = ImageFont.load_default()
    text_h = 44
    rows = (len(samples) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, prompt) in enumerate(samples):
        x, y = (i % cols) * cell, (i // cols) * (cell + text_h)
        canvas.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x, y))
        lines = textwrap.wrap(prompt, 24)[:4]
        draw.multiline_text((x + 2, y + cell + 1), "\n".join(lines), fill="black", font=font, spacing=0)
    canvas.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "src/easel/builtin/model")
    ap.add_argument("--prompts", type=int, default=200, help="prompts per split (two-shape: half as many)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="default: the catalog's default for builtin")
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", type=Path, default=ROOT / "training/eval")
    args = ap.parse_args()
    if args.steps is None:
        from easel.catalog import default_catalog

        args.steps = default_catalog().resolve("builtin").default_steps

    pipe = ShapesPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    cases = build_cases(args.prompts, args.seeds, args.seed)
    report: dict = {"model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
                    "steps": args.steps, "guidance": args.guidance, "prompts_per_split": args.prompts,
                    "seeds_per_prompt": args.seeds, "machine": f"{platform.machine()}, {torch.get_num_threads()} "
                    "threads", "splits": {}}
    samples = []
    started = time.time()
    for split, split_cases in cases.items():
        images = run(pipe, split_cases, args.steps, args.guidance, args.batch)
        totals: dict[str, list[bool]] = {}
        for (scene, _, _), img in zip(split_cases, images):
            for key, ok in shapes.score(scene, img).items():
                totals.setdefault(key, []).append(ok)
        scores = {k: round(float(np.mean(v)), 4) for k, v in totals.items()}
        entry = {"images": len(images), "accuracy": scores}
        if split in TARGETS:
            entry["targets"] = TARGETS[split]
            entry["meets_targets"] = all(scores[k] >= t for k, t in TARGETS[split].items())
        report["splits"][split] = entry
        samples += [(img, prompt) for (_, prompt, _), img in list(zip(split_cases, images))[:: args.seeds][:12]]
    report["elapsed_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    grid(samples, args.out / "grid.png")

    print("| attribute | seen pairs | held-out pairs | two shapes |")
    print("|---|---|---|---|")
    for key in ("background", "shape_colour", "position", "shape_kind"):
        row = [report["splits"][s]["accuracy"].get(key) for s in ("seen", "held_out", "two_shapes")]
        print(f"| {key} | " + " | ".join(f"{v:.1%}" for v in row) + " |")
    print(json.dumps({s: report["splits"][s].get("meets_targets") for s in TARGETS}))


if __name__ == "__main__":
    main()
