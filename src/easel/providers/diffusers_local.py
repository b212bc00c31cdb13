"""Local diffusers pipelines: loading (folder, hub cache, download), device and memory options, a cache of loaded
pipelines, and one call per request with per-image seeds."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (AuthenticationError, ContentPolicyError, EaselError, GenerationError, InvalidRequestError,
                      ModelNotFoundError, OutOfMemoryError, UnsupportedError)
from ..catalog import (CONTROLNET_MARKER, IP_ADAPTER_MARKER, UPSCALER_FILES, UPSCALER_MARKER, lora_files,
                       model_folders, names_a_file, upscaler_files, upscaler_names)
from ..upscalers import HIRES_UPSCALERS, LATENT_UPSCALERS
from . import fit
from .base import Batch, Progress, Provider, ProviderOutput
from .pipeline_cache import LoadedPipeline, PipelineCache

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
# load options any diffusers model accepts in `extra` (memory, then speed); part of the pipeline cache's key
MEMORY_OPTIONS = ("offload", "attention_slicing", "vae_slicing", "vae_tiling", "compile", "channels_last", "fuse_qkv")
OFFLOAD_MODES = ("none", "model", "sequential")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
OPERATIONS = {"generate": "generating", "edit": "inpainting", "vary": "making variations"}


def quiet_libraries() -> None:
    """Keep transformers' and diffusers' notices about optional backends, and their progress bars, out of the
    user's terminal (transformers' first, before diffusers' import reaches into it)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import transformers.utils.logging

    transformers.utils.logging.set_verbosity_error()  # the variables above count only before the first import
    transformers.utils.logging.disable_progress_bar()
    import diffusers.utils.logging
    import huggingface_hub.utils

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()  # "Fetching N files" of the hub cache


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


def _reach_hub_hint() -> str:
    """What to check when the hub cannot be reached, in the order that fixes it most often."""
    from huggingface_hub import constants

    if _offline():
        return "HF_HUB_OFFLINE is set: unset it to download."
    return (f"Check the network connection to {constants.ENDPOINT}, a proxy (HTTPS_PROXY) if this machine needs one, "
            f"and HF_ENDPOINT if you use a mirror; then run the command again.")


def make_scheduler(name: str, base_config: dict[str, Any]):
    import diffusers

    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


# what a pipeline's configuration is made of (configs, tokenizers, the scheduler), never its weights
CONFIG_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/spiece*"]


def checkpoint_kind(path: Path) -> str:
    """diffusers' name for the kind of a checkpoint (`v1`, `v2`, `xl_base`, `sd3`, `sd35_medium`, `sd35_large`,
    `flux-dev`, `flux-schnell`, ...), which names the hub repository whose configuration it loads with. It is
    inferred from the tensors' names and shapes (read from the header, no weights loaded)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    from ..checkpoints import checkpoint_family, tensor_shapes

    family = checkpoint_family(path)
    shapes = {key: _Shape(shape) for key, shape in tensor_shapes(path).items()}
    try:
        kind = infer_diffusers_model_type(shapes)
    except (KeyError, IndexError, AttributeError):  # a layout diffusers' rules do not expect
        kind = None
    expected = {"sd15": ("v1", "v2"), "sdxl": ("xl_base", "playground-v2-5"), "sd3": ("sd3", "sd35_medium",
                "sd35_large"), "flux": ("flux-dev", "flux-schnell")}[family]
    if kind not in expected or kind not in DIFFUSERS_DEFAULT_PIPELINE_PATHS:
        kind = expected[0]  # what the names say, where the sizes are not a release's (a small or pruned model)
    return kind


@dataclasses.dataclass(frozen=True)
class _Shape:
    """Stands for a tensor where only its shape is asked for."""

    shape: tuple[int, ...]


def checkpoint_config(path: Path, configs_dir: Path | None, token: str | None = None, download: bool = True) -> Path:
    """The pipeline configuration a single-file checkpoint loads with, with no network once it is on this machine:
    `configs_dir/<kind>` (a pipeline folder, weights optional), else the configuration of the kind's hub repository
    in the hub cache (there when the model was pulled, or its configuration fetched before), else, with `download`
    and network, that configuration fetched now (configs and tokenizers only, some megabytes) into `configs_dir`."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS
    from huggingface_hub import snapshot_download

    kind = checkpoint_kind(path)
    repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[kind]["pretrained_model_name_or_path"]
    own = configs_dir / kind if configs_dir is not None else None
    if own is not None and (own / "model_index.json").is_file():
        return own
    with contextlib.suppress(Exception):  # not in the cache: LocalEntryNotFoundError, OSError, ...
        cached = Path(snapshot_download(repo, allow_patterns=CONFIG_FILES, local_files_only=True, token=token))
        if (cached / "model_index.json").is_file():
            return cached
    missing = (f"{path.name} is a {kind} checkpoint, which loads with the configuration of {repo} (configs and "
               f"tokenizers, no weights), and that is not on this machine")
    if not download or _offline() or own is None:
        raise ModelNotFoundError(f"{missing}: run `easel models pull {path.name}` once with network access, or put "
                                 f"a pipeline folder of that kind in {own or 'EASEL_HOME/configs'}.", param="model")
    try:
        return Path(snapshot_download(repo, allow_patterns=CONFIG_FILES, local_dir=own, token=token))
    except Exception as exc:  # noqa: BLE001 - network failures come in many types
        raise ModelNotFoundError(f"{missing}, and the hub could not be reached to fetch it ({type(exc).__name__}). "
                                 f"{_reach_hub_hint()}", param="model") from None


