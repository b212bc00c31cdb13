"""Upscaling: by an image filter (Lanczos, bicubic, nearest), or by an upscaler model that a provider runs (SD's x4
upscaler, from EASEL_HOME/upscalers or the hub); the hires fix upscales with either between its two passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import PIL.Image

IMAGE_UPSCALERS = ("lanczos", "bicubic", "nearest")
# the hires fix's latent upscalers (A1111's "Latent ..."): the first pass's latents interpolated (torch's mode,
# antialiased or not), then denoised at the larger size; where a model's latents cannot be (FLUX's are packed), the
# picture is resized with the same interpolation instead, said in a warning
LATENT_UPSCALERS = {"latent": ("bilinear", False), "latent-antialiased": ("bilinear", True),
                    "latent-bicubic": ("bicubic", False), "latent-bicubic-antialiased": ("bicubic", True),
                    "latent-nearest": ("nearest", False), "latent-nearest-exact": ("nearest-exact", False)}
HIRES_UPSCALERS = (*IMAGE_UPSCALERS, *LATENT_UPSCALERS)  # what the hires fix takes besides upscaler models
# A1111's upscaler names -> Easel's
A1111_UPSCALERS = {"none": "lanczos", "lanczos": "lanczos", "nearest": "nearest", "bicubic": "bicubic",
                   "latent": "latent", "latent (antialiased)": "latent-antialiased",
                   "latent (bicubic)": "latent-bicubic", "latent (bicubic antialiased)": "latent-bicubic-antialiased",
                   "latent (nearest)": "latent-nearest", "latent (nearest-exact)": "latent-nearest-exact"}
A1111_HIRES_NAMES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)", "Lanczos", "Nearest")  # as A1111 spells them


def resize_latents(latents, size: tuple[int, int], upscaler: str):
    """Latents (channels, height, width) at `size` (width, height), as A1111's latent upscaler mode does."""
    import torch

    mode, antialias = LATENT_UPSCALERS[upscaler]
    with torch.no_grad():
        return torch.nn.functional.interpolate(latents[None].float(), size=(size[1], size[0]), mode=mode,
                                               antialias=antialias)[0].to(latents.dtype)


def picture_filter(upscaler: str) -> str:
    """The image filter that stands in for a latent upscaler where there are no latents to upscale (or, for the
    built-in model, where its latents are its pixels): the same interpolation."""
    return {"bilinear": "bilinear", "bicubic": "bicubic"}.get(LATENT_UPSCALERS[upscaler][0], "nearest")


def resize(image: PIL.Image.Image, size: tuple[int, int], upscaler: str) -> PIL.Image.Image:
    """`image` at `size` through an image filter (or bilinear interpolation, for a latent upscaler's stand-in)."""
    import PIL.Image

    kind = {"lanczos": PIL.Image.Resampling.LANCZOS, "bicubic": PIL.Image.Resampling.BICUBIC,
            "bilinear": PIL.Image.Resampling.BILINEAR, "nearest": PIL.Image.Resampling.NEAREST}[upscaler]
    return image.convert("RGB").resize(size, kind)


