"""`clip_skip=N`: the CLIP text encoder ends N layers early for the call (its final norm kept), A1111's clip skip
(its "Clip skip 2" is 1 here). Done on the encoder itself rather than through the pipeline's `clip_skip` argument,
so that plain prompts and weighted or long ones (compel) read the same layer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ....errors import InvalidRequestError
from ....family_options import CLIP_SKIP_OPTION
from .base import Adapter, Call


class ClipSkip(Adapter):
    kind = param = "clip_skip"
    option = CLIP_SKIP_OPTION

    def fits(self, family) -> bool:
        return family.clip_skip

    @contextlib.contextmanager
    def enter(self, call: Call, uses) -> Iterator[dict[str, Any]]:
        with layers_skipped(call.loaded.pipe.text_encoder, int(uses)):
            yield {}


@contextlib.contextmanager
def layers_skipped(text_encoder, skip: int) -> Iterator[None]:
    """`text_encoder` (transformers' CLIPTextModel) without its last `skip` layers while the block runs."""
    encoder = getattr(text_encoder, "text_model", text_encoder).encoder
    layers = encoder.layers
    if skip >= len(layers):
        raise InvalidRequestError(f"`clip_skip` must be below the text encoder's {len(layers)} layers but is "
                                  f"{skip}.", param="clip_skip")
    encoder.layers = layers[:-skip]
    try:
        yield
    finally:
        encoder.layers = layers
