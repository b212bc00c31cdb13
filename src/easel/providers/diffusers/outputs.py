"""A pipeline's answer as one output per request: the safety checker's verdict, the requested size, what the
adapters recorded, what the model itself records (its `records`), and the last latents where the hires fix
upscales them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...errors import ContentPolicyError
from ...upscalers import LATENT_UPSCALERS
from ..base import ProviderOutput

if TYPE_CHECKING:
    from ...types import ImageRequest
    from ..base import Batch


def per_request(batch: Batch, out, details: dict[str, Any], latents=None, warnings: list[str] = ()
                ) -> list[ProviderOutput]:
    """One `ProviderOutput` per request of `batch` from the pipeline's answer `out`; `details`: what the adapters
    recorded; `latents`: the last step's; `warnings`: what each result says of how the model ran."""
    spec, first = batch.spec, batch.first
    flagged = getattr(out, "nsfw_content_detected", None)
    if flagged and any(flagged):
        raise ContentPolicyError(f"{spec.name}'s safety checker flagged the image (category: sexual content).",
                                 param="prompt")
    images, resized = _to_requested_size(first, list(out.images))
    details = {**resized, **details}
    own = out.records(batch.split) if hasattr(out, "records") else [([], {}, None)] * len(batch)
    outputs = [ProviderOutput(images=group, warnings=[*warnings, *said], details={**details, **extra},
                              image_details=each)
               for group, (said, extra, each) in zip(batch.split(images), own)]
    # the hires fix's latent upscale, where the second pass can denoise latents at the larger size (hires requests
    # run alone: one output)
    if first.hires_scale and first.hires_upscaler in LATENT_UPSCALERS and spec.family.latent_space == "vae" \
            and not spec.family.keeps_native_size and latents is not None:
        outputs[0].latents = [latent.detach().cpu() for latent in latents[:len(batch.seeds[0])]]
    return outputs


def _to_requested_size(request: ImageRequest, images: list) -> tuple[list, dict[str, Any]]:
    """Resize what a model that keeps its native size made to the requested size, and say so in the details (an
    edit is pasted back into its picture by the runner, which keeps every pixel outside its mask exact)."""
    from PIL import Image

    size = (request.width, request.height)
    if not images or images[0].size == size:
        return images, {}
    return [im.resize(size, Image.LANCZOS) for im in images], {"resized_from": f"{images[0].width}x{images[0].height}"}
