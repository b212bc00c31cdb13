"""Progress at the end of every step: the step reported, previews of the images someone watches, the call
interrupted when its callers stopped, and the last step's latents kept (the hires fix's latent upscale)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...catalog import ModelSpec
    from ...types import ImageRequest
    from ..base import Batch, Progress
    from .cache import LoadedPipeline


class StepReporter:
    """A pipeline's `callback_on_step_end`; `latents` holds the last step's."""

    def __init__(self, progress: Progress, loaded: LoadedPipeline, batch: Batch, total: int):
        self.progress, self.loaded, self.batch, self.total = progress, loaded, batch, total
        self.latents = None

    def __call__(self, pipe, i: int, t, tensors: dict[str, Any]) -> dict[str, Any]:
        latents = self.latents = tensors.get("latents")
        spec, first = self.batch.spec, self.batch.first
        render = None
        if latents is not None:
            def render(indices: list[int]):
                return preview(pipe, spec, first, latents, indices, self.loaded.preview_decoder(spec))
        self.progress.step(i + 1, self.total, render)
        if self.progress.stopped:
            pipe._interrupt = True
        return {}


def preview(pipe, spec: ModelSpec, request: ImageRequest, latents, indices: list[int], tiny=None) -> list | None:
    """Images of the current step's latents at `indices`, for streamed previews: only the images someone watches
    are decoded, with the family's tiny VAE when it is at hand, else with the pipeline's own."""
    import torch
    from PIL import Image

    space = spec.family.latent_space
    latents = latents[indices]
    with torch.no_grad():
        if space == "pixels" or getattr(pipe, "vae", "") is None:  # no autoencoder: the latents are pixels
            x = latents
        elif space in ("vae", "vae-packed"):
            vae = tiny or pipe.vae  # a tiny VAE's config carries the scaling its family's latents need
            lat = latents
            if space == "vae-packed":
                lat = pipe._unpack_latents(lat, request.height, request.width, pipe.vae_scale_factor)
            lat = lat / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0)
            x = vae.decode(lat.to(vae.dtype)).sample
        else:
            return None
        arrays = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]