def pull_model(spec: ModelSpec, token: str | None = None, configs_dir: Path | None = None) -> str:
    """Download a hub model into the hub cache (resumable); returns the snapshot folder. For a checkpoint file,
    the configuration it loads with."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if spec.checkpoint:
        return str(checkpoint_config(spec.local_path, configs_dir, token=token))
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
            f"{spec.name} is not on this machine and the hub could not be reached to download it "
            f"({type(exc).__name__}). {_reach_hub_hint()}", param="model",
        ) from None


class DiffusersProvider(Provider):
    """Runs local diffusers pipelines, Easel's built-in model included."""

    name = "diffusers"

    def __init__(self, device: str | None = None, dtype: str | None = None, max_cached: int = 2,
                 max_cache_bytes: int = 0, hf_token: str | None = None, defaults: dict[str, Any] | None = None,
                 loras_dir: Path | None = None, embeddings_dir: Path | None = None, configs_dir: Path | None = None,
                 controlnets_dir: Path | None = None, upscalers_dir: Path | None = None,
                 ip_adapters_dir: Path | None = None):
        """`defaults`: the server's load options (compile, channels_last, fuse_qkv), below a request's own;
        `loras_dir`: where LoRAs named by a request are (`<name>.safetensors`); `embeddings_dir`: where the
        textual-inversion embeddings that prompts use by name are; `configs_dir`: the configurations that
        single-file checkpoints load with (see `checkpoint_config`); `controlnets_dir`: ControlNet models by name."""
        self.defaults = dict(defaults or {})
        self.loras_dir = loras_dir
        self.embeddings_dir = embeddings_dir
        self.configs_dir = configs_dir
        self.controlnets_dir = controlnets_dir
        self.upscalers_dir = upscalers_dir
        self.ip_adapters_dir = ip_adapters_dir
        self._lora_hashes: dict[tuple, str] = {}  # (file, mtime) -> A1111's short hash (sha256, 12 hex digits)
        self.device_preference = device
        self.dtype_preference = dtype
        self.cache = PipelineCache(max_cached, max_cache_bytes)
        self.hf_token = hf_token

    def check(self, spec: ModelSpec, request: ImageRequest) -> None:
        """Refuse before queueing: a bad memory option, an add-on that is missing or made for another family, or a
        hub model that is not cached while offline."""
        self.memory_options(spec, {k: v for k, v in request.extra.items() if k in MEMORY_OPTIONS})
        # each add-on exists, and was made for this model's family (read from its files, when they are here)
        folder = self._pipeline_folder(spec) if request.loras or request.control or request.ip_adapter else None
        denoiser = fit.denoiser_config(folder)
        for name in request.loras:
            second_encoder = folder is not None and (folder / "text_encoder_2").is_dir()
            _refuse(fit.lora_misfit(name, self.lora_file(name), denoiser, spec.name, second_encoder), "loras")
        for unit in request.control:
            controlnet = fit.read_config(self.controlnet_folder(unit.model, download=False))
            _refuse(fit.controlnet_misfit(unit.model, controlnet, denoiser, spec.name), "control")
        if request.ip_adapter is not None:
            name = request.ip_adapter.model
            adapter = self.ip_adapter_folder(name, download=False)
            _refuse(fit.ip_adapter_misfit(name, adapter, denoiser, spec.name), "ip_adapter")
        if request.hires_scale and request.hires_upscaler not in HIRES_UPSCALERS:
            self.upscaler_model(request.hires_upscaler, download=False, param="hires_upscaler")
        if spec.checkpoint and _offline():
            checkpoint_config(spec.local_path, self.configs_dir, download=False)
        if spec.local_path is None and _offline() and not spec.is_available_locally():
            raise ModelNotFoundError(f"{spec.name} is not in the hub cache and HF_HUB_OFFLINE is set. "
                                     f"With network access, run `easel models pull {spec.name}`.", param="model")

    def _pipeline_folder(self, spec: ModelSpec) -> Path | None:
        """The model's folder where it is on this machine already (none for a single file: its configs say less)."""
        if spec.checkpoint:
            return None
        if spec.local_path is not None:
            return Path(spec.local_path)
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec.source, local_files_only=True, token=self.hf_token))
        except Exception:  # noqa: BLE001 - not in the hub cache: it is checked when it has been downloaded
            return None

    def lora_file(self, name: str) -> Path:
        """A LoRA's file: `<name>.safetensors` in the loras folder, or a path (which the request check allows only
        where the caller is the machine's user). Unknown: an error listing the LoRAs there are."""
        if names_a_file(name):
            path = Path(name).expanduser()
        else:  # in the loras folder only (none configured: no LoRA by name)
            file = name if name.endswith(".safetensors") else f"{name}.safetensors"
            path = self.loras_dir / file if self.loras_dir is not None else None
        if path is None or not path.is_file():
            there = sorted(lora_files(self.loras_dir)) or ["none"]
            raise InvalidRequestError(f"No LoRA {name!r} (the loras folder has: {', '.join(there)}).", param="loras")
        return path

    def controlnet_folder(self, name: str, download: bool = True) -> Path | None:
        """A ControlNet model's folder (see `_named_folder`)."""
        return _named_folder(name, self.controlnets_dir, CONTROLNET_MARKER, "ControlNet", "control", self.hf_token,
                             download)

    def ip_adapter_folder(self, name: str, download: bool = True) -> Path | None:
        """An IP-Adapter's folder: its weights (one .safetensors) beside its `image_encoder` (see `_named_folder`)."""
        return _named_folder(name, self.ip_adapters_dir, IP_ADAPTER_MARKER, "IP-Adapter", "ip_adapter",
                             self.hf_token, download)

    def upscaler_model(self, name: str, download: bool = True, param: str = "upscaler") -> Path | None:
        """An upscaler model: a single file of the upscalers folder (ESRGAN family; by its stem or file name, or its
        path where the request check allows one), else a pipeline folder (SD's x4 upscaler; see `_named_folder`)."""
        files = upscaler_files(self.upscalers_dir)
        path = Path(name).expanduser() if names_a_file(name) else (self.upscalers_dir or Path("-")) / name
        path = files.get(name, path)
        if path.suffix.lower() in UPSCALER_FILES and path.is_file():
            if not _spandrel_imports():  # refused before the job is queued
                raise _without_spandrel(name, param)
            return path
        return _named_folder(name, self.upscalers_dir, UPSCALER_MARKER, "upscaler", param, self.hf_token, download,
                             upscaler_names(self.upscalers_dir))

    def upscale(self, image, scale: float, name: str, tile: int = 256):
        """`image` through an upscaler model, which makes it its own factor larger (its caller resizes to the size it
        wants): an ESRGAN-family file (Real-ESRGAN, 4x-UltraSharp, SwinIR, ...; loaded by spandrel, as ComfyUI
        does) or SD's x4 upscaler pipeline; in tiles of `tile` pixels (0: whole) so that its memory stays that of
        one tile. The model is loaded once and kept with the pipelines."""
        import torch

        from ..upscalers import tiled

        model = self.upscaler_model(name)
        device = pick_device(self.device_preference)
        dtype = pick_dtype(device, "float16", self.dtype_preference)
        if model.is_file():
            loaded = self.cache.get((str(model), model.stat().st_mtime_ns, device, "spandrel"),
                                    lambda: _load_spandrel(model, name, device, dtype))
            factor = loaded.pipe.scale

            def one(part):
                return _spandrel_upscale(loaded.pipe, part)
        else:
            def load() -> LoadedPipeline:
                import diffusers

                started = time.perf_counter()
                try:
                    pipe = diffusers.DiffusionPipeline.from_pretrained(model, dtype=dtype)
                except Exception as exc:  # noqa: BLE001 - not an upscaler pipeline, or a damaged one
                    raise _does_not_fit(f"The upscaler {name!r}", exc, "upscaler") from None
                pipe.set_progress_bar_config(disable=True)
                pipe.to(device)
                return LoadedPipeline(pipe, type(pipe.scheduler), dict(pipe.scheduler.config),
                                      time.perf_counter() - started)

            loaded = self.cache.get((str(model), device, str(dtype), "upscaler"), load)
            factor = 4

            def one(part):
                return loaded.pipe(prompt="", image=part, num_inference_steps=20,
                                   generator=torch.Generator("cpu").manual_seed(0)).images[0]

        with loaded.lock, torch.no_grad():
            if not tile:
                return one(image.convert("RGB"))
            return tiled(image, factor, tile, max(8, tile // 8), one)

    # -- loading ---------------------------------------------------------------------------------------------------
    def release(self) -> int:
        import gc

        held = self.cache.clear()
        gc.collect()
        if pick_device(self.device_preference) == "cuda":
            import torch

            torch.cuda.empty_cache()
        _return_freed_memory()
        return held

    def warm(self, spec: ModelSpec) -> None:
        self.load(spec)

    def memory_options(self, spec: ModelSpec, extra: dict[str, Any]) -> dict[str, Any]:
        """The load options of a request: its own, else the server's (`EASEL_COMPILE`, ...), else the family's."""
        offload = extra.get("offload", spec.family.offload or "none")
        if offload not in OFFLOAD_MODES:
            raise InvalidRequestError(f"`offload` must be one of {', '.join(OFFLOAD_MODES)} but is {offload!r}.",
                                      param="offload")
        compile_mode = extra.get("compile", self.defaults.get("compile", "none"))
        if compile_mode not in COMPILE_MODES:
            raise InvalidRequestError(f"`compile` must be one of {', '.join(COMPILE_MODES)} but is "
                                      f"{compile_mode!r}.", param="compile")
        flags = ("attention_slicing", "vae_slicing", "vae_tiling", "channels_last", "fuse_qkv")
        return {"offload": offload, "compile": compile_mode,
                **{name: bool(extra.get(name, self.defaults.get(name, False))) for name in flags}}

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
        with pipeline_errors(spec, "loading"):
            cls = _pipeline_class(spec.family.pipeline)
            if spec.checkpoint:
                config = checkpoint_config(spec.local_path, self.configs_dir, token=self.hf_token)
                pipe = cls.from_single_file(str(spec.local_path), config=str(config), local_files_only=True,
                                            torch_dtype=dtype)
            elif spec.local_path is not None:
                pipe = cls.from_pretrained(spec.local_path, dtype=dtype)
            else:
                pipe = self._load_from_hub(cls, spec, dtype)
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
        with pipeline_errors(spec, "loading"):
            _speed_up(pipe, device, memory)
        return LoadedPipeline(pipe, type(pipe.scheduler), dict(pipe.scheduler.config),
                              time.perf_counter() - started)

    def _load_from_hub(self, cls, spec: ModelSpec, dtype):
        """From the hub cache's snapshot folder, with no network; download only when it is missing and the hub may
        be reached. The id itself never goes to `from_pretrained`, which would open a folder of that name in the
        working directory."""
        folder = self._pipeline_folder(spec)
        if folder is None:
            if _offline():
                raise ModelNotFoundError(
                    f"{spec.name} is not in the hub cache and HF_HUB_OFFLINE is set. "
                    f"With network access, run `easel models pull {spec.name}`.", param="model",
                )
            folder = pull_model(spec, self.hf_token)
        return cls.from_pretrained(folder, dtype=dtype)

    # -- running ---------------------------------------------------------------------------------------------------
    def _use_loras(self, loaded: LoadedPipeline, loras: dict[str, float]) -> dict[str, str]:
        """Make `loras` the pipeline's active adapters at their weights, loading each file once per pipeline (and
        again when the file changed); without LoRAs, every adapter is off and the pipeline runs as if none had
        ever been loaded. Called with the pipeline's lock held. Returns each LoRA's short hash, as A1111 records
        them."""
        pipe = loaded.pipe
        if not loras:
            if loaded.adapters:
                pipe.disable_lora()
            return {}
        active, hashes = [], {}
        for name in loras:
            path = self.lora_file(name)
            key = (str(path.resolve()), path.stat().st_mtime_ns)
            if key not in loaded.adapters:
                loaded.lora_serial += 1  # a new name: one let go (PipelineCache.trim) may have had this count
                adapter = f"easel_lora_{loaded.lora_serial}"
                try:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
                except Exception as exc:  # noqa: BLE001 - not a LoRA, or one for another architecture
                    with contextlib.suppress(Exception):
                        pipe.delete_adapters(adapter)
                    raise _does_not_fit(f"The LoRA {name!r}", exc, "loras") from None
                loaded.adapters[key] = adapter
            active.append(loaded.adapters[key])
            loaded.touch(("lora", loaded.adapters[key]))
            if key not in self._lora_hashes:
                self._lora_hashes[key] = _sha256(path)[:12]
            hashes[Path(name).stem if os.sep in name else name] = self._lora_hashes[key]
        pipe.enable_lora()
        pipe.set_adapters(active, adapter_weights=list(loras.values()))
        return hashes

    @contextlib.contextmanager
    def _image_prompt(self, loaded: LoadedPipeline, pipe, prompt) -> Iterator[dict[str, Any]]:
        """The pipeline call's arguments for an IP-Adapter image prompt, with the adapter loaded into the UNet for
        that call only (a UNet that holds one needs an image prompt in every call); its image encoder is loaded
        once and kept with the pipeline. Called with the pipeline's lock held."""
        if prompt is None:
            yield {}
            return
        folder = self.ip_adapter_folder(prompt.model)
        weights = sorted(folder.glob("*.safetensors"))
        if len(weights) != 1:
            raise InvalidRequestError(f"The IP-Adapter {prompt.model!r} needs one .safetensors file beside its "
                                      f"image_encoder (it has {len(weights)}).", param="ip_adapter")
        encoder = loaded.derived.get(("ip-encoder", str(folder)))
        if encoder is not None:
            pipe.register_modules(image_encoder=encoder)
        try:
            pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights[0].name,
                                 image_encoder_folder="image_encoder")
        except Exception as exc:  # noqa: BLE001 - not an IP-Adapter, or one for another architecture
            with contextlib.suppress(Exception):
                pipe.unload_ip_adapter()
            raise _does_not_fit(f"The IP-Adapter {prompt.model!r}", exc, "ip_adapter") from None
        loaded.derived[("ip-encoder", str(folder))] = pipe.image_encoder
        loaded.touch(("ip-encoder", str(folder)))
        try:
            pipe.set_ip_adapter_scale(prompt.scale)
            yield {"ip_adapter_image": prompt.image.convert("RGB")}
        finally:
            pipe.unload_ip_adapter()  # the next call runs as if no adapter had ever been loaded

    def _controlled(self, loaded: LoadedPipeline, spec: ModelSpec, mode: str, units: list) -> Any:
        """The family's ControlNet pipeline for `mode` over the loaded one (its weights shared, `from_pipe`), with
        these control models, each loaded once per pipeline. Called with the pipeline's lock held."""
        import diffusers

        folders = tuple(str(self.controlnet_folder(unit.model).resolve()) for unit in units)
        key = ("control", mode, folders)
        if key not in loaded.derived:
            pipe = loaded.pipe
            denoiser = getattr(pipe, "unet", None) or pipe.transformer
            model_class = getattr(diffusers, spec.family.controlnet_model)
            models = []
            for folder in folders:
                if ("controlnet", folder) not in loaded.derived:
                    try:
                        model = model_class.from_pretrained(folder, torch_dtype=denoiser.dtype)
                    except Exception as exc:  # noqa: BLE001 - not a ControlNet, or a damaged one
                        raise _does_not_fit(f"The ControlNet {Path(folder).name!r}", exc, "control") from None
                    loaded.derived[("controlnet", folder)] = model.to(denoiser.device)
                models.append(loaded.derived[("controlnet", folder)])
            multi = getattr(diffusers, spec.family.controlnet_model.replace("ControlNet", "MultiControlNet"))
            controlnet = models[0] if len(models) == 1 else multi(models)
            try:
                controlled = getattr(diffusers, spec.family.controlnet[mode]).from_pipe(pipe, controlnet=controlnet)
            except Exception as exc:  # noqa: BLE001 - a ControlNet made for another architecture
                raise _does_not_fit("The ControlNet", exc, "control") from None
            controlled.set_progress_bar_config(disable=True)
            loaded.derived[key] = controlled
        for folder in folders:
            loaded.touch(("controlnet", folder))
        return loaded.derived[key]

    def _use_embeddings(self, loaded: LoadedPipeline, spec: ModelSpec, requests: list[ImageRequest]) -> list[str]:
        """Load the embeddings of the embeddings folder that the batch's prompts name (as words, any case), once per
        pipeline, as A1111 does; a prompt that names none runs as before. The names used, for the record."""
        files = lora_files(self.embeddings_dir) if spec.family.embeddings else {}
        if not files:
            return []
        text = " ".join(f"{r.prompt} {r.negative_prompt or ''}" for r in requests)
        used = [name for name in files if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.IGNORECASE)]
        for name in used:
            if name in loaded.embeddings:
                continue
            try:
                _load_embedding(loaded.pipe, files[name], name)
            except Exception as exc:  # noqa: BLE001 - not an embedding, or one for another text encoder
                raise _does_not_fit(f"The embedding {name!r}", exc, "prompt") from None
            loaded.embeddings.add(name)
        return used

    def run_batch(self, batch: Batch, progress: Progress) -> list[ProviderOutput]:
        """Run compatible requests (same mode, size, steps, guidance, scheduler and options) as one pipeline
        call, each image from its own seeded generator, and split the images back per request."""
        spec, first = batch.spec, batch.first
        if first.mode != "generate" and len(batch) > 1:
            raise ValueError("edits and variations run one request per call")

        # 1. the pipeline: memory options are load-time settings, part of the cache key
        extra = dict(first.extra)
        memory = self.memory_options(spec, {k: extra.pop(k) for k in MEMORY_OPTIONS if k in extra})
        loaded = self.load(spec, memory)

        # 2. prompts, one generator per image, size, guidance and the family's own options
        kwargs = _text_inputs(batch, extra)

        # 3. the input image (and mask) of an edit or a variation
        kwargs.update(_image_inputs(spec, first, len(batch.all_seeds)))

        # 4. progress, previews and interruption at the end of every step
        total = first.num_inference_steps
        if "strength" in kwargs and "mask_image" not in kwargs:  # image-to-image runs the last strength share
            total = max(1, int(round(total * kwargs["strength"])))

        final: dict[str, Any] = {}

        def on_step_end(pipe, i, t, tensors):
            latents = final["latents"] = tensors.get("latents")
            progress.step(i + 1, total,
                          (lambda indices: _preview(pipe, spec, first, latents, indices, loaded.preview_decoder(spec)))
                          if latents is not None else None)
            if progress.stopped:
                pipe._interrupt = True
            return {}

        kwargs["callback_on_step_end"] = on_step_end

        # 5. denoise, with a fresh scheduler for every call (timesteps and step state never leak between calls)
        with loaded.lock, pipeline_errors(spec, OPERATIONS[first.mode]):
            loaded.calls += 1  # the add-ons this call uses are the last to go (see PipelineCache.trim)
            lora_hashes = self._use_loras(loaded, first.loras)  # the batch's LoRAs on, every other one off
            used = self._use_embeddings(loaded, spec, batch.requests)
            if spec.family.weights:
                kwargs = _weigh_prompts(loaded.pipe, kwargs)
            if first.control:
                pipe = self._controlled(loaded, spec, first.mode, first.control)
                kwargs.update(_control_inputs(pipe, first))
            else:
                pipe = loaded.for_mode(first.mode)
            pipe.scheduler = (make_scheduler(first.scheduler, loaded.scheduler_config) if first.scheduler
                              else loaded.scheduler_class.from_config(loaded.scheduler_config))
            with self._image_prompt(loaded, pipe, first.ip_adapter) as image_prompt:
                out = pipe(**kwargs, **image_prompt)

        self.cache.trim(keep=loaded)  # what this call loaded counts against EASEL_MAX_CACHE_GB from now on

        # 6. the safety checker's verdict, the requested size, the unmasked pixels, and the images per request
        flagged = getattr(out, "nsfw_content_detected", None)
        if flagged and any(flagged):
            raise ContentPolicyError(
                f"{spec.name}'s safety checker flagged the image (category: sexual content).", param="prompt"
            )
        images, details = _to_requested_size(first, list(out.images))
        if lora_hashes:
            details["lora_hashes"] = lora_hashes
        if used:
            details["embeddings"] = used
        ignored = list(getattr(out, "ignored_words", [[]] * len(images)))
        chosen = list(getattr(out, "chosen_words", None) or [[]] * len(images))
        read = list(getattr(out, "read_as", None) or [""] * len(images))
        outputs = [_output(group, words, picks, reading[0], details) for group, words, picks, reading in
                   zip(batch.split(images), batch.split(ignored), batch.split(chosen), batch.split(read))]
        # the hires fix's latent upscale: where the second pass can denoise latents at the larger size (hires
        # requests run alone: one output)
        if first.hires_scale and first.hires_upscaler in LATENT_UPSCALERS and spec.family.latent_space == "vae" \
                and not spec.family.keeps_native_size and final.get("latents") is not None:
            outputs[0].latents = [latent.detach().cpu() for latent in final["latents"]]
        return outputs


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


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_spandrel(path: Path, name: str, device: str, dtype) -> LoadedPipeline:
    """An ESRGAN-family upscaler file through spandrel (which reads the architecture and its size from the weights;
    a `.pth` is unpickled with spandrel's restricted unpickler, which builds no other objects), in half precision
    where the architecture allows it."""
    import spandrel  # `upscaler_model` made sure it imports

    started = time.perf_counter()
    try:
        model = spandrel.ModelLoader().load_from_file(path)
    except Exception as exc:  # noqa: BLE001 - an architecture spandrel does not know, or a damaged file
        raise _does_not_fit(f"The upscaler {name!r}", exc, "upscaler") from None
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise InvalidRequestError(f"The upscaler {name!r} is a {model.architecture.name} model for {model.purpose}, "
                                  "not an upscaler.", param="upscaler")
    model.to(device).eval()
    if device != "cpu" and model.supports_half and str(dtype) == "torch.float16":
        model.half()
    return LoadedPipeline(model, None, {}, time.perf_counter() - started)