def tiled(image: PIL.Image.Image, factor: int, tile: int, overlap: int,
          upscale_tile: Callable[[PIL.Image.Image], PIL.Image.Image], progress=None) -> PIL.Image.Image:
    """`image` upscaled `factor` times by `upscale_tile`, one tile of at most `tile` pixels a side at a time (so
    that the memory an upscaler model needs is that of one tile, whatever the picture's size); neighbouring tiles
    overlap by `overlap` pixels and are blended across it with linear weights, which hides their seams. An
    upscaler whose output at a pixel depends only on the pixels around it gives the untiled result away from the
    overlaps. Each tile is a step of `progress` (a `providers.base.Progress`); once its callers stopped, the tiles
    left are not made."""
    import math

    import numpy as np
    import PIL.Image

    image = image.convert("RGB")
    width, height = image.size
    if width <= tile and height <= tile:
        out = upscale_tile(image)
        if progress is not None:
            progress.step(1, 1)
        return out
    overlap = min(overlap, tile // 2)

    def starts(length: int) -> list[int]:
        """As few tiles as cover `length` with at least `overlap` between neighbours, spread evenly."""
        if length <= tile:
            return [0]
        count = math.ceil((length - overlap) / (tile - overlap))
        return [round(i * (length - tile) / (count - 1)) for i in range(count)]

    total = np.zeros((height * factor, width * factor, 3), dtype=np.float64)
    weight = np.zeros((height * factor, width * factor, 1), dtype=np.float64)
    ramp = max(1, overlap * factor)
    boxes = [(left, top, min(left + tile, width), min(top + tile, height))
             for top in starts(height) for left in starts(width)]
    for done, box in enumerate(boxes, 1):
        left, top = box[:2]
        if progress is not None and progress.stopped:
            break
        out = np.asarray(upscale_tile(image.crop(box)).convert("RGB"), dtype=np.float64)
        h, w = out.shape[:2]
        # weights that rise from the tile's inner edges over the overlap (1 at the picture's own edges)
        wy = np.minimum(np.arange(h) + 1, ramp) if top > 0 else np.full(h, ramp)
        wy = np.minimum(wy, (h - np.arange(h)) if box[3] < height else ramp)
        wx = np.minimum(np.arange(w) + 1, ramp) if left > 0 else np.full(w, ramp)
        wx = np.minimum(wx, (w - np.arange(w)) if box[2] < width else ramp)
        mask = (wy[:, None] * wx[None, :])[..., None].astype(np.float64)
        y, x = top * factor, left * factor
        total[y:y + h, x:x + w] += out * mask
        weight[y:y + h, x:x + w] += mask
        if progress is not None:
            progress.step(done, len(boxes))
    return PIL.Image.fromarray(np.clip(np.round(total / np.maximum(weight, 1e-9)), 0, 255).astype(np.uint8))


def check_upscale(picture, scale, upscaler, tile) -> tuple[int, int]:
    """An upscale's settings, refused naming the one that is wrong; the size it makes."""
    import math

    from .errors import InvalidRequestError
    from .types import MAX_INPUT_PIXELS

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not 1 <= scale <= 8:
        raise InvalidRequestError(f"`scale` must be a number from 1 to 8 but is {scale!r}.", param="scale")
    size = (round(picture.width * scale), round(picture.height * scale))
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise InvalidRequestError(f"`scale` {scale} makes {size[0]}x{size[1]}, over the {MAX_INPUT_PIXELS} pixels "
                                  "Easel makes.", param="scale")
    if not isinstance(upscaler, str) or not upscaler.strip():
        raise InvalidRequestError(f"`upscaler` must be one of {', '.join(IMAGE_UPSCALERS)} or an upscaler model's "
                                  f"name but is {upscaler!r}.", param="upscaler")
    if isinstance(tile, bool) or not isinstance(tile, int) or not (tile == 0 or 32 <= tile <= 4096):
        raise InvalidRequestError(f"`tile` must be 0 (no tiles) or 32 to 4096 pixels but is {tile!r}.", param="tile")
    return size


def upscale_with(provider, picture: PIL.Image.Image, scale: float, upscaler: str, tile: int = 256,
                 progress=None) -> PIL.Image.Image:
    """`picture` `scale` times as large, by an image filter or by an upscaler model of `provider` (the one that
    holds the caller's loaded models: a server's own, so that a model is in memory once); the settings checked
    (`check_upscale`) before."""
    size = (round(picture.width * scale), round(picture.height * scale))
    if upscaler in IMAGE_UPSCALERS:
        bigger = resize(picture, size, upscaler)
        if progress is not None:
            progress.step(1, 1)
        return bigger
    return resize(provider.upscale(picture, scale, upscaler, tile, progress), size, "lanczos")
