"""The one loader: a pipeline from a folder, the hub cache (downloaded where it may be) or a single-file checkpoint,
on a device and dtype, with its load options (memory and speed) read as data and applied in one place."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...catalog import model_folders, names_a_file
from ...checkpoints import gguf_file
from ...errors import AuthenticationError, EaselError, InvalidRequestError, ModelNotFoundError, UnsupportedError
from . import components, memory
from .cache import LoadedPipeline
from .errors import pipeline_errors
from .quantize import at_load, check_quantize, quantize_denoiser

if TYPE_CHECKING:
    from ...catalog import ModelSpec

# load options any diffusers model accepts in `extra` (memory, then speed); part of the pipeline cache's key
LOAD_OPTIONS = ("offload", "attention_slicing", "vae_slicing", "vae_tiling", "compile", "channels_last", "fuse_qkv",
                "quantize", "base")
OFFLOAD_MODES = ("auto", "none", "model", "group", "sequential")  # auto: the memory plan chooses
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
FLAGS = ("attention_slicing", "vae_slicing", "vae_tiling", "channels_last", "fuse_qkv")
# the weights of a pipeline's own denoiser, which a GGUF file replaces (not downloaded with its base)
DENOISER_WEIGHTS = ["transformer/*.safetensors", "transformer/*.bin", "transformer/*.gguf"]
# what a pipeline's configuration is made of (configs, tokenizers, the scheduler), never its weights
CONFIG_FILES = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/spiece*"]


def quiet_libraries() -> None:
    """Keep transformers' and diffusers' notices about optional backends, and their progress bars, out of the
    user's terminal (transformers' first, before diffusers' import reaches into it)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("torchao", "torch.utils._pytree"):  # torchao's import notices (its CUDA kernels, on a CPU build)
        logging.getLogger(name).setLevel(logging.ERROR)
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


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def reach_hub_hint() -> str:
    """What to check when the hub cannot be reached, in the order that fixes it most often."""
    from huggingface_hub import constants

    if offline():
        return "HF_HUB_OFFLINE is set: unset it to download."
    return (f"Check the network connection to {constants.ENDPOINT}, a proxy (HTTPS_PROXY) if this machine needs one, "
            f"and HF_ENDPOINT if you use a mirror; then run the command again.")


