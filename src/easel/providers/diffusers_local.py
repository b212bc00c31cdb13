"""Local diffusers pipelines: loading (folder, hub cache, download), device and memory options, a cache of loaded
pipelines, and one call per request with per-image seeds."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import (AuthenticationError, ContentPolicyError, GenerationError, InvalidRequestError,
                      ModelNotFoundError)
from .base import Provider, ProviderOutput, StepCallback

if TYPE_CHECKING:
    from ..catalog import ModelSpec
    from ..types import ImageRequest

# Easel scheduler name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}
# memory options any diffusers model accepts in `extra`; they are load-time settings, part of the cache key
MEMORY_OPTIONS = ("offload", "attention_slicing", "vae_slicing", "vae_tiling")
OFFLOAD_MODES = ("none", "model", "sequential")


def quiet_libraries() -> None:
    """Keep transformers' and diffusers' notices about optional backends out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def pick_device(preferred: str | None = None) -> str:
    """The device to run on: the preferred one, else CUDA, then Apple MPS, then CPU."""
    import torch

    if preferred:
        return preferred
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, family_dtype: str, preferred: str | None = None):
    """float32 on CPU (half precision is slow or unsupported there); the family's dtype on accelerators."""
    import torch

    name = preferred or ("float32" if device == "cpu" else family_dtype)
    if name == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        name = "float16"
    if name == "bfloat16" and device == "mps":
        name = "float16"
    return getattr(torch, name)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _pipeline_class(path: str):
    """'StableDiffusionPipeline' (from diffusers) or 'package.module:Class'."""
    if ":" in path:
        module, name = path.split(":")
        return getattr(importlib.import_module(module), name)
    import diffusers

    return getattr(diffusers, path)


def make_scheduler(name: str, base_config: dict[str, Any]):
    import diffusers

    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


