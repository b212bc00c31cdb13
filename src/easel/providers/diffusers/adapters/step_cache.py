"""`cache=...`: step caching, on for one call. UNet models (SD 1.5, SDXL and their turbos) reuse their deep blocks'
features between steps (DeepCache: every `n`th step runs the whole UNet, the others only its shallowest blocks);
transformer models use diffusers' own cache hooks (First Block Cache: a step whose first block's output barely moved
reuses the rest; TaylorSeer: features forecast between full steps). The same seed and options give the same
pixels."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from ....errors import InvalidRequestError, UnsupportedError
from .base import Call, ModelFiles, OffUnlessAsked

# method -> (its parameter's name, default, lowest, highest, what it is)
METHODS = {"deepcache": ("interval", 3, 2, 10, "UNet"), "first_block": ("threshold", 0.08, 0.01, 1.0, "transformer"),
           "taylorseer": ("interval", 4, 2, 10, "transformer")}
_SPELLING = re.compile(r"^([a-z_]+)(?::([0-9.]+))?$")


def parse(value) -> tuple[str, float]:
    """`deepcache`, `deepcache:2`, `first_block:0.1`: the method and its parameter (the default where none)."""
    found = _SPELLING.match(value.strip()) if isinstance(value, str) else None
    if found is None or found.group(1) not in METHODS:
        raise InvalidRequestError(f"`cache` must be one of {', '.join(METHODS)}, optionally with its parameter "
                                  f"(deepcache:3, first_block:0.08), but is {value!r}.", param="cache")
    method, number = found.groups()
    name, default, lo, hi, _ = METHODS[method]
    try:
        amount = default if number is None else float(number)
    except ValueError:
        amount = None
    if amount is None or not lo <= amount <= hi or (name == "interval" and amount != int(amount)):
        raise InvalidRequestError(f"`cache` {method}'s {name} must be {'a whole number ' if name == 'interval' else ''}"
                                  f"between {lo} and {hi} but is {number!r}.", param="cache")
    return method, amount


class StepCache(OffUnlessAsked):
    kind = param = "cache"

    def __init__(self, default: str = "none"):
        """`default`: the server's (EASEL_STEP_CACHE), for the models it fits."""
        from ....family_options import CACHE_OPTION

        super().__init__(CACHE_OPTION, default, parse)

    def default(self, spec):
        if self.default_value is None:
            return None
        unet = METHODS[parse(self.default_value)[0]][4] == "UNet"
        return self.default_value if unet == spec.family.unet else None

    def check(self, model: ModelFiles, uses) -> None:
        method, _ = parse(uses)
        unet = model.spec.family.unet
        if (METHODS[method][4] == "UNet") != unet:
            fits = [m for m, (*_, kind) in METHODS.items() if (kind == "UNet") == unet]
            raise UnsupportedError(f"{model.spec.name} is a {'UNet' if unet else 'transformer'} model: its step "
                                   f"caches are {', '.join(fits)}, not {method}.", param="cache")
        denoiser = None if unet else _transformer_class(model)
        if denoiser is not None and not hasattr(denoiser, "enable_cache"):
            raise UnsupportedError(f"{model.spec.name}'s denoiser ({denoiser.__name__}) takes none of diffusers' step "
                                   "caches.", param="cache")

    @contextlib.contextmanager
    def enter(self, call: Call, uses) -> Iterator[dict[str, Any]]:
        method, amount = parse(uses)
        call.details["cache"] = {"method": method, METHODS[method][0]: amount}
        if method == "deepcache":
            from DeepCache import DeepCacheSDHelper

            helper = DeepCacheSDHelper(pipe=call.pipe)
            helper.set_params(cache_interval=int(amount), cache_branch_id=0)
            helper.enable()
            try:
                yield {}
            finally:
                helper.disable()
            return
        transformer = getattr(call.pipe, "transformer", None)
        if not hasattr(transformer, "enable_cache"):
            raise UnsupportedError(f"{call.spec.name}'s denoiser takes no step cache.", param="cache")
        transformer.enable_cache(_config(call.pipe, method, amount))
        try:
            yield {}
        finally:
            transformer.disable_cache()


def _transformer_class(model: ModelFiles):
    """The model's transformer class, from its folder's model_index.json or its family; None: not known here."""
    import json

    import diffusers

    name = model.spec.family.denoiser
    index = model.folder / "model_index.json" if model.folder is not None else None
    if index is not None and index.is_file():
        with contextlib.suppress(ValueError, TypeError, IndexError):
            name = json.loads(index.read_text()).get("transformer", [None, name])[1]
    return getattr(diffusers, name, None) if isinstance(name, str) else None


def _config(pipe, method: str, amount: float):
    import diffusers

    if method == "first_block":
        return diffusers.FirstBlockCacheConfig(threshold=amount)
    return diffusers.TaylorSeerCacheConfig(cache_interval=int(amount), taylor_factors_dtype=pipe.transformer.dtype)