@dataclasses.dataclass(frozen=True)
class Loader:
    """Where models come from (the hub token, the configurations single-file checkpoints load with) and what
    they run on (the device and dtype preferred, the server's load options below a request's own)."""

    device: str | None = None
    dtype: str | None = None
    token: str | None = None
    configs_dir: Path | None = None
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    def options(self, spec: ModelSpec, extra: dict[str, Any]) -> dict[str, Any]:
        """The load options of a request: its own, else the server's (`EASEL_COMPILE`, ...), else the family's."""
        offload = extra.get("offload", "auto")
        if offload not in OFFLOAD_MODES:
            raise InvalidRequestError(f"`offload` must be one of {', '.join(OFFLOAD_MODES)} but is {offload!r}.",
                                      param="offload")
        compile_mode = extra.get("compile", self.defaults.get("compile", "none"))
        if compile_mode not in COMPILE_MODES:
            raise InvalidRequestError(f"`compile` must be one of {', '.join(COMPILE_MODES)} but is "
                                      f"{compile_mode!r}.", param="compile")
        quantize = extra.get("quantize", self.defaults.get("quantize", "none"))
        device = pick_device(self.device)
        check_quantize(spec, quantize, "quantize" in extra, device,
                       lambda: pick_dtype(device, spec.family.dtype, self.dtype))
        flags = {name: bool(extra.get(name, self.defaults.get(name, False))) for name in FLAGS}
        if quantize == "int8_dynamic" and flags["fuse_qkv"]:
            raise InvalidRequestError("`quantize=int8_dynamic` does not take `fuse_qkv`, which fuses float weights: "
                                      "leave one of them out.", param="quantize")
        return {"offload": offload, "compile": compile_mode, "quantize": quantize, **flags}

    def record(self, options: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        """What an image's parameters keep of how its model was loaded: the load options that change its pixels (a
        server's default included, which the request does not carry), and a GGUF denoiser's file and quantization."""
        kept = {"quantize": options["quantize"]} if options["quantize"] != "none" else {}
        if spec.gguf:
            path = self.gguf_path(spec)
            kept["gguf"] = {"file": path.name if spec.local_path else spec.file, "quant": gguf_file(path).quant}
        return kept

    def key(self, spec: ModelSpec, options: dict[str, Any]) -> tuple:
        """The pipeline cache's key: the weights, where they run, and how they were loaded."""
        device = pick_device(self.device)
        weights = f"{spec.source}:{spec.file or ''}+{spec.base}" if spec.gguf else spec.source
        return (weights, device, str(pick_dtype(device, spec.family.dtype, self.dtype)),
                tuple(sorted(options.items())))

    def gguf_path(self, spec: ModelSpec, download: bool = False) -> Path:
        """A GGUF denoiser's file: on this machine, or in the hub cache (downloaded now where `download` allows)."""
        if spec.local_path is not None:
            return spec.local_path
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(spec.source, spec.file, token=self.token, local_files_only=not download))
        except Exception as exc:  # noqa: BLE001 - not cached, or the hub failed in one of many ways
            if not download or offline():
                raise ModelNotFoundError(f"{spec.name} ({spec.file} of {spec.source}) is not in the hub cache: with "
                                         f"network access, run `easel models pull {spec.name}`.",
                                         param="model") from None
            raise ModelNotFoundError(f"{spec.file} of {spec.source} could not be downloaded ({type(exc).__name__}). "
                                     f"{reach_hub_hint()}", param="model") from None

    def base_folder(self, spec: ModelSpec, download: bool = True) -> Path:
        """The pipeline a GGUF denoiser runs with: a folder, or a hub repository from the hub cache (downloaded
        where it may be, without its own denoiser's weights, which the GGUF file replaces)."""
        base = Path(spec.base)
        if base.is_absolute():
            return base
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec.base, local_files_only=True, token=self.token))
        except Exception:  # noqa: BLE001 - not in the hub cache
            if not download or offline():
                raise ModelNotFoundError(f"{spec.name} runs with the text encoders and VAE of {spec.base}, which is "
                                         f"not in the hub cache: with network access, run `easel models pull "
                                         f"{spec.name}`, or name a pipeline of its family as `base`.",
                                         param="model") from None
            return Path(pull_model(spec, self.token))

    def _gguf_denoiser(self, spec: ModelSpec, dtype):
        """The GGUF file's denoiser, its Linear layers kept quantized (diffusers dequantizes each as it runs) and
        its weights read from the file's mapping as they are needed (never copied whole into memory)."""
        from diffusers import GGUFQuantizationConfig

        path, base = self.gguf_path(spec), self.base_folder(spec)
        config = GGUFQuantizationConfig(compute_dtype=dtype)
        try:
            return _pipeline_class(spec.family.denoiser).from_single_file(
                gguf_state_dict(path), config=str(base), subfolder="transformer", quantization_config=config,
                dtype=dtype, local_files_only=True)
        except (ValueError, RuntimeError, KeyError) as exc:  # its tensors' shapes are not the base's configuration's
            detail = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise InvalidRequestError(f"{path.name} does not fit the {spec.family.name} denoiser of {spec.base} "
                                      f"({detail}): name the pipeline it was made for as `base`.",
                                      param="base") from None

    def load(self, spec: ModelSpec, options: dict[str, Any], held: int = 0) -> LoadedPipeline:
        """`spec`'s pipeline, loaded now and placed on its device with `options` applied, where the memory plan
        says (refused before any weights load when it cannot fit; `held`: what the cache would let go first)."""
        quiet_libraries()
        device = pick_device(self.device)
        dtype = pick_dtype(device, spec.family.dtype, self.dtype)
        started = time.perf_counter()
        with pipeline_errors(spec, "loading"):
            cls = _pipeline_class(spec.family.pipeline)
            folder = self._files(spec)  # downloaded first where they may be: the plan reads their headers
            plan = self.plan(spec, options, held=held)
            borrowed = components.load(spec, folder, dtype, self.token) if folder is not None else {}
            if spec.gguf:
                pipe = cls.from_pretrained(folder, transformer=self._gguf_denoiser(spec, dtype), dtype=dtype,
                                           **borrowed)
            elif spec.checkpoint:
                config = checkpoint_config(spec.local_path, self.configs_dir, token=self.token)
                pipe = cls.from_single_file(str(spec.local_path), config=str(config), local_files_only=True,
                                            dtype=dtype)
            else:
                pipe = cls.from_pretrained(folder, dtype=dtype, **at_load(spec, options["quantize"], dtype),
                                           **borrowed)
        pipe.set_progress_bar_config(disable=True)
        with pipeline_errors(spec, "loading"):
            placed = {**options, "offload": plan.offload}
            if self._quantize_in_place(spec, options, plan):  # on a GPU in seconds, not on the CPU in minutes
                _place(pipe, device, placed)
                quantize_denoiser(pipe, options["quantize"])
            else:  # before it moves (offloaded, or too big for the device unquantized)
                quantize_denoiser(pipe, options["quantize"])
                _place(pipe, device, placed)
            _speed_up(pipe, device, options)
        chosen = [f"{spec.name} runs with {plan.offload} offload, which the memory plan chose: {plan.why}"] \
            if plan.offload != "none" and options["offload"] == "auto" else []
        return LoadedPipeline(pipe, type(pipe.scheduler), dict(pipe.scheduler.config),
                              time.perf_counter() - started, warnings=chosen)

    def _files(self, spec: ModelSpec) -> Path | None:
        """The pipeline folder a model loads from (a GGUF denoiser's base, its file fetched too), downloading what
        is missing where it may; None for a single-file checkpoint."""
        if spec.gguf:
            self.gguf_path(spec, download=not offline())
            return self.base_folder(spec)
        return None if spec.checkpoint else self.pipeline_folder(spec) or self._download(spec)

    def _quantize_in_place(self, spec: ModelSpec, options: dict[str, Any], plan: memory.Plan) -> bool:
        """Whether the denoiser is quantized on its device after it moves there: only where it runs whole on the
        device and its unquantized weights fit there too (else it is quantized first, where it loaded)."""
        if plan.offload != "none" or options["quantize"] not in ("fp8", "int8"):
            return plan.offload == "none"
        try:
            return self.plan(spec, {**options, "quantize": "none", "offload": "auto"}).offload == "none"
        except InvalidRequestError:
            return False

    def plan(self, spec: ModelSpec, options: dict[str, Any], pixels: int | None = None, batch: int = 1,
             held: int = 0) -> memory.Plan:
        """Where `spec` goes (see `memory.choose`) from its files on this machine, for `batch` images of `pixels`
        (default: its family's size); raises when it cannot fit. A model whose files are not here yet has no plan
        before it downloads: it loads as its `offload` option says."""
        device = pick_device(self.device)
        need = self.needs(spec, options, pixels, batch)
        if need is None:
            return memory.Plan("none" if options["offload"] == "auto" else options["offload"], "size unknown")
        device_free, ram_free = memory.free_memory(device)
        return memory.choose(need, device, None if device_free is None else device_free + held, ram_free + held,
                             options["offload"])

    def needs(self, spec: ModelSpec, options: dict[str, Any], pixels: int | None = None,
              batch: int = 1) -> memory.Needs | None:
        """What `spec` needs loaded as `options` say, from its files (None: they are not on this machine)."""
        device = pick_device(self.device)
        dtype = str(pick_dtype(device, spec.family.dtype, self.dtype)).removeprefix("torch.")
        pixels = pixels or spec.family.size[0] * spec.family.size[1]
        if spec.checkpoint:
            if not spec.local_path.is_file():
                return None
            from ...checkpoints import tensor_shapes

            count = sum(math.prod(shape) for shape in tensor_shapes(spec.local_path).values())
            per = memory.DTYPE_BYTES.get(dtype, 4)
            return memory.Needs({"checkpoint": count * per}, memory.work_bytes(pixels, batch, per))
        try:
            gguf = self.gguf_path(spec) if spec.gguf else None
        except ModelNotFoundError:
            return None
        folder = self.pipeline_folder(spec)
        if folder is None or not (folder / "model_index.json").is_file():
            return None
        borrowed = {}
        for name, (_, repo) in components.missing(spec, folder).items():
            with contextlib.suppress(ModelNotFoundError):
                borrowed[name] = components.folder_of(repo, False, self.token)
        return memory.needs(folder, dtype, options["quantize"], pixels, batch, gguf, borrowed)

    def pipeline_folder(self, spec: ModelSpec) -> Path | None:
        """The model's folder where it is on this machine already (none for a single file: its configs say less).
        A hub id is looked up in the hub cache only: the id itself never goes to `from_pretrained`, which would
        open a folder of that name in the working directory. A GGUF denoiser's: its base's."""
        if spec.gguf:
            with contextlib.suppress(ModelNotFoundError):
                return self.base_folder(spec, download=False)
            return None
        if spec.checkpoint:
            return None
        if spec.local_path is not None:
            return Path(spec.local_path)
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec.source, local_files_only=True, token=self.token))
        except Exception:  # noqa: BLE001 - not in the hub cache
            return None

    def _download(self, spec: ModelSpec) -> str:
        if offline():
            raise ModelNotFoundError(f"{spec.name} is not in the hub cache and HF_HUB_OFFLINE is set. "
                                     f"With network access, run `easel models pull {spec.name}`.", param="model")
        return pull_model(spec, self.token)

    def check(self, spec: ModelSpec) -> None:
        """Refuse before queueing a model that cannot load: a module its pipeline needs is missing, or it is not on
        this machine while offline."""
        for module in spec.family.requires:
            if importlib.util.find_spec(module) is None:
                raise UnsupportedError(
                    f"{spec.name} needs {module}, which is not installed: transformers builds its text encoder's "
                    f"processor only with it. Install the {module} build of your torch (with torch's CPU wheel: pip "
                    f"install {module} --index-url https://download.pytorch.org/whl/cpu).", param="model")
        if offline() and spec.family.components:
            for _, repo in components.missing(spec, self.pipeline_folder(spec)).values():
                components.folder_of(repo, False, self.token)
        if spec.gguf:
            if offline():
                self.gguf_path(spec)
                self.base_folder(spec, download=False)
            return
        if spec.checkpoint and offline():
            checkpoint_config(spec.local_path, self.configs_dir, download=False)
        if spec.local_path is None and offline() and not spec.is_available_locally():
            raise ModelNotFoundError(f"{spec.name} is not in the hub cache and HF_HUB_OFFLINE is set. "
                                     f"With network access, run `easel models pull {spec.name}`.", param="model")

    def named_folder(self, name: str, root: Path | None, marker: str, what: str, param: str, download: bool,
                     there: list[str] | None = None) -> Path | None:
        """A model folder named by a request: `<name>` in `root`, a hub id (from the hub cache, downloaded where it
        may be), or a folder's path (which the request check allows only for the machine's user). None: a hub id
        to download when it runs. Unknown: an error listing the ones there are."""
        from ...catalog import is_hub_id

        if is_hub_id(name) and not (root is not None and (root / name).is_dir()):
            from huggingface_hub import snapshot_download

            try:
                return Path(snapshot_download(name, local_files_only=True, token=self.token))
            except Exception:  # noqa: BLE001 - not in the hub cache
                if offline():
                    raise InvalidRequestError(f"The {what} {name!r} is not in the hub cache and HF_HUB_OFFLINE is "
                                              "set.", param=param) from None
                return Path(snapshot_download(name, token=self.token)) if download else None
        path = Path(name).expanduser() if names_a_file(name) else (root / name if root is not None else None)
        if path is None or not (path / marker).is_file():
            there = model_folders(root, marker) if there is None else there
            raise InvalidRequestError(f"No {what} {name!r} (the {root.name if root else what + 's'} folder has: "
                                      f"{', '.join(there) or 'none'}).", param=param)
        return path


