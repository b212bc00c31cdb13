"""Train Easel's built-in model from scratch on procedurally drawn shapes.

    python training/train_builtin.py --steps 3000 --out training/runs/main --export src/easel/builtin/model

Everything is seeded and scheduled by step, not by wall clock. Every `--eval-every` steps the EMA weights are
saved as a diffusers pipeline folder (`OUT/checkpoint`) and scored on a small set of prompts, so a run can be
stopped at any checkpoint and used; `--export` copies the final pipeline where Easel ships it.

Version 2 (`--vae FOLDER`, an autoencoder from `train_autoencoder.py`): the UNet denoises that autoencoder's 32x32
latents of 256x256 pictures. The pictures are drawn and encoded once into a bank (`OUT/bank.pt`, `--bank` scenes,
built in chunks and resumed where it stopped); batches draw scenes from it with fresh captions. With `--vae`, every
checkpoint also saves the whole training state (`OUT/state.pt`: weights, EMA, optimiser, random states), and the same
command resumes from it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import shapes  # noqa: E402
from easel.builtin.pipeline import RegionAttnProcessor, ShapesPipeline, layout_maps, region_kwargs  # noqa: E402

TRAIN_TIMESTEPS = 1000


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(shapes.VOCABULARY)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z<>\s]"), " ")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=shapes.MAX_TOKENS,
    )


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=shapes.MAX_TOKENS, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        projection_dim=64,
    )
    return CLIPTextModel(config)


LAYOUT_CHANNELS = 2


def build_unet(layout_channels: int = LAYOUT_CHANNELS, channels: int = 3) -> UNet2DConditionModel:
    """`channels`: what it denoises, 3 (pixels, version 1) or the autoencoder's latent channels (version 2)."""
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=channels + layout_channels,
        out_channels=channels,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=2,  # diffusers reads this as the number of heads: 2 heads of 32 run 1.6x faster than 8 of 8
        norm_num_groups=8,
        # the caption also reaches every ResNet through the time embedding (attention-pooled), which gives
        # layout words such as "left" or "top" a global path that cross-attention alone did not learn
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def build_schedulers() -> tuple[DDPMScheduler, DPMSolverMultistepScheduler]:
    common = dict(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                  prediction_type="v_prediction")
    return DDPMScheduler(**common), DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++")


def init_from(folder: Path, layout_channels: int, channels: int = 3) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Start from a saved pipeline's weights; input channels it lacks (layout) start at zero. From pixels (version
    1) to latents (version 2), the input and output convolutions start afresh, but for the layout channels' input
    weights; everything between (text, attention, ResNets) carries over."""
    old_unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    old_channels = old_unet.config.out_channels
    unet = build_unet(layout_channels, channels)
    state = old_unet.state_dict()
    weight = state.pop("conv_in.weight")
    fresh = ["conv_in.weight"]
    if old_channels != channels:
        fresh += ["conv_out.weight", "conv_out.bias"]
        for key in fresh[1:]:
            del state[key]
    missing, unexpected = unet.load_state_dict(state, strict=False)
    assert sorted(missing) == sorted(fresh) and not unexpected, (missing, unexpected)
    with torch.no_grad():
        if old_channels == channels:
            unet.conv_in.weight.zero_()
            unet.conv_in.weight[:, : weight.shape[1]] = weight
        else:  # the layout channels' weights, after the new latent channels'
            old_layout = weight.shape[1] - old_channels
            unet.conv_in.weight[:, channels:channels + old_layout] = weight[:, old_channels:]
    return unet, CLIPTextModel.from_pretrained(folder / "text_encoder")


def make_batch(rng: random.Random, size: int, p_two: float, bank: dict | None = None, p_no_background: float = 0.0
               ) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    """Captions and what the UNet learns to make: pictures drawn now (version 1), or latents from the bank; and,
    from a bank with bent pictures (`--corrective`), the same scenes' bent latents (else None)."""
    p_background = 1.0 - p_no_background
    if bank is not None:
        picks = [rng.randrange(len(bank["scenes"])) for _ in range(size)]
        texts = [shapes.caption(bank["scenes"][i], rng, p_background) for i in picks]
        bent = bank["bent"][picks].float() if "bent" in bank else None
        return texts, bank["latents"][picks].float(), bent
    texts, images = [], []
    for _ in range(size):
        scene = shapes.sample_scene(rng, two_shapes=rng.random() < p_two)
        texts.append(shapes.caption(scene, rng, p_background))
        images.append(shapes.render(scene, rng))
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return texts, pixels, None