@functools.lru_cache(maxsize=1)
def _spandrel_imports() -> bool:
    """Whether spandrel imports: it may be missing, or installed with a torchvision that does not import beside
    this torch (PyPI's Linux torchvision is a CUDA build)."""
    try:
        import spandrel  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def _without_spandrel(name: str, param: str) -> UnsupportedError:
    return UnsupportedError(f"The upscaler {name!r} is a single-file (ESRGAN-family) model, which Easel loads with "
                            "spandrel: pip install 'easel[esrgan]' (spandrel needs a torchvision that imports beside "
                            "this torch).", param=param)


def _spandrel_upscale(model, image):
    """One picture through a spandrel model (a tensor of 0..1, which it pads to the sizes it takes)."""
    import numpy as np
    import PIL.Image
    import torch

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    out = model(pixels.to(model.device, model.dtype))[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray(np.round(out * 255).astype(np.uint8))


def _return_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc keeps them for the process otherwise, and a released
    model would still show in the server's RSS)."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(libc).malloc_trim(0)


def _refuse(misfit: str | None, param: str) -> None:
    if misfit is not None:
        raise InvalidRequestError(misfit, param=param)


def _does_not_fit(what: str, exc: Exception, param: str) -> InvalidRequestError:
    """A LoRA or embedding file that the pipeline refused (not one, or one for another architecture)."""
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    return InvalidRequestError(f"{what} does not fit this model: {type(exc).__name__}: {detail}", param=param)


def _to_requested_size(request: ImageRequest, images: list) -> tuple[list, dict[str, Any]]:
    """Resize what a model that keeps its native size made to the requested size, and say so in the details (an
    edit is pasted back into its picture by the runner, which keeps every pixel outside its mask exact)."""
    from PIL import Image

    size = (request.width, request.height)
    if not images or images[0].size == size:
        return images, {}
    return [im.resize(size, Image.LANCZOS) for im in images], {"resized_from": f"{images[0].width}x{images[0].height}"}


def _speed_up(pipe, device: str, options: dict[str, Any]) -> None:
    """The speed options: TF32 matmuls on CUDA, fused QKV projections, channels-last convolutions, and
    `torch.compile` of the denoiser and the VAE decoder (compiled on the first call of each shape)."""
    import torch

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if options["fuse_qkv"] and hasattr(pipe, "fuse_qkv_projections"):
        pipe.fuse_qkv_projections()
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    if options["channels_last"]:
        for module in (getattr(pipe, "unet", None), vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if options["compile"] != "none":
        mode = options["compile"]
        if denoiser is not None:
            denoiser.compile(mode=mode, fullgraph=False, dynamic=False)
        if vae is not None:
            vae.decoder.compile(mode=mode, fullgraph=False, dynamic=False)


def _text_inputs(batch: Batch, extra: dict[str, Any]) -> dict[str, Any]:
    """The pipeline arguments every mode takes: prompts and seeded generators per image, steps, guidance, size."""
    import torch

    spec, first = batch.spec, batch.first
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt for r, seeds in batch for _ in seeds],
        "num_inference_steps": first.num_inference_steps,
        spec.family.cfg_param: first.guidance_scale,
        "generator": [torch.Generator("cpu").manual_seed(s) for s in batch.all_seeds],
        "output_type": "pil",
        **extra,
    }
    if not spec.family.keeps_native_size:
        kwargs.update(width=first.width, height=first.height)
    if any(r.negative_prompt for r in batch.requests):
        kwargs["negative_prompt"] = [r.negative_prompt or "" for r, seeds in batch for _ in seeds]
    return kwargs