def gguf_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a GGUF file by name, as diffusers' GGUF loader reads them but without copying: each one a view
    of the file's read-only mapping (quantized ones as `GGUFParameter`), paged in as the model runs."""
    import warnings

    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    tensors = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # it is never written
        for tensor in gguf.GGUFReader(path).tensors:
            weights = torch.from_numpy(tensor.data)
            tensors[tensor.name] = weights if tensor.tensor_type in plain else \
                GGUFParameter(weights, quant_type=tensor.tensor_type)
    return tensors


def _pipeline_class(path: str):
    """'StableDiffusionPipeline' (from diffusers) or 'package.module:Class'."""
    if ":" in path:
        module, name = path.split(":")
        return getattr(importlib.import_module(module), name)
    import diffusers

    return getattr(diffusers, path)


def _place(pipe, device: str, options: dict[str, Any]) -> None:
    """On accelerators, offload where asked (it manages the device itself), else move everything; then the
    memory options."""
    if device != "cpu" and options["offload"] == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif device != "cpu" and options["offload"] == "group":
        pipe.enable_group_offload(onload_device=device, offload_device="cpu", offload_type="leaf_level",
                                  use_stream=device == "cuda")
    elif device != "cpu" and options["offload"] == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if options["attention_slicing"]:
        pipe.enable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if vae is not None and options["vae_slicing"]:
        vae.enable_slicing()
    if vae is not None and options["vae_tiling"]:
        vae.enable_tiling()


