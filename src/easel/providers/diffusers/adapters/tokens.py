"""`tokens=todo[:F[:L]]`: token downsampling (ToDo, Smith et al. 2024) for one call on UNet models. The self-attention
of the UNet's highest-resolution attention levels (`L` of them, 1 by default) attends to its tokens downsampled `F`
times each way (2 by default: a quarter of the keys and values), nearest-exact as the reference does; the queries,
and so the picture's resolution, stay whole. On a CPU attention is a fifth of an SD 1.5 step at 512x512, most of it
the 64x64 level's self-attention.
The same seed and options give the same pixels; the next call without it is the plain one again."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

from ....errors import InvalidRequestError
from ....family_options import TOKENS_OPTION
from .base import Call, OffUnlessAsked

METHODS = ("todo",)
_SPELLING = re.compile(r"^(todo)(?::(\d+))?(?::(\d+))?$")
FACTORS, LEVELS = (2, 4), (1, 2)


def parse(value) -> tuple[str, int, int]:
    """`todo`, `todo:3`, `todo:2:2`: the method, its downsampling factor and how many attention levels it covers."""
    found = _SPELLING.match(value.strip().lower()) if isinstance(value, str) else None
    if found is None:
        raise InvalidRequestError(f"`tokens` must be {' or '.join(METHODS)}, optionally with its factor and levels "
                                  f"(todo:2, todo:3:2), but is {value!r}.", param="tokens")
    method, factor, levels = found.group(1), int(found.group(2) or 2), int(found.group(3) or 1)
    if not FACTORS[0] <= factor <= FACTORS[1] or not LEVELS[0] <= levels <= LEVELS[1]:
        raise InvalidRequestError(f"`tokens` {method}'s factor must be {FACTORS[0]} to {FACTORS[1]} and its levels "
                                  f"{LEVELS[0]} or {LEVELS[1]}, but {value!r} asks for {factor} and {levels}.",
                                  param="tokens")
    return method, factor, levels


class TokenDownsampling(OffUnlessAsked):
    kind = param = "tokens"

    def __init__(self, default: str = "none"):
        """`default`: the server's (EASEL_TOKENS), for the UNet models."""
        super().__init__(TOKENS_OPTION, default, parse)

    def fits(self, family) -> bool:
        return family.unet

    def default(self, spec):
        return self.default_value

    def check(self, model, uses) -> None:
        parse(uses)

    @contextlib.contextmanager
    def enter(self, call: Call, uses) -> Iterator[dict[str, Any]]:
        method, factor, levels = parse(uses)
        call.details["tokens"] = {"method": method, "factor": factor, "levels": levels}
        with downsampled_self_attention(call.pipe.unet, factor, levels):
            yield {}


@contextlib.contextmanager
def downsampled_self_attention(unet, factor: int, levels: int) -> Iterator[None]:
    """While the block runs, the self-attention (`attn1`) of `unet`'s `levels` highest-resolution attention levels
    takes its keys and values from its input downsampled `factor` times each way."""
    import torch.nn.functional as F

    size: dict[str, tuple[int, int]] = {}  # the latent's height and width in this UNet call

    def remember(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        size["latent"] = tuple(sample.shape[-2:])

    def downsample(level: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            h, w = (math.ceil(side / 2 ** level) for side in size["latent"])
            if hidden.ndim != 3 or h * w != hidden.shape[1] or kwargs.get("encoder_hidden_states") is not None:
                return None  # not a self-attention over this level's grid: left whole
            grid = hidden.reshape(hidden.shape[0], h, w, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(max(1, h // factor), max(1, w // factor)), mode="nearest-exact")
            return args, {**kwargs, "encoder_hidden_states": grid.flatten(2).transpose(1, 2)}
        return hook

    attention = attention_levels(unet)
    chosen = sorted(set(attention.values()))[:levels]
    handles = [unet.register_forward_pre_hook(remember, with_kwargs=True)]
    handles += [module.register_forward_pre_hook(downsample(level), with_kwargs=True)
                for module, level in attention.items() if level in chosen]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attention_levels(unet) -> dict[Any, int]:
    """Each self-attention module (`attn1`) of `unet`'s transformer blocks, with its level: 0 at the latent's
    resolution, one more for each downsampling (the middle block at the lowest)."""
    depth = len(unet.down_blocks)
    found: dict[Any, int] = {}
    for name, module in unet.named_modules():
        if not name.endswith(".attn1"):
            continue
        part, index = name.split(".")[:2]
        if part == "mid_block":
            found[module] = depth - 1
        elif part in ("down_blocks", "up_blocks"):
            found[module] = int(index) if part == "down_blocks" else depth - 1 - int(index)
    return found
