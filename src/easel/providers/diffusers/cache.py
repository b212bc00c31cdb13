"""Loaded pipelines and what is attached to them, with a memory ledger: each entry's resident bytes count its
pipeline and every add-on loaded with it (LoRA adapters, ControlNets, IP-Adapter image encoders, the pipelines
derived for other modes), so that `EASEL_MAX_CACHE_GB` bounds what it says. Over the bound, add-ons go before
whole pipelines: they load again in a fraction of a pipeline's time when a request names them."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import UnsupportedError

if TYPE_CHECKING:
    from ...catalog import ModelSpec


@dataclasses.dataclass
class LoadedPipeline:
    """A pipeline loaded on one device, the lock that serialises its calls, and what is attached to it: the
    pipelines derived for other modes and what adapters keep with it (`derived`: ControlNet models and pipelines,
    image encoders, each adapter's own state by its kind), and each add-on's last use with how to let it go."""

    pipe: Any
    scheduler_class: type
    scheduler_config: dict[str, Any]
    load_s: float
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    derived: dict[Any, Any] = dataclasses.field(default_factory=dict)
    # each add-on by its last use: (kind, name) -> the number of the call that used it last (`calls` counts the
    # pipeline's calls), and how to let it go (by default: forget `derived[(kind, name)]`)
    used: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict)
    releases: dict[tuple, Callable[[], None]] = dataclasses.field(default_factory=dict)
    calls: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)  # what every result of it says (a chosen offload)
    _tiny_decoder: Any = False  # False: not looked for yet; None: not on this machine

    def preview_decoder(self, spec: ModelSpec):
        """The family's tiny VAE for previews (a tenth of a step to decode, where the full VAE takes most of one),
        when it is in the hub cache; never downloaded for a preview. None: previews use the pipeline's VAE."""
        if self._tiny_decoder is False:
            self._tiny_decoder = _load_tiny_decoder(spec.family.preview_decoder, self.pipe)
        return self._tiny_decoder

    def for_mode(self, mode: str, classes: dict[str, str] | None = None):
        """The pipeline for a mode ("instruction": the pipeline itself, which takes the images); edit and variation
        pipelines share the loaded weights (`from_pipe`): the family's class for the mode (`classes`) where it
        names one, else diffusers' AutoPipeline's."""
        if mode in ("generate", "instruction") or getattr(self.pipe, "supports_image_input", False):
            return self.pipe
        if mode not in self.derived:
            import diffusers

            named = (classes or {}).get(mode)
            auto = getattr(diffusers, named) if named else \
                diffusers.AutoPipelineForInpainting if mode == "edit" else diffusers.AutoPipelineForImage2Image
            try:
                self.derived[mode] = auto.from_pipe(self.pipe)
                self.derived[mode].set_progress_bar_config(disable=True)
            except ValueError as exc:
                raise UnsupportedError(f"This model has no {mode} pipeline: {exc}", param="model") from None
        return self.derived[mode]

    def resident_bytes(self) -> int:
        """What the pipeline and everything attached to it hold now, each tensor counted once (derived pipelines
        share the pipeline's weights; LoRA adapters live inside its modules)."""
        from .onednn import packed_bytes

        held = [self.pipe, *self.derived.values(), self._tiny_decoder or None]
        return tensor_bytes(held) + packed_bytes(module for obj in held for module in _modules(obj))

    def state(self, kind: str, make: Callable[[], Any]) -> Any:
        """An adapter's own state kept with this pipeline (made on first use), under `derived[kind]`."""
        if kind not in self.derived:
            self.derived[kind] = make()
        return self.derived[kind]

    def touch(self, addon: tuple, release: Callable[[], None] | None = None) -> None:
        """`addon`, a (kind, name) pair, serves the current call: the last to go when add-ons must; `release` lets
        it go (by default, `derived[addon]` is forgotten)."""
        self.used[addon] = self.calls
        self.used.move_to_end(addon)
        if release is not None:
            self.releases[addon] = release

    def drop_addon(self, spare_current: bool = True) -> bool:
        """Release the least recently used add-on (with the ControlNet pipelines built over it), sparing those of
        the last call when `spare_current`; False when none is left to release, or a call holds the pipeline."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            addon = next((a for a, call in self.used.items() if not (spare_current and call == self.calls)), None)
            if addon is None:
                return False
            del self.used[addon]
            release = self.releases.pop(addon, None)
            if release is None:
                self.derived.pop(addon, None)
            else:
                with contextlib.suppress(Exception):  # already gone with what held it
                    release()
            return True
        finally:
            self.lock.release()


class PipelineCache:
    """Loaded pipelines by (source, device, dtype, memory options), least recently used evicted first; with
    `max_bytes`, the resident bytes of every entry (add-ons included) stay under it, add-ons dropped first."""

    def __init__(self, max_items: int = 2, max_bytes: int = 0):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[tuple, LoadedPipeline] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, load) -> LoadedPipeline:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # two requests for one model load it once
            with self._lock:
                if key in self._items:
                    return self._items[key]
            loaded = load()
            with self._lock:
                self._items[key] = loaded
                self._loading.pop(key, None)
            self.trim(keep=loaded)
            return loaded

    def resident_bytes(self) -> int:
        with self._lock:
            items = list(self._items.values())
        return sum(item.resident_bytes() for item in items)

    def trim(self, keep: LoadedPipeline | None = None) -> None:
        """Bring the cache under its bounds: past `max_items`, the least recently used pipelines go; past
        `max_bytes`, first the add-ons of the others, then the others, then `keep`'s own add-ons, least recently
        used first and those of its last call last (`keep`, the pipeline in use, stays even when it alone is over
        the bound)."""
        with self._lock:
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            if not self.max_bytes:
                return
            others = [item for item in self._items.values() if item is not keep]
        over = lambda: self.resident_bytes() > self.max_bytes  # noqa: E731
        for item in others:  # least recently used first: their add-ons, one by one
            while over() and item.drop_addon(spare_current=False):
                pass
        with self._lock:
            for key in [k for k, item in self._items.items() if item is not keep]:
                if sum(item.resident_bytes() for item in self._items.values()) <= self.max_bytes:
                    return
                del self._items[key]
        if keep is not None:  # then the pipeline in use: its older add-ons, at last those of its last call
            while over() and keep.drop_addon():
                pass
            while over() and keep.drop_addon(spare_current=False):
                pass

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)

    def clear(self) -> int:
        """Forget every pipeline (and the add-ons held with it); the bytes they held."""
        held = self.resident_bytes()
        with self._lock:
            self._items.clear()
        return held


def tensor_bytes(objects: list) -> int:
    """Bytes of the distinct tensors (parameters and buffers) of `objects`: torch modules, pipelines (their
    components) and upscaler descriptors (their `model`)."""
    seen, total = set(), 0
    for obj in objects:
        for module in _modules(obj):
            for tensor in [*module.parameters(), *module.buffers()]:
                key = (tensor.device, tensor.data_ptr())
                if key not in seen:
                    seen.add(key)
                    total += tensor.numel() * tensor.element_size()
    return total


def _modules(obj) -> list:
    if obj is None:
        return []
    if hasattr(obj, "parameters") and hasattr(obj, "buffers"):
        return [obj]
    if hasattr(obj, "components"):
        return [c for c in obj.components.values() if hasattr(c, "parameters") and hasattr(c, "buffers")]
    if hasattr(obj, "model"):
        return _modules(obj.model)
    return []


def _load_tiny_decoder(repo_id: str | None, pipe):
    """An `AutoencoderTiny` from the hub cache, on the pipeline's device and dtype; None when it is not there."""
    if repo_id is None or getattr(pipe, "vae", None) is None:
        return None
    from diffusers import AutoencoderTiny
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, local_files_only=True)
        tiny = AutoencoderTiny.from_pretrained(folder, dtype=pipe.vae.dtype)
    except Exception:  # noqa: BLE001 - not cached, or not a tiny VAE: previews fall back to the full one
        return None
    if tiny.config.latent_channels != pipe.vae.config.latent_channels:
        return None
    return place_tiny_decoder(tiny, pipe.vae)


def place_tiny_decoder(tiny, vae):
    """A tiny autoencoder on `vae`'s device; on a CPU in channels-last layout, where oneDNN runs its full-resolution
    convolutions (most of its time) about 1.5x faster than in the default layout, and where the CPU computes
    bfloat16 in hardware, its decoder's layers in bfloat16: twice as fast again, for a change of about a level of
    255 in a decode that only approximates the VAE's (the half precision a GPU runs it in)."""
    import torch

    from .onednn import Bfloat16Layers, native_bfloat16

    tiny = tiny.to(vae.device)
    if vae.device.type != "cpu":
        return tiny
    if tiny.dtype == torch.float32 and native_bfloat16():
        tiny.decoder.layers = Bfloat16Layers(tiny.decoder.layers)
    return tiny.to(memory_format=torch.channels_last)


def decoder_dtype(autoencoder) -> str:
    """The dtype an autoencoder decodes in: its own, or bfloat16 where `place_tiny_decoder` chose it."""
    layers = getattr(getattr(autoencoder, "decoder", None), "layers", None)
    return getattr(layers, "dtype_name", None) or str(autoencoder.dtype).removeprefix("torch.")