def _speed_up(pipe, device: str, options: dict[str, Any]) -> None:
    """The speed options: TF32 matmuls on CUDA, fused QKV projections, channels-last convolutions, and
    `torch.compile` of the denoiser and the VAE decoder (compiled on the first call of each shape); on a CPU
    without compile (whose freezing packs the weights itself), convolutions and linear layers called on oneDNN."""
    import torch

    from .onednn import use_onednn

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
    if device == "cpu" and options["compile"] == "none":
        use_onednn(pipe.components.values())
    if options["compile"] != "none":
        how = compile_arguments(options["compile"], device)
        if denoiser is not None:
            denoiser.compile(fullgraph=False, dynamic=False, **how)
        if vae is not None:
            vae.decoder.compile(fullgraph=False, dynamic=False, **how)


def compile_arguments(mode: str, device: str) -> dict[str, Any]:
    """torch.compile's arguments for a compile mode. On a CPU, inductor's freezing (weights folded into the graph
    and pre-packed for oneDNN) is what makes a compiled model faster: without it a compiled SD 1.5 UNet step is
    slower than eager there, with it about 1.2x faster; CUDA graphs (reduce-overhead) do not exist there."""
    if device != "cpu":
        return {"mode": mode}
    return {"options": {"freezing": True, **({"max_autotune": True} if mode == "max-autotune" else {})}}


