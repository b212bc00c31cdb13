"""Train the autoencoder of the built-in model's version 2: 256x256 pictures of the shapes world to 32x32 latents
of 4 channels and back, as Stable Diffusion's VAE does at 8x, so that the denoiser keeps working at 32x32.

    python training/train_autoencoder.py --steps 4000 --out training/runs/vae     # resumes where OUT left off

diffusers' `AutoencoderKL`, convolutional throughout (no attention in its middle block), so that it trains on
random crops of the pictures and runs on whole ones. Its decoder is small, because it runs once for every image
Easel makes (the spec's 0.5 s an image includes it). The loss is L1 on the pixels plus a little KL; the edge-width
measure of `shapes.edge_width` is logged on whole pictures at every checkpoint.

`--decoder-from FOLDER` trains only that autoencoder's decoder, on its encoder's latents (the mode of the posterior,
as the denoiser's bank holds them), so that a denoiser trained on those latents stays valid; `--edge-weight` weighs
the loss near edges, where a soft decoder costs sharpness but little L1; `--corner-weight` near corners, where a
small decoder rounds a triangle's tips (`corner_band`).

Resumable: every `--save-every` steps the weights, their EMA, the optimiser and the random states go to
`OUT/state.pt` (written whole, then renamed), and `OUT/vae` holds the EMA autoencoder in diffusers' layout. Run
the same command again to go on from there; everything is scheduled by step, not by wall clock.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

SIDE = 256  # the pictures' side; the latents are SIDE / 8


def build_vae() -> AutoencoderKL:
    """One normalisation group per layer: with a group per channel (as few channels as these), a flat patch of
    colour normalises to zero and its colour is lost."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 32), mid_block_add_attention=False, sample_size=SIDE,
    )


