"""`decoder=tiny`: the final images decoded by the family's tiny autoencoder (TAESD, TAESDXL, TAESD3, TAEF1) in
place of its VAE, for the call only: a fraction of the decode's time (on a CPU the decode is most of a one-step
image), a little less fine detail. Loaded like any model (the hub cache first, downloaded where the model's own files
may be) and kept with the pipeline as an add-on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ....errors import InvalidRequestError, ModelNotFoundError, UnsupportedError
from .base import Adapter, Call, ModelFiles

DECODERS = ("full", "tiny")


class TinyDecoder(Adapter):
    kind = param = "decoder"

    def __init__(self, loader, default: str = "full"):
        """`default`: the server's (EASEL_DECODER), for the families whose tiny decoder is in the hub cache."""
        from ....family_options import DECODER_OPTION

        self.loader, self.option, self.default_value = loader, DECODER_OPTION, default

    def uses(self, requests) -> str | None:
        value = requests[0].extra.get("decoder")
        return None if value in (None, "full") else value

    def default(self, spec) -> str | None:
        if self.default_value != "tiny" or spec.family.preview_decoder is None:
            return None
        with contextlib.suppress(ModelNotFoundError):  # where it is in the hub cache
            self.folder(spec.family.preview_decoder, download=False)
            return "tiny"
        return None

    def check(self, model: ModelFiles, uses) -> None:
        spec = model.spec
        if uses not in DECODERS:
            raise InvalidRequestError(f"`decoder` must be one of {', '.join(DECODERS)} but is {uses!r}.",
                                      param="decoder")
        if spec.family.preview_decoder is None:
            raise UnsupportedError(f"{spec.name} ({spec.family.name}) has no tiny decoder: leave `decoder` out.",
                                   param="decoder")
        self.folder(spec.family.preview_decoder, download=False)

    def folder(self, repo: str, download: bool):
        """The tiny autoencoder's folder (hub cache, or downloaded where models may be); not there: how to get it."""
        from huggingface_hub import snapshot_download

        from ..loading import offline

        try:
            return snapshot_download(repo, local_files_only=not download or offline(), token=self.loader.token)
        except Exception:  # noqa: BLE001 - not cached, or the hub unreachable
            raise ModelNotFoundError(f"The tiny decoder {repo} is not on this machine: with network access, run "
                                     f"`easel models pull {repo}`.", param="decoder") from None

    @contextlib.contextmanager
    def enter(self, call: Call, uses) -> Iterator[dict[str, Any]]:
        from diffusers import AutoencoderTiny

        from ..cache import decoder_dtype, place_tiny_decoder

        pipe, repo = call.pipe, call.spec.family.preview_decoder
        key = (self.kind, repo)

        def load():
            tiny = AutoencoderTiny.from_pretrained(self.folder(repo, download=True), dtype=pipe.vae.dtype)
            return place_tiny_decoder(tiny, pipe.vae)

        tiny = call.loaded.state(key, load)
        call.loaded.touch(key)
        if tiny.config.latent_channels != pipe.vae.config.latent_channels:
            raise InvalidRequestError(f"{repo} decodes {tiny.config.latent_channels}-channel latents and "
                                      f"{call.spec.name}'s are {pipe.vae.config.latent_channels}-channel: leave "
                                      "`decoder` out.", param="decoder")
        full, pipe.vae = pipe.vae, tiny
        try:
            call.details["decoder"] = repo
            if decoder_dtype(tiny) != decoder_dtype(full):
                call.details["decoder_dtype"] = decoder_dtype(tiny)
            yield {}
        finally:
            pipe.vae = full
