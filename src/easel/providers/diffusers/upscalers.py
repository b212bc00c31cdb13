"""Upscaler models: ESRGAN-family files (Real-ESRGAN, 4x-UltraSharp, SwinIR, ...; loaded by spandrel, as ComfyUI
does) and SD's x4 upscaler pipeline, kept with the pipelines in the one cache."""

from __future__ import annotations

import functools
import importlib.util
import time
from pathlib import Path

from ...catalog import UPSCALER_FILES, UPSCALER_MARKER, names_a_file, upscaler_files, upscaler_names
from ...errors import InvalidRequestError, UnsupportedError
from .cache import LoadedPipeline, PipelineCache
from .errors import does_not_fit
from .loading import Loader, pick_device, pick_dtype, quiet_libraries


class Upscalers:
    """The upscaler models of a folder (or named by hub id, or by path where the request check allows one)."""

    def __init__(self, folder: Path | None, loader: Loader, cache: PipelineCache):
        self.folder, self.loader, self.cache = folder, loader, cache

    def model(self, name: str, download: bool = True, param: str = "upscaler") -> Path | None:
        """An upscaler model: a single file of the upscalers folder (ESRGAN family; by its stem or file name, or its
        path where the request check allows one), else a pipeline folder (SD's x4 upscaler)."""
        files = upscaler_files(self.folder)
        path = Path(name).expanduser() if names_a_file(name) else (self.folder or Path("-")) / name
        path = files.get(name, path)
        if path.suffix.lower() in UPSCALER_FILES and path.is_file():
            if _spandrel_problem() is not None:  # refused before the job is queued
                raise _without_spandrel(name, param)
            return path
        return self.loader.named_folder(name, self.folder, UPSCALER_MARKER, "upscaler", param, download,
                                        upscaler_names(self.folder))

    def upscale(self, image, name: str, tile: int = 256, progress=None):
        """`image` through the upscaler model `name`, which makes it its own factor larger (its caller resizes to
        the size it wants), in tiles of `tile` pixels (0: whole) so that its memory stays that of one tile."""
        import torch

        from ...upscalers import tiled

        model = self.model(name)
        device = pick_device(self.loader.device)
        dtype = pick_dtype(device, "float16", self.loader.dtype)
        if model.is_file():
            loaded = self.cache.get((str(model), model.stat().st_mtime_ns, device, "spandrel"),
                                    lambda: _load_spandrel(model, name, device, dtype))
            factor, one = loaded.pipe.scale, functools.partial(_spandrel_upscale, loaded.pipe)
        else:
            loaded = self.cache.get((str(model), device, str(dtype), "upscaler"),
                                    lambda: _load_pipeline(model, name, device, dtype))
            factor = 4

            def one(part):
                return loaded.pipe(prompt="", image=part, num_inference_steps=20,
                                   generator=torch.Generator("cpu").manual_seed(0)).images[0]

        with loaded.lock, torch.no_grad():
            return tiled(image, factor, tile or max(image.size), max(8, tile // 8), one, progress)


def _load_pipeline(folder: Path, name: str, device: str, dtype) -> LoadedPipeline:
    quiet_libraries()  # before diffusers' import: its notices and progress bars stay out of the terminal
    import diffusers

    from .onednn import use_onednn

    started = time.perf_counter()
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - not an upscaler pipeline, or a damaged one
        raise does_not_fit(f"The upscaler {name!r}", exc, "upscaler") from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if device == "cpu":
        use_onednn(pipe.components.values())  # as every CPU pipeline of Easel's
    return LoadedPipeline(pipe, type(pipe.scheduler), dict(pipe.scheduler.config), time.perf_counter() - started)


def _load_spandrel(path: Path, name: str, device: str, dtype) -> LoadedPipeline:
    """An ESRGAN-family upscaler file through spandrel (which reads the architecture and its size from the weights;
    a `.pth` is unpickled with spandrel's restricted unpickler, which builds no other objects), in half precision
    where the architecture allows it."""
    import spandrel  # `Upscalers.model` made sure it imports

    started = time.perf_counter()
    try:
        model = spandrel.ModelLoader().load_from_file(path)
    except Exception as exc:  # noqa: BLE001 - an architecture spandrel does not know, or a damaged file
        raise does_not_fit(f"The upscaler {name!r}", exc, "upscaler") from None
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise InvalidRequestError(f"The upscaler {name!r} is a {model.architecture.name} model for {model.purpose}, "
                                  "not an upscaler.", param="upscaler")
    model.to(device).eval()
    if device != "cpu" and model.supports_half and str(dtype) == "torch.float16":
        model.half()
    return LoadedPipeline(model, None, {}, time.perf_counter() - started)


@functools.lru_cache(maxsize=1)
def _spandrel_problem() -> str | None:
    """Why spandrel cannot run here, or None: it may be missing, or installed with a torchvision that does not import
    beside this torch (PyPI's Linux torchvision is a CUDA build)."""
    if importlib.util.find_spec("spandrel") is None:
        return "spandrel is not installed: pip install 'easel[esrgan]'"
    try:
        import spandrel  # noqa: F401
    except (ImportError, RuntimeError) as exc:
        if importlib.util.find_spec("torchvision") is None or "torchvision" in str(exc):
            return ("spandrel is installed but the torchvision it needs does not import beside this torch: install "
                    "the torchvision build of your torch (with torch's CPU wheel: pip install torchvision "
                    "--index-url https://download.pytorch.org/whl/cpu)")
        return f"spandrel does not import: {type(exc).__name__}: {exc}"
    return None


def _without_spandrel(name: str, param: str) -> UnsupportedError:
    return UnsupportedError(f"The upscaler {name!r} is a single-file (ESRGAN-family) model, which Easel loads with "
                            f"spandrel, and {_spandrel_problem()}.", param=param)


def _spandrel_upscale(model, image):
    """One picture through a spandrel model (a tensor of 0..1, which it pads to the sizes it takes)."""
    import numpy as np
    import PIL.Image
    import torch

    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    out = model(pixels.to(model.device, model.dtype))[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return PIL.Image.fromarray(np.round(out * 255).astype(np.uint8))
