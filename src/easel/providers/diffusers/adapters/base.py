"""The adapter interface: what one kind of add-on (a LoRA, an embedding, a ControlNet, an IP-Adapter, a plugin's
own kind) does around a pipeline call, in the lifecycle diffusers' loader mixins and InvokeAI's extensions share:
read what a request asks of it, check that against the model before the job is queued, then, for each call, load
what it needs (kept with the pipeline and counted by the memory ledger), enter (give the call its arguments, or
put another pipeline in its place) and undo itself on exit, and record what was used in the image's parameters.

A plugin's adapter is an `Adapter` given to `add` by its `register(add, settings)` (the `easel.providers` entry
point group); its `option` becomes a request option of every family it `fits`.

    class FreeU(Adapter):
        kind = param = "freeu"
        option = OptionSpec("freeu", "bool", "FreeU on the UNet's skip connections.")

        @contextlib.contextmanager
        def enter(self, call, uses):
            call.pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
            try:
                yield {}
            finally:
                call.pipe.disable_freeu()
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ....catalog import ModelFamily, ModelSpec, OptionSpec
    from ....types import ImageRequest
    from ...base import Batch
    from ..cache import LoadedPipeline


@dataclasses.dataclass
class ModelFiles:
    """The model an add-on is checked against: its spec, and its pipeline folder and denoiser's config where they
    are on this machine (read only when an adapter asks)."""

    spec: ModelSpec
    find_folder: Any  # () -> Path | None

    @functools.cached_property
    def folder(self) -> Path | None:
        return self.find_folder()

    @functools.cached_property
    def denoiser(self) -> dict[str, Any] | None:
        from ..fit import denoiser_config

        return denoiser_config(self.folder)


@dataclasses.dataclass
class Call:
    """One pipeline call being prepared: the loaded pipeline, the pipeline to call (an adapter may put another in
    its place, such as a ControlNet pipeline over the same weights), the batch, the call's arguments so far, and
    what the images' parameters record of the adapters (`details`)."""

    loaded: LoadedPipeline
    batch: Batch
    pipe: Any
    kwargs: dict[str, Any]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def spec(self) -> ModelSpec:
        return self.batch.spec

    @property
    def first(self) -> ImageRequest:
        return self.batch.first


class Adapter:
    """One kind of add-on. `kind` names it in records, errors and the memory ledger; `param` is the request field
    (or, for a plugin's kind, the request option in `extra`) that asks for it."""

    kind: str = ""
    param: str = ""
    option: OptionSpec | None = None  # a plugin kind's request option, added to the families it fits
    families: tuple[str, ...] | None = None  # the families it fits by name; None: every local diffusers family

    def fits(self, family: ModelFamily) -> bool:
        """Whether models of `family` take this kind (a family flag for Easel's own kinds)."""
        local = family.provider == "diffusers" and family.name != "builtin"
        return local if self.families is None else family.name in self.families

    def uses(self, requests: list[ImageRequest]) -> Any:
        """What the requests (one, or a batch that shares the call) ask of this adapter; falsy: nothing."""
        return requests[0].extra.get(self.param)

    def default(self, spec: ModelSpec) -> Any:
        """What the server's setting asks of this adapter for `spec`'s requests that do not name its option;
        falsy: nothing."""
        return None

    def check(self, model: ModelFiles, uses: Any) -> None:
        """Refuse before the job is queued what this model cannot take: raise InvalidRequestError naming `param`
        (an add-on that is missing, or made for another family, read from its config or keys)."""

    @contextlib.contextmanager
    def enter(self, call: Call, uses: Any) -> Iterator[dict[str, Any]]:
        """Prepare `call` and yield the arguments this adapter adds to the pipeline call; undo on exit, so that the
        next call runs as if this one had never been. Called with the pipeline's lock held."""
        yield {}


class OffUnlessAsked(Adapter):
    """An adapter kind that is off unless a request's option or the server's setting names it (`none`, or a
    request's own `none`, leaves it off); a bad setting stops the server at start, not each request."""

    def __init__(self, option: OptionSpec, default: str, parse):
        self.option, self.default_value = option, None if default in ("", "none") else default
        if self.default_value is not None:
            parse(self.default_value)

    def uses(self, requests: list[ImageRequest]) -> Any:
        value = requests[0].extra.get(self.param)
        return None if value in (None, "none", "") else value


class ShortHashes:
    """A1111's short hash of add-on files (sha256, 12 hex digits), which its infotext names them by; each file read
    once per change."""

    def __init__(self):
        self._known: dict[tuple, str] = {}  # (file, mtime) -> short hash

    def __call__(self, path: Path) -> str:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if key not in self._known:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._known[key] = digest.hexdigest()[:12]
        return self._known[key]
