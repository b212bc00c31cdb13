"""Textual-inversion embeddings: those of the embeddings folder that a batch's prompts name (as words, any case),
loaded once per pipeline as A1111 does; a prompt that names none runs as before."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ....catalog import lora_files
from ..errors import does_not_fit
from .base import Adapter, Call, ShortHashes


class Embeddings(Adapter):
    kind = "embeddings"
    param = "prompt"

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.hashes = ShortHashes()

    def fits(self, family) -> bool:
        return family.embeddings

    def uses(self, requests) -> dict[str, Path]:
        """The embeddings the prompts name, by name."""
        files = lora_files(self.folder)
        if not files:
            return {}
        text = " ".join(f"{r.prompt} {r.negative_prompt or ''}" for r in requests)
        return {name: path for name, path in files.items()
                if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE)}

    @contextlib.contextmanager
    def enter(self, call: Call, uses: dict[str, Path]) -> Iterator[dict[str, Any]]:
        loaded = call.loaded.state(self.kind, set)  # the tokens this pipeline holds (kept: prompts name them)
        for name, path in uses.items():
            if name in loaded:
                continue
            try:
                _load_embedding(call.loaded.pipe, path, name)
            except Exception as exc:  # noqa: BLE001 - not an embedding, or one for another text encoder
                raise does_not_fit(f"The embedding {name!r}", exc, "prompt") from None
            loaded.add(name)
        call.details["embeddings"] = list(uses)
        call.details["embedding_hashes"] = {name: self.hashes(path) for name, path in uses.items()}
        yield {}


def _load_embedding(pipe, path: Path, token: str) -> None:
    """A textual-inversion embedding as the token `token`: into the one text encoder of SD 1.5, or into both of
    SDXL's (its files hold `clip_l` and `clip_g`)."""
    from safetensors.torch import load_file

    if getattr(pipe, "text_encoder_2", None) is None:
        pipe.load_textual_inversion(str(path), token=token)
        return
    tensors = load_file(str(path))
    if not {"clip_l", "clip_g"} <= set(tensors):
        raise ValueError("an SDXL embedding holds clip_l and clip_g")
    pipe.load_textual_inversion(tensors["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(tensors["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