def _named_folder(name: str, root: Path | None, marker: str, what: str, param: str, token: str | None,
                  download: bool, there: list[str] | None = None) -> Path | None:
    """A model folder named by a request: `<name>` in `root`, a hub id (from the hub cache, downloaded where it may
    be), or a folder's path (which the request check allows only for the machine's user). None: a hub id to
    download when it runs. Unknown: an error listing the ones there are."""
    from ..catalog import is_hub_id

    if is_hub_id(name) and not (root is not None and (root / name).is_dir()):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, local_files_only=True, token=token))
        except Exception:  # noqa: BLE001 - not in the hub cache
            if _offline():
                raise InvalidRequestError(f"The {what} {name!r} is not in the hub cache and HF_HUB_OFFLINE is set.",
                                          param=param) from None
            return Path(snapshot_download(name, token=token)) if download else None
    path = Path(name).expanduser() if names_a_file(name) else (root / name if root is not None else None)
    if path is None or not (path / marker).is_file():
        there = model_folders(root, marker) if there is None else there
        raise InvalidRequestError(f"No {what} {name!r} (the {root.name if root else what + 's'} folder has: "
                                  f"{', '.join(there) or 'none'}).", param=param)
    return path


def _control_inputs(pipe, request: ImageRequest) -> dict[str, Any]:
    """A ControlNet pipeline's arguments: each unit's map at the requested size (as `control_image` where the
    pipeline takes one, else as `image`), weight and span of the steps."""
    maps = [unit.map.resize((request.width, request.height)) for unit in request.control]
    single = len(maps) == 1

    def each(values: list):
        return values[0] if single else values

    takes = inspect.signature(pipe.__call__).parameters
    return {"control_image" if "control_image" in takes else "image": each(maps),
            "controlnet_conditioning_scale": each([u.weight for u in request.control]),
            "control_guidance_start": each([u.start for u in request.control]),
            "control_guidance_end": each([u.end for u in request.control])}