def pictures(rng: random.Random, count: int, p_two: float = 0.3) -> torch.Tensor:
    """Random scenes of the shapes world at SIDE pixels, in -1..1 (held-out pairs included: the autoencoder learns
    pictures, not words)."""
    images = []
    for _ in range(count):
        two = rng.random() < p_two
        scene = shapes.sample_scene(rng, held_out=not two and rng.random() < 0.1, two_shapes=two)
        images.append(shapes.render(scene, rng, resolution=SIDE, supersample=2))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def crops(batch: torch.Tensor, size: int, rng: random.Random) -> torch.Tensor:
    """One random crop per picture, at multiples of 8 so that the latent grid stays aligned."""
    out = []
    for image in batch:
        y, x = (rng.randrange(0, (SIDE - size) // 8 + 1) * 8 for _ in range(2))
        out.append(image[:, y:y + size, x:x + size])
    return torch.stack(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def evaluate(vae: AutoencoderKL, count: int, seed: int) -> dict[str, float]:
    """Reconstruction of whole pictures: mean absolute error (0..255) and the spec's edge width."""
    rng = random.Random(seed)
    batch = pictures(rng, count)
    with torch.no_grad():
        out = vae.decode(vae.encode(batch).latent_dist.mode()).sample
    made, truth = to_uint8(out), to_uint8(batch)
    widths = [shapes.edge_width(m) for m in made]
    return {"mae": round(float(np.abs(made.astype(int) - truth.astype(int)).mean()), 3),
            "edge_width": round(float(np.mean([w for w in widths if w is not None])), 3),
            "edge_width_truth": round(float(np.mean([w for w in (shapes.edge_width(t) for t in truth)
                                                     if w is not None])), 3)}


def edge_band(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 1 within 2 pixels of a colour change in the pictures `x`, 0 in flat areas."""
    step_y = (x[:, :, 1:] - x[:, :, :-1]).abs().amax(1, keepdim=True) > 0.05
    step_x = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().amax(1, keepdim=True) > 0.05
    change = F.pad(step_y.float(), (0, 0, 0, 1)) + F.pad(step_x.float(), (0, 1, 0, 0))
    return (F.max_pool2d(change, 5, stride=1, padding=2) > 0).float()


def corner_band(x: torch.Tensor, radius: int = 6) -> torch.Tensor:
    """(N, 1, H, W): 1 within 3 pixels of a corner in the pictures `x` (-1..1): the parts of each colour's region
    that a disc of `radius` cannot reach inside it (a morphological opening takes them off), which are a
    triangle's tips and a square's corners, not straight sides or the outline of a circle wider than the disc.
    Colours covering under 1.5% of a picture (an antialiased rim's blends) are passed over."""
    import cv2

    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    out = np.zeros((x.shape[0], *x.shape[2:]), dtype=np.float32)
    for i, picture in enumerate(to_uint8(x)):
        labels = shapes.nearest_colour(picture)
        tips = np.zeros(labels.shape, dtype=np.uint8)
        colours, counts = np.unique(labels, return_counts=True)
        for colour in colours[counts >= 0.015 * labels.size]:
            region = (labels == colour).astype(np.uint8)
            tips |= region & (1 - cv2.morphologyEx(region, cv2.MORPH_OPEN, disc))
        out[i] = cv2.dilate(tips, grow)
    return torch.from_numpy(out)[:, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=96, help="side of the training crops (a multiple of 8)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--edge-weight", type=float, default=0.0,
                    help="extra weight of the L1 loss within 2 pixels of an edge (flat areas weigh 1)")
    ap.add_argument("--corner-weight", type=float, default=0.0,
                    help="extra weight of the L1 loss within 3 pixels of a corner (a triangle's tips, a square's)")
    ap.add_argument("--two-shapes", type=float, default=0.3, help="share of two-shape pictures (smaller shapes)")
    ap.add_argument("--decoder-from", type=Path, default=None,
                    help="train only the decoder of this autoencoder: its encoder (its latents) stays as it is")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("training/runs/vae"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(args.decoder_from) if args.decoder_from else build_vae()
    trained = list(vae.parameters())
    if args.decoder_from:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
        trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    ema = copy.deepcopy(vae).eval()
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    rng, start = random.Random(args.seed), 0
    torch.manual_seed(args.seed)
    state_file = args.out / "state.pt"
    if state_file.exists():  # go on from the last save
        state = torch.load(state_file, weights_only=False)
        vae.load_state_dict(state["vae"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        print(f"resuming at step {start}", flush=True)
    print(f"autoencoder: {sum(p.numel() for p in vae.parameters()):,} parameters "
          f"(decoder {sum(p.numel() for p in vae.decoder.parameters()):,})", flush=True)
    log = open(args.out / "log.jsonl", "a")
    started = time.time()
    for step in range(start, args.steps):
        x = crops(pictures(rng, args.batch, args.two_shapes), args.crop, rng)
        if args.decoder_from:
            with torch.no_grad():
                posterior = vae.encode(x).latent_dist
            out = vae.decode(posterior.mode()).sample  # what the denoiser learns to make, from the bank
        else:
            posterior = vae.encode(x).latent_dist
            out = vae.decode(posterior.sample()).sample
        weight = torch.ones_like(x[:, :1])
        if args.edge_weight:
            weight = weight + args.edge_weight * edge_band(x)
        if args.corner_weight:
            weight = weight + args.corner_weight * corner_band(x)
        recon = ((out - x).abs() * weight).mean() / weight.mean()
        kl = posterior.kl().mean()
        loss = recon + args.kl * kl
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(vae.parameters()),
                                 1 - min(args.ema, (1 + step) / (10 + step)))
        if step % 25 == 0:
            rec = {"step": step, "l1": round(recon.item(), 5), "kl": round(kl.item(), 2), "lr": round(lr, 6),
                   "elapsed_s": round(time.time() - started, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            tmp = args.out / "state.tmp"
            torch.save({"vae": vae.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step + 1}, tmp)
            tmp.rename(state_file)
            ema.save_pretrained(args.out / "vae", safe_serialization=True)
            rec = {"step": step + 1, "eval": evaluate(ema, 32, seed=10_000),
                   "elapsed_s": round(time.time() - started, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