def pull_model(spec: ModelSpec, token: str | None = None) -> str:
    """Download a hub model into the hub cache (resumable); returns the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if spec.local_path is not None:
        return str(spec.local_path)
    try:
        return snapshot_download(spec.source, token=token)
    except GatedRepoError:
        raise AuthenticationError(
            f"{spec.name} is gated: accept its licence on the hub, then run `easel keys set hf` with a token.",
            code="gated_model",
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{spec.source!r} does not exist on the hub (or is private).", param="model") from None
    except Exception as exc:  # network failures come in many types (httpx, OSError, offline mode)
        raise ModelNotFoundError(
            f"{spec.name} is not on this machine and could not be downloaded ({type(exc).__name__}). "
            f"With network access, run `easel models pull {spec.name}`.", param="model",
        ) from None


@dataclasses.dataclass
class LoadedPipeline:
    """A pipeline loaded on one device, the lock that serialises its calls, and its derived pipelines."""

    pipe: Any
    scheduler_class: type
    scheduler_config: dict[str, Any]
    nbytes: int
    load_s: float
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    derived: dict[str, Any] = dataclasses.field(default_factory=dict)

    def for_mode(self, mode: str):
        """The pipeline for a mode; edit and variation pipelines share the loaded weights (`from_pipe`)."""
        if mode == "generate" or getattr(self.pipe, "supports_image_input", False):
            return self.pipe
        if mode not in self.derived:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForInpainting if mode == "edit" else AutoPipelineForImage2Image
            try:
                self.derived[mode] = auto.from_pipe(self.pipe)
            except ValueError as exc:
                from ..errors import UnsupportedError

                raise UnsupportedError(f"This model has no {mode} pipeline: {exc}", param="model") from None
        return self.derived[mode]


class PipelineCache:
    """Loaded pipelines by (source, device, dtype, memory options), least recently used evicted first."""

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
                self._evict()
                self._loading.pop(key, None)
            return loaded

    def _evict(self) -> None:
        while len(self._items) > self.max_items or (
            self.max_bytes and len(self._items) > 1 and sum(i.nbytes for i in self._items.values()) > self.max_bytes
        ):
            self._items.popitem(last=False)

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)


def _module_bytes(pipe) -> int:
    total = 0
    for component in pipe.components.values():
        if hasattr(component, "parameters"):
            total += sum(p.numel() * p.element_size() for p in component.parameters())
    return total


class DiffusersProvider(Provider):
    """Runs local diffusers pipelines, Easel's built-in model included."""

    name = "diffusers"

    def __init__(self, device: str | None = None, dtype: str | None = None, max_cached: int = 2,
                 max_cache_bytes: int = 0, hf_token: str | None = None):
        self.device_preference = device
        self.dtype_preference = dtype
        self.cache = PipelineCache(max_cached, max_cache_bytes)
        self.hf_token = hf_token

    def check(self, spec: ModelSpec, request: ImageRequest) -> None:
        """Refuse before queueing: a bad memory option, or a hub model that is not cached while offline."""
        self.memory_options(spec, {k: v for k, v in request.extra.items() if k in MEMORY_OPTIONS})
        if spec.local_path is None and _offline() and not spec.is_available_locally():
            raise ModelNotFoundError(f"{spec.name} is not in the hub cache and HF_HUB_OFFLINE is set. "
                                     f"With network access, run `easel models pull {spec.name}`.", param="model")

    # -- loading ---------------------------------------------------------------------------------------------------
    def warm(self, spec: ModelSpec) -> None:
        self.load(spec)

    def memory_options(self, spec: ModelSpec, extra: dict[str, Any]) -> dict[str, Any]:
        offload = extra.get("offload", spec.family.offload or "none")
        if offload not in OFFLOAD_MODES:
            raise InvalidRequestError(f"`offload` must be one of {', '.join(OFFLOAD_MODES)} but is {offload!r}.",
                                      param="offload")
        return {
            "offload": offload,
            "attention_slicing": bool(extra.get("attention_slicing", False)),
            "vae_slicing": bool(extra.get("vae_slicing", False)),
            "vae_tiling": bool(extra.get("vae_tiling", False)),
        }

    def load(self, spec: ModelSpec, memory: dict[str, Any] | None = None) -> LoadedPipeline:
        """The pipeline for `spec`, from the cache or loaded now."""
        memory = memory or self.memory_options(spec, {})
        device = pick_device(self.device_preference)
        dtype = pick_dtype(device, spec.family.dtype, self.dtype_preference)
        key = (spec.source, device, str(dtype), tuple(sorted(memory.items())))
        return self.cache.get(key, lambda: self._load(spec, device, dtype, memory))

    def _load(self, spec: ModelSpec, device: str, dtype, memory: dict[str, Any]) -> LoadedPipeline:
        quiet_libraries()
        started = time.perf_counter()
        cls = _pipeline_class(spec.family.pipeline)
        try:
            if spec.local_path is not None:
                pipe = cls.from_pretrained(spec.local_path, dtype=dtype)
            else:
                pipe = self._load_from_hub(cls, spec, dtype)
        except (ModelNotFoundError, AuthenticationError):
            raise
        except Exception as exc:
            raise GenerationError(f"{spec.name} could not be loaded: {type(exc).__name__}: {exc}") from exc
        pipe.set_progress_bar_config(disable=True)
        # accelerators: offload where asked (it manages the device itself), else move everything
        if device != "cpu" and memory["offload"] == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif device != "cpu" and memory["offload"] == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
        if memory["attention_slicing"]:
            pipe.enable_attention_slicing()
        vae = getattr(pipe, "vae", None)
        if vae is not None and memory["vae_slicing"]:
            vae.enable_slicing()
        if vae is not None and memory["vae_tiling"]:
            vae.enable_tiling()
        return LoadedPipeline(pipe, type(pipe.scheduler), dict(pipe.scheduler.config), _module_bytes(pipe),
                              time.perf_counter() - started)

    def _load_from_hub(self, cls, spec: ModelSpec, dtype):
        """From the hub cache's snapshot folder, with no network; download only when it is missing and the hub may
        be reached. The id itself never goes to `from_pretrained`, which would open a folder of that name in the
        working directory."""
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(spec.source, local_files_only=True, token=self.hf_token)
        except Exception:  # noqa: BLE001 - not in the cache (LocalEntryNotFoundError, OSError, ...)
            if _offline():
                raise ModelNotFoundError(
                    f"{spec.name} is not in the hub cache and HF_HUB_OFFLINE is set. "
                    f"With network access, run `easel models pull {spec.name}`.", param="model",
                ) from None
            folder = pull_model(spec, self.hf_token)
        return cls.from_pretrained(folder, dtype=dtype)

    # -- running ---------------------------------------------------------------------------------------------------
    def run(self, spec: ModelSpec, request: ImageRequest, seeds: list[int],
            on_step: StepCallback | None = None, should_stop=None) -> ProviderOutput:
        return self.run_batch(spec, [request], [seeds], on_step, should_stop)[0]

    def run_batch(self, spec: ModelSpec, requests: list[ImageRequest], seeds: list[list[int]],
                  on_step: StepCallback | None = None, should_stop=None) -> list[ProviderOutput]:
        """Run compatible requests (same mode, size, steps, guidance, scheduler and options) as one pipeline
        call, each image from its own seeded generator, and split the images back per request."""
        import torch

        first = requests[0]
        extra = dict(first.extra)
        memory = self.memory_options(spec, {k: extra.pop(k) for k in MEMORY_OPTIONS if k in extra})
        loaded = self.load(spec, memory)
        all_seeds = [s for group in seeds for s in group]
        prompts = [r.prompt for r, group in zip(requests, seeds) for _ in group]
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "num_inference_steps": first.num_inference_steps,
            spec.family.cfg_param: first.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(s) for s in all_seeds],
            "output_type": "pil",
            **extra,
        }
        native = spec.family.keeps_native_size
        if not native:
            kwargs.update(width=first.width, height=first.height)
        if any(r.negative_prompt for r in requests):
            kwargs["negative_prompt"] = [r.negative_prompt or "" for r, group in zip(requests, seeds) for _ in group]
        if first.mode in ("edit", "vary"):
            if len(requests) > 1:
                raise ValueError("edits and variations run one request per call")
            kwargs["image"] = first.image.convert("RGB")
            kwargs["strength"] = first.strength if first.strength is not None else 1.0
            if not native:
                kwargs["image"] = kwargs["image"].resize((first.width, first.height))
        if first.mode == "edit" and first.mask is not None:
            kwargs["mask_image"] = first.mask.convert("L").resize(kwargs["image"].size)
        total = first.num_inference_steps
        if first.mode in ("edit", "vary") and "mask_image" not in kwargs:
            total = max(1, int(round(total * kwargs["strength"])))

        def callback(pipe, i, t, tensors):
            if on_step is not None:
                latents = tensors.get("latents")
                on_step(i + 1, total, (lambda: _preview(pipe, spec, first, latents)) if latents is not None else None)
            if should_stop is not None and should_stop():
                pipe._interrupt = True
            return {}

        kwargs["callback_on_step_end"] = callback
        with loaded.lock:
            pipe = loaded.for_mode(first.mode)
            # a fresh scheduler for every call: timesteps and step state never leak between requests
            pipe.scheduler = (make_scheduler(first.scheduler, loaded.scheduler_config) if first.scheduler
                              else loaded.scheduler_class.from_config(loaded.scheduler_config))
            try:
                out = pipe(**kwargs)
            except (ValueError, TypeError) as exc:
                raise InvalidRequestError(f"{spec.name} rejected the request: {exc}") from exc
            except torch.cuda.OutOfMemoryError as exc:
                raise GenerationError(
                    f"Out of GPU memory running {spec.name}: try offload=model, vae_tiling or a smaller size."
                ) from exc
        flagged = getattr(out, "nsfw_content_detected", None)
        if flagged and any(flagged):
            raise ContentPolicyError(
                f"{spec.name}'s safety checker flagged the image (category: sexual content).", param="prompt"
            )
        images, details = self._postprocess(first, list(out.images), kwargs)
        ignored = list(getattr(out, "ignored_words", [[]] * len(images)))
        outputs, at = [], 0
        for group in seeds:
            outputs.append(_output(images[at:at + len(group)], ignored[at:at + len(group)], details))
            at += len(group)
        return outputs

    @staticmethod
    def _postprocess(request: ImageRequest, images: list, kwargs: dict[str, Any]) -> tuple[list, dict[str, Any]]:
        """Resize native-size output to the requested size; keep unmasked pixels of an edit exact."""
        from PIL import Image

        size = (request.width, request.height)
        details: dict[str, Any] = {}
        if images and images[0].size != size:
            details["resized_from"] = f"{images[0].width}x{images[0].height}"
            images = [im.resize(size, Image.LANCZOS) for im in images]
        if "mask_image" in kwargs:
            # keep every pixel outside the mask exactly as it was (decoders and resizing blur them otherwise)
            original = request.image.convert("RGB").resize(size)
            mask = request.mask.convert("L").resize(size, Image.NEAREST).point(lambda v: 255 if v else 0)
            images = [Image.composite(im, original, mask) for im in images]
        return images, details