def _weigh_prompts(pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Prompts in A1111's emphasis syntax (`(word:1.3)`, `[word]`, `BREAK`) or longer than the text encoder's 77
    tokens, as embeddings: compel encodes each chunk of 75 tokens and weighs its words; A1111's syntax is read by
    `prompt_weights` and handed to compel as compel's own prompt objects (compel's text syntax is another).
    Prompts that need neither go to the pipeline as text, as before."""
    from ..prompts import prompt_weights

    prompts, negatives = kwargs["prompt"], kwargs.get("negative_prompt")
    xl = getattr(pipe, "text_encoder_2", None) is not None
    zero_negative = negatives is None and xl and pipe.config.force_zeros_for_empty_prompt  # as the pipeline does
    chunked = {text: prompt_weights(text) for text in {*prompts, *(negatives or [])}}
    limit = pipe.tokenizer.model_max_length
    if all(chunks == [[(text, 1.0)]] and len(pipe.tokenizer(text).input_ids) <= limit
           for text, chunks in chunked.items()):
        return kwargs
    import torch
    from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType
    from compel.prompt_parser import Conjunction, FlattenedPrompt

    negatives = negatives or [""] * len(prompts)
    chunked.setdefault("", [[("", 1.0)]])
    manager = DiffusersTextualInversionManager(pipe)
    device = getattr(pipe, "_execution_device", pipe.device)
    hidden = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if xl
              else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    encoders = [Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, returned_embeddings_type=hidden,
                       textual_inversion_manager=manager, truncate_long_prompts=False, device=device)]
    if xl:
        encoders.append(Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2, requires_pooled=True,
                               returned_embeddings_type=hidden, textual_inversion_manager=manager,
                               truncate_long_prompts=False, device=device))

    def encode(text: str):
        chunks = chunked[text]
        prompt = Conjunction([FlattenedPrompt([(t, w) for t, w in chunk if t] or [("", 1.0)]) for chunk in chunks])
        per_encoder = [c.build_conditioning_tensor_for_conjunction(prompt)[0] for c in encoders]
        plain = " ".join("".join(t for t, _ in chunk) for chunk in chunks)
        return per_encoder, encoders[-1].conditioning_provider.get_pooled_embeddings([plain]) if xl else None

    texts = [*prompts, *negatives]
    with torch.no_grad():
        encoded = {text: encode(text) for text in set(texts)}
        # as long as the longest (padded with the empty prompt's chunk), per encoder; then the encoders side by side
        columns = [encoders[i].pad_conditioning_tensors_to_same_length([encoded[t][0][i] for t in texts])
                   for i in range(len(encoders))]
    embeds = torch.cat([torch.cat(row, dim=-1) for row in zip(*columns)])
    out = {k: v for k, v in kwargs.items() if k not in ("prompt", "negative_prompt")}
    out["prompt_embeds"], out["negative_prompt_embeds"] = embeds[:len(prompts)], embeds[len(prompts):]
    if xl:
        out["pooled_prompt_embeds"] = torch.cat([encoded[t][1] for t in prompts])
        out["negative_pooled_prompt_embeds"] = torch.cat([encoded[t][1] for t in negatives])
    if zero_negative:
        out["negative_prompt_embeds"] = torch.zeros_like(out["negative_prompt_embeds"])
        out["negative_pooled_prompt_embeds"] = torch.zeros_like(out["negative_pooled_prompt_embeds"])
    return out


def _image_inputs(spec: ModelSpec, request: ImageRequest, count: int) -> dict[str, Any]:
    """`image`, `strength` and (for an edit) `mask_image`, at the requested size unless the model keeps its own.

    Several images get one copy of the input each: the image-to-image pipelines encode `image[i]` with
    `generator[i]`, and SD3's encodes an empty batch (and fails) when there is one image for several generators."""
    if request.mode not in ("edit", "vary"):
        return {}
    if not hasattr(request.image, "convert"):  # latents (the hires fix's latent upscale): taken as they are
        latents = request.image[None]
        return {"image": latents.repeat(count, 1, 1, 1) if count > 1 else latents,
                "strength": request.strength if request.strength is not None else 1.0}
    image = request.image.convert("RGB")
    if not spec.family.keeps_native_size:
        image = image.resize((request.width, request.height))
    kwargs = {"image": [image] * count if count > 1 else image,
              "strength": request.strength if request.strength is not None else 1.0}
    if request.mode == "edit" and request.mask is not None:
        kwargs["mask_image"] = request.mask.convert("L").resize(image.size)
    return kwargs


