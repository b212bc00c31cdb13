"""Upscaling: by an image filter (Lanczos, bicubic, nearest), or by an upscaler model that a provider runs (SD's x4
upscaler, from EASEL_HOME/upscalers or the hub); the hires fix upscales with either between its two passes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import PIL.Image

IMAGE_UPSCALERS = ("lanczos", "bicubic", "nearest")
# A1111's upscaler names -> Easel's (A1111's "Latent" upscales latents; here it is Lanczos, said in a warning)
A1111_UPSCALERS = {"none": "lanczos", "lanczos": "lanczos", "nearest": "nearest", "bicubic": "bicubic",
                   "latent": "lanczos", "latent (antialiased)": "lanczos", "latent (bicubic)": "bicubic",
                   "latent (bicubic antialiased)": "bicubic", "latent (nearest)": "nearest",
                   "latent (nearest-exact)": "nearest"}


def resize(image: PIL.Image.Image, size: tuple[int, int], upscaler: str) -> PIL.Image.Image:
    """`image` at `size` through an image filter."""
    import PIL.Image

    kind = {"lanczos": PIL.Image.Resampling.LANCZOS, "bicubic": PIL.Image.Resampling.BICUBIC,
            "nearest": PIL.Image.Resampling.NEAREST}[upscaler]
    return image.convert("RGB").resize(size, kind)