def checkpoint_kind(path: Path) -> str:
    """diffusers' name for the kind of a checkpoint (`v1`, `v2`, `xl_base`, `sd3`, `sd35_medium`, `sd35_large`,
    `flux-dev`, `flux-schnell`, ...), which names the hub repository whose configuration it loads with. It is
    inferred from the tensors' names and shapes (read from the header, no weights loaded)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS, infer_diffusers_model_type

    from ...checkpoints import checkpoint_family, tensor_shapes

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
    if not download or offline() or own is None:
        raise ModelNotFoundError(f"{missing}: run `easel models pull {path.name}` once with network access, or put "
                                 f"a pipeline folder of that kind in {own or 'EASEL_HOME/configs'}.", param="model")
    try:
        return Path(snapshot_download(repo, allow_patterns=CONFIG_FILES, local_dir=own, token=token))
    except Exception as exc:  # noqa: BLE001 - network failures come in many types
        raise ModelNotFoundError(f"{missing}, and the hub could not be reached to fetch it ({type(exc).__name__}). "
                                 f"{reach_hub_hint()}", param="model") from None


def pull_model(spec: ModelSpec, token: str | None = None, configs_dir: Path | None = None) -> str:
    """Download a hub model into the hub cache (resumable); returns the snapshot folder. For a checkpoint file,
    the configuration it loads with."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if spec.checkpoint:
        return str(checkpoint_config(spec.local_path, configs_dir, token=token))
    if spec.local_path is not None and not spec.gguf:
        return str(spec.local_path)
    try:
        for _, repo in {*spec.family.components.values()}:  # what its releases leave out
            snapshot_download(repo, token=token)
        if spec.gguf:  # the file, and the rest of the pipeline without the denoiser weights the file replaces
            if not Path(spec.base).is_absolute():
                snapshot_download(spec.base, token=token, ignore_patterns=DENOISER_WEIGHTS)
            return str(Loader(token=token).gguf_path(spec, download=True))
        return snapshot_download(spec.source, token=token)
    except EaselError:
        raise
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
            f"({type(exc).__name__}). {reach_hub_hint()}", param="model",
        ) from None


def return_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc keeps them for the process otherwise, and a released
    model would still show in the server's RSS)."""
    import ctypes
    import ctypes.util

    libc = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(libc).malloc_trim(0)