@contextlib.contextmanager
def pipeline_errors(spec: ModelSpec, doing: str) -> Iterator[None]:
    """The one place where what diffusers, transformers and torch raise becomes an Easel error naming the model and
    what it was doing ("loading", "generating", "inpainting", "making variations")."""
    import torch

    try:
        yield
    except EaselError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()  # what the failed call held goes back, so that the next request fits
        raise OutOfMemoryError(f"Out of GPU memory {doing} {spec.name}: try a smaller size or batch, offload=model "
                               f"or vae_tiling.") from exc
    except Exception as exc:
        if doing == "loading":
            raise GenerationError(f"{spec.name} could not be loaded: {type(exc).__name__}: {exc}") from exc
        if isinstance(exc, (ValueError, TypeError)):  # the pipeline's own check_inputs refused an argument
            raise InvalidRequestError(f"{spec.name} rejected the request while {doing}: {exc}") from exc
        raise GenerationError(f"{spec.name} failed while {doing}: {type(exc).__name__}: {exc}") from exc


def _preview(pipe, spec: ModelSpec, request: ImageRequest, latents, indices: list[int], tiny=None) -> list | None:
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


def _output(images: list, ignored: list[list[str]], chosen: list[list[str]], read_as: str,
            details: dict[str, Any]) -> ProviderOutput:
    """One request's output; `chosen`: the words the model chose where the caption left them out, per image;
    `read_as`: the caption as the built-in model read it, where it put the words in another order ("" where not)."""
    details = dict(details)
    warnings = []
    words = list(dict.fromkeys(w for group in ignored for w in group))
    if words:
        warnings.append(f"ignored words not in the built-in model's vocabulary: {', '.join(words)}")
        details["ignored_words"] = words
    if any(chosen):
        details["chosen_words"] = chosen
    if read_as:
        details["read_as"] = read_as
    return ProviderOutput(images=images, warnings=warnings, details=details)


def register(add, settings) -> None:
    """Entry point of the `easel.providers` group."""
    from ..keys import get_key

    add(DiffusersProvider(settings.device, settings.dtype, settings.max_cached_pipelines,
                          int(settings.max_cache_gb * 1e9), hf_token=get_key(settings.keys_path, "hf"),
                          defaults={"compile": settings.compile, "channels_last": settings.channels_last,
                                    "fuse_qkv": settings.fuse_qkv}, loras_dir=settings.loras_folder,
                          embeddings_dir=settings.embeddings_folder, configs_dir=settings.configs_folder,
                          controlnets_dir=settings.controlnets_folder, upscalers_dir=settings.upscalers_folder,
                          ip_adapters_dir=settings.ip_adapters_folder))