def bend(pictures: torch.Tensor, rng: random.Random, strays: float = 0.0, bleed: float = 0.0) -> torch.Tensor:
    """Pictures (N, 3, H, W) bent by a smooth random displacement, each its own: offsets on a 4x4 or 8x8 grid, up to
    1-6% of the side, upsampled and applied with the nearest colour, so that a circle turns lumpy and a square's
    sides bow or notch, as the sampler's mistakes look (`--corrective`). With `strays`, each of the sampler's other
    mistakes is made too, with that chance each (`mistake`); with `bleed`, a shape takes another's colour in part,
    with that chance."""
    h, w = pictures.shape[-2:]
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    identity = torch.stack([xs, ys], -1)[None]
    out = []
    for picture in pictures:
        cells, amplitude = rng.choice((4, 8)), rng.uniform(0.01, 0.06)
        offsets = (torch.rand(1, 2, cells, cells, generator=gen) * 2 - 1) * amplitude * 2  # the grid spans 2
        field = F.interpolate(offsets, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        bent = F.grid_sample(picture[None], identity + field, mode="nearest", padding_mode="border",
                             align_corners=True)[0]
        for kind in MISTAKES:
            if rng.random() < strays:
                mistake(bent, kind, rng)
        if bleed and rng.random() < bleed:
            mistake(bent, "bleed", rng)
        out.append(bent)
    return torch.stack(out)


MISTAKES = ("twice", "stray", "hole", "blunt")


def mistake(picture: torch.Tensor, kind: str, rng: random.Random) -> None:
    """One of the sampler's mistakes made in a picture (3, H, W) in place, on one of its shapes (chosen by a pixel of
    its colour): `twice`, the shape drawn again beside itself (its side and a little more away, across or along);
    `stray`, a blob of its colour somewhere; `hole`, a blob of the background's colour in it (a notch, a shape split
    or drawn hollow); `blunt`, its corners cut off (an opening of 5-11 pixels: a triangle's tips flat or round);
    `bleed`, a patch of it (or a stretch of its rim) in the other shape's colour, or in another colour where it is
    alone (a black patch in a blue square beside a black one, an orange circle ringed in yellow)."""
    h, w = picture.shape[-2:]
    background = picture[:, 0, 0].clone()
    on_background = (picture - background[:, None, None]).abs().sum(0) < 0.3
    shape_pixels = (~on_background).nonzero()
    if not len(shape_pixels):
        return
    y, x = shape_pixels[rng.randrange(len(shape_pixels))].tolist()
    colour = picture[:, y, x].clone()
    own = (picture - colour[:, None, None]).abs().sum(0) < 0.3
    if kind == "twice":
        rows, cols = own.any(1).nonzero(), own.any(0).nonzero()
        height, width = int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1
        shift = [0, 0]
        axis = rng.randrange(2)
        shift[axis] = rng.choice((-1, 1)) * int((height, width)[axis] * rng.uniform(1.05, 1.4))
        dy, dx = shift
        if abs(dy) >= h or abs(dx) >= w:  # a shape too large to be drawn again beside itself
            return
        moved = torch.zeros_like(own)
        moved[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
            own[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
        blob = moved & on_background
    elif kind == "bleed":
        blob, colour = bleed_patch(picture, own, on_background, background, colour, rng)
    elif kind == "blunt":
        k = rng.choice((5, 7, 9, 11))
        mask = own[None, None].float()
        opened = F.max_pool2d(-F.max_pool2d(-mask, k, 1, k // 2), k, 1, k // 2)[0, 0] > 0.5
        blob, colour = own & ~opened, background
    else:
        if kind == "stray":
            y, x = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        else:
            colour = background
        ry, rx = rng.uniform(0.015, 0.06) * h, rng.uniform(0.015, 0.06) * w
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        blob = (yy - y) ** 2 / ry**2 + (xx - x) ** 2 / rx**2 <= 1
    picture[:, blob] = colour[:, None]


def bleed_patch(picture: torch.Tensor, own: torch.Tensor, on_background: torch.Tensor, background: torch.Tensor,
                colour: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """`mistake`'s `bleed`: the pixels of a shape (`own`, of `colour`) that take another colour, and that colour: the
    other shape's where the picture has two, else a palette colour neither the shape's nor the background's; the
    pixels a blob about one of the shape's pixels (3-10% of the side), or its rim (3-7 pixels wide) near one."""
    h, w = own.shape
    palette = torch.tensor(list(shapes.PALETTE.values()), dtype=picture.dtype) / 127.5 - 1
    flat = (picture[None] - palette[:, :, None, None]).abs().sum(1) < 0.3  # (colours, H, W), rims blended in none
    others = (flat.any(0) & ~on_background & ~own).nonzero()
    if len(others):
        oy, ox = others[rng.randrange(len(others))].tolist()
        other = picture[:, oy, ox].clone()
    else:
        other = rng.choice([c for c in palette if (c - colour).abs().sum() >= 0.3
                            and (c - background).abs().sum() >= 0.3])
    pixels = own.nonzero()
    y, x = pixels[rng.randrange(len(pixels))].tolist()
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if rng.random() < 0.5:
        r = rng.uniform(0.03, 0.1) * h
        return own & ((yy - y) ** 2 + (xx - x) ** 2 <= r**2), other
    k = rng.choice((3, 5, 7))
    inner = -F.max_pool2d(-own[None, None].float(), 2 * k + 1, 1, k)[0, 0] > 0.5
    r = rng.uniform(0.1, 0.4) * h
    return own & ~inner & ((yy - y) ** 2 + (xx - x) ** 2 <= r**2), other


def latent_bank(vae: AutoencoderKL, count: int, p_two: float, seed: int, path: Path, chunk: int = 500,
                bent: bool = False, strays: float = 0.0, across: float = 1.0, bleed: float = 0.0,
                margin: float = 0.0) -> dict:
    """`count` scenes (held-out pairs never among them) drawn at 256 pixels and encoded by the autoencoder (the mode
    of its posterior, unscaled), in chunks saved as they are made, so that an interrupted bank resumes; with `bent`,
    each picture bent too (`bend`, with `strays` and `bleed`) and encoded beside it; `across` and `margin` as
    `shapes.render` takes them."""
    from train_autoencoder import SIDE

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([vae.encode(part).latent_dist.mode() for part in pixels.split(50)]).half()

    bank = torch.load(path, weights_only=False) if path.exists() else {"scenes": [], "latents": [], "rng": None,
                                                                       **({"bent": []} if bent else {})}
    rng = random.Random(seed)
    if bank["rng"] is not None:
        rng.setstate(bank["rng"])
    while len(bank["scenes"]) < count:
        scenes = [shapes.sample_scene(rng, two_shapes=rng.random() < p_two)
                  for _ in range(min(chunk, count - len(bank["scenes"])))]
        pictures = np.stack([shapes.render(s, rng, resolution=SIDE, supersample=2, across=across, margin=margin)
                             for s in scenes])
        pixels = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1
        bank["scenes"] += scenes
        bank["latents"].append(encode(pixels))
        if bent:
            bank["bent"].append(encode(bend(pixels, rng, strays, bleed)))
        bank["rng"] = rng.getstate()
        torch.save(bank, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        print(json.dumps({"bank": len(bank["scenes"]), "of": count}), flush=True)
    return {key: torch.cat(value) if isinstance(value, list) and key != "scenes" else value
            for key, value in bank.items() if key != "rng"}


def sample_timesteps(n: int, gen: torch.Generator, high_share: float = 0.5) -> torch.Tensor:
    """`high_share` of them from the noisier half of the schedule, where the layout of the image is decided, the
    rest uniform (0.5, the default: three in four noisier than the middle); 0: uniform, where the quieter half,
    which draws a shape's outline, gets as many as the noisier."""
    u = torch.rand(n, generator=gen)
    high = torch.rand(n, generator=gen) < high_share
    frac = torch.where(high, 0.5 + 0.5 * u, u)
    return (frac * (TRAIN_TIMESTEPS - 1)).round().long()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def quick_eval(pipe: ShapesPipeline, n: int, seed: int, two_shapes: bool = False) -> dict[str, float]:
    """Scores on `n` single-shape prompts (half of them held-out pairs); with `two_shapes`, on `n` two-shape
    prompts too (keys `two_*`), the mean edge width (`edge_width`) and how often a caption without a background
    shows its shape (`unnamed_background_visible`, on n/2)."""
    rng = random.Random(seed)
    kinds = [False, True] if two_shapes else [False]
    totals: dict[str, list] = {}
    for two in kinds:
        scenes = [shapes.sample_scene(rng, held_out=not two and i % 2 == 0, two_shapes=two, p_size=1, p_position=1)
                  for i in range(n)]
        prompts = [shapes.caption(s, rng) for s in scenes]
        gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
        images = pipe(prompts, generator=gens, output_type="np").images
        for scene, img in zip(scenes, images):
            for key, ok in shapes.score(scene, img).items():
                totals.setdefault(("two_" if two else "") + key, []).append(ok)
            width = shapes.edge_width(img) if two_shapes else None
            if width is not None:
                totals.setdefault("edge_width", []).append(width)
    if two_shapes:  # version 2: a caption that leaves the background unnamed still shows its shape
        scenes = [shapes.sample_scene(rng) for _ in range(n // 2)]
        gens = [torch.Generator().manual_seed(seed + i) for i in range(len(scenes))]
        images = pipe([shapes.caption(s, rng, p_background=0.0) for s in scenes], generator=gens,
                      output_type="np").images
        totals["unnamed_background_visible"] = [shapes.read_image(img, 1).visible for img in images]
        totals.update(geometry_scores(pipe, n, seed))
    return {k: round(float(np.mean(v)), 3) for k, v in totals.items()}


def geometry_scores(pipe: ShapesPipeline, n: int, seed: int) -> dict[str, list[float]]:
    """Version 3's geometry on `n` single-shape prompts of held-out and seen pairs, every kind equally: the median
    circle's outline spread (`circle_spread`), the median square's fill of its box (`square_fill`), triangles with
    three corners (`triangle_3`), shapes in one piece (`one_piece`)."""
    rng = random.Random(seed + 1)
    scenes = []
    while len(scenes) < n:
        scene = shapes.sample_scene(rng, held_out=len(scenes) % 2 == 0, p_size=1, p_position=1)
        if scene.shapes[0].kind == shapes.SHAPES[len(scenes) % 3]:
            scenes.append(scene)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    images = pipe([shapes.caption(s, rng) for s in scenes], generator=gens, output_type="np").images
    found = {kind: [] for kind in shapes.SHAPES}
    for scene, img in zip(scenes, images):
        found[scene.shapes[0].kind].append(shapes.geometry(img, scene.shapes[0].colour))
    return {key: [value] for key, value in shapes.geometry_summary(found).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--two-shapes", type=float, default=0.2, help="fraction of two-shape scenes")
    ap.add_argument("--no-background", type=float, default=0.0,
                    help="fraction of captions that leave the background unnamed")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("training/runs/main"))
    ap.add_argument("--export", type=Path, default=None, help="copy the final pipeline folder here")
    ap.add_argument("--layout-channels", type=int, default=LAYOUT_CHANNELS,
                    help="input channels for the caption's layout words (0: text path only)")
    ap.add_argument("--init-from", type=Path, default=None, help="start from this pipeline folder's weights")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (schedule unchanged)")
    ap.add_argument("--vae", type=Path, default=None, help="version 2: denoise this autoencoder's latents")
    ap.add_argument("--bank", type=int, default=40_000, help="version 2: scenes drawn and encoded for training")
    ap.add_argument("--high-noise", type=float, default=0.5,
                    help="share of timesteps drawn from the noisier half (the rest uniform; 0: all uniform)")
    ap.add_argument("--guidance-interval", type=float, default=1.0,
                    help="share of a call's steps, the noisiest first, that the saved model guides (version 3: 0.5)")
    ap.add_argument("--corrective", type=float, default=0.0,
                    help="share of samples (from t >= 250) noised from a bent picture of their scene and taught to "
                         "predict the true one (a bank of bent pairs, OUT/bank.pt)")
    ap.add_argument("--strays", type=float, default=0.0,
                    help="with --corrective: each bent picture's chance of each of the sampler's other mistakes (a "
                         "shape drawn twice, a stray blob, a hole, blunt corners)")
    ap.add_argument("--bleed", type=float, default=0.0,
                    help="with --corrective: each bent picture's chance that a shape takes another colour in part (the "
                         "other shape's, a patch or a stretch of rim)")
    ap.add_argument("--across", type=float, default=1.0,
                    help="two shapes' centres across their relation's axis: within this share of the room about the "
                         "middle (1: anywhere they fit)")
    ap.add_argument("--margin", type=float, default=0.0,
                    help="one shape's edge at least this share of the side from the picture's (0: a large shape on "
                         "the left may touch it)")
    ap.add_argument("--region-attention", action="store_true",
                    help="each layout region's pixels attend to their own shape's words (two-shape captions)")
    args = ap.parse_args()

    if args.region_attention and args.layout_channels < 2:
        ap.error("--region-attention needs the two layout channels")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    vae, bank = None, None
    if args.vae:
        vae = AutoencoderKL.from_pretrained(args.vae).eval()
        bank = latent_bank(vae, args.bank, args.two_shapes, args.seed, args.out / "bank.pt",
                           bent=args.corrective > 0, strays=args.strays, across=args.across, bleed=args.bleed,
                           margin=args.margin)
        # latents of unit variance for the noise schedule, as Stable Diffusion's 0.18215 makes them (an
        # autoencoder from a model folder keeps the factor its denoiser was trained with)
        if vae.config.scaling_factor == 0.18215:  # diffusers' default: a fresh autoencoder's
            vae.register_to_config(scaling_factor=round(1.0 / bank["latents"].float().std().item(), 5))
        for key in {"latents", "bent"} & bank.keys():
            bank[key] = bank[key] * vae.config.scaling_factor
    channels = vae.config.latent_channels if vae is not None else 3
    if args.init_from:
        unet, text_encoder = init_from(args.init_from, args.layout_channels, channels)
    else:
        text_encoder = build_text_encoder(len(shapes.VOCABULARY))
        unet = build_unet(args.layout_channels, channels)
    if args.region_attention:
        unet.set_attn_processor(RegionAttnProcessor())
    train_sched, sample_sched = build_schedulers()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    n_params = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in text_encoder.parameters())
    print(f"unet {n_params[0]:,} params, text encoder {n_params[1]:,} params", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    start, state_file = 0, args.out / "state.pt"
    if vae is not None and state_file.exists():  # go on from the last checkpoint
        state = torch.load(state_file, weights_only=False)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text"),
                            (opt, "opt")):
            module.load_state_dict(state[key])
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        start = state["step"]
        print(f"resuming at step {start}", flush=True)
    log = open(args.out / "log.jsonl", "a")
    started = time.time()

    for step in range(start, args.steps):
        texts, x0, bent = make_batch(rng, args.batch, args.two_shapes, bank, args.no_background)
        texts = ["" if rng.random() < args.caption_dropout else t for t in texts]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        t = sample_timesteps(args.batch, gen, args.high_noise)
        noise = torch.randn(x0.shape, generator=gen)
        xt = train_sched.add_noise(x0, noise, t)
        target = train_sched.get_velocity(x0, noise, t)
        if bent is not None:  # noised from the bent picture, the velocity that leads back to the true one
            fix = (torch.rand(args.batch, generator=gen) < args.corrective) & (t >= 250)
            alpha = train_sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
            sigma = (1 - train_sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
            xt_bent = train_sched.add_noise(bent, noise, t)
            xt = torch.where(fix.view(-1, 1, 1, 1), xt_bent, xt)
            target = torch.where(fix.view(-1, 1, 1, 1), (alpha * xt_bent - x0) / sigma, target)
        if args.layout_channels:
            xt = torch.cat([xt, layout_maps(texts, xt.shape[-1], args.layout_channels)], dim=1)
        regions = None
        if args.region_attention:
            regions = region_kwargs(texts, xt[:, -args.layout_channels:], ids.shape[1])
        pred = unet(xt, t, encoder_hidden_states=text_encoder(ids)[0], cross_attention_kwargs=regions).sample
        loss = F.mse_loss(pred, target)

        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)

        if step % 50 == 0:
            rec = {"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                   "elapsed_s": round(time.time() - started, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        last = step == args.steps - 1 or (args.stop_after is not None and step + 1 >= args.stop_after)
        if (step + 1) % args.eval_every == 0 or last:
            pipe = ShapesPipeline(unet=ema_unet, text_encoder=ema_text, tokenizer=tokenizer, scheduler=sample_sched,
                                  vae=vae, region_attention=args.region_attention,
                                  palette=shapes.PALETTE if vae is not None else None,
                                  guidance_interval=args.guidance_interval)
            pipe.set_progress_bar_config(disable=True)
            tmp = args.out / "checkpoint.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            pipe.save_pretrained(tmp, safe_serialization=True)
            shutil.rmtree(args.out / "checkpoint", ignore_errors=True)
            tmp.rename(args.out / "checkpoint")
            if vae is not None:
                torch.save({"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                            "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                            "opt": opt.state_dict(), "rng": rng.getstate(), "gen": gen.get_state(),
                            "step": step + 1}, state_file.with_suffix(".tmp"))
                state_file.with_suffix(".tmp").rename(state_file)
            scores = quick_eval(pipe, 48, seed=10_000, two_shapes=vae is not None)
            rec = {"step": step + 1, "eval": scores, "elapsed_s": round(time.time() - started, 1)}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if last:
            break

    if args.export:
        shutil.rmtree(args.export, ignore_errors=True)
        shutil.copytree(args.out / "checkpoint", args.export)
        print(f"exported to {args.export}", flush=True)


if __name__ == "__main__":
    main()