def _preview(pipe, spec: ModelSpec, request: ImageRequest, latents) -> list | None:
    """Images of the current step's latents (decoded with the pipeline's VAE), for streamed previews."""
    import torch
    from PIL import Image

    space = spec.family.latent_space
    with torch.no_grad():
        if space == "pixels":
            x = latents
        elif space in ("vae", "vae-packed"):
            vae = pipe.vae
            lat = latents
            if space == "vae-packed":
                lat = pipe._unpack_latents(lat, request.height, request.width, pipe.vae_scale_factor)
            lat = lat / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0)
            x = vae.decode(lat.to(vae.dtype)).sample
        else:
            return None
        arrays = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def _output(images: list, ignored: list[list[str]], details: dict[str, Any]) -> ProviderOutput:
    details = dict(details)
    warnings = []
    words = list(dict.fromkeys(w for group in ignored for w in group))
    if words:
        warnings.append(f"ignored words not in the built-in model's vocabulary: {', '.join(words)}")
        details["ignored_words"] = words
    return ProviderOutput(images=images, warnings=warnings, details=details)


def register(add, settings) -> None:
    """Entry point of the `easel.providers` group."""
    from ..keys import get_key

    add(DiffusersProvider(settings.device, settings.dtype, settings.max_cached_pipelines,
                          int(settings.max_cache_gb * 1e9), hf_token=get_key(settings.keys_path, "hf")))

