"""The diffusers provider: a request checked against its model and add-ons before it is queued, and each batch run
as one pipeline call with every adapter entered around it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...upscalers import HIRES_UPSCALERS, IMAGE_UPSCALERS
from ..base import Batch, Progress, Provider, ProviderOutput
from . import inputs, outputs
from .adapters import (Adapter, Call, ClipSkip, ControlNet, Embeddings, IpAdapter, Lora, ModelFiles, StepCache,
                       TinyDecoder, TokenDownsampling)
from .cache import LoadedPipeline, PipelineCache
from .errors import pipeline_errors
from ...errors import InvalidRequestError
from .loading import LOAD_OPTIONS, Loader, pick_device, return_freed_memory
from .memory import GB, free_memory, rss
from .previews import StepReporter
from .prompt_weights import weigh_prompts
from .upscalers import Upscalers

if TYPE_CHECKING:
    from ...catalog import ModelSpec
    from ...types import ImageRequest

OPERATIONS = {"generate": "generating", "edit": "inpainting", "vary": "making variations",
              "instruction": "editing by instruction"}


class DiffusersProvider(Provider):
    """Runs local diffusers pipelines, Easel's built-in model included."""

    name = "diffusers"

    def __init__(self, device: str | None = None, dtype: str | None = None, max_cached: int = 2,
                 max_cache_bytes: int = 0, hf_token: str | None = None, defaults: dict[str, Any] | None = None,
                 folders: dict[str, Path | None] | None = None):
        """`defaults`: the server's load options (compile, channels_last, fuse_qkv, quantize), below a request's own;
        `folders`: the add-on folders by kind (`easel.addons.FOLDERS`: loras, embeddings, controlnets,
        ip_adapters, upscalers, configs)."""
        folders = folders or {}
        self.loader = Loader(device, dtype, hf_token, folders.get("configs"), dict(defaults or {}))
        self.cache = PipelineCache(max_cached, max_cache_bytes)
        self.upscalers = Upscalers(folders.get("upscalers"), self.loader, self.cache)
        # in the order they enter a call: a ControlNet puts its pipeline in place before an IP-Adapter loads into it
        self.adapters: list[Adapter] = [Lora(folders.get("loras")), Embeddings(folders.get("embeddings")),
                                        ControlNet(folders.get("controlnets"), self.loader),
                                        IpAdapter(folders.get("ip_adapters"), self.loader),
                                        TinyDecoder(self.loader, self.loader.defaults.get("decoder", "full")),
                                        StepCache(self.loader.defaults.get("cache", "none")),
                                        TokenDownsampling(self.loader.defaults.get("tokens", "none")), ClipSkip()]

    def use_adapter(self, adapter: Adapter) -> None:
        """Take a plugin's adapter kind: it enters every call of a family it fits whose request asks for it."""
        self.adapters.append(adapter)

    def check(self, spec: ModelSpec, request: ImageRequest) -> None:
        """Refuse before queueing: a bad load option, an add-on that is missing or made for another family, an
        unknown upscaler, or a hub model that is not cached while offline."""
        if request.mode == "upscale":
            if request.upscaler not in IMAGE_UPSCALERS:
                self.upscalers.model(request.upscaler, download=False)
            return
        options = self.loader.options(spec, request.extra)
        if self.loader.key(spec, options) not in self.cache.keys():  # a model that cannot fit: refused now
            self.loader.plan(spec, options, request.width * request.height, request.num_images,
                             held=self.cache.resident_bytes())
        model = ModelFiles(spec, lambda: self.loader.pipeline_folder(spec))
        for adapter, uses in self._active(spec, [request]):
            adapter.check(model, uses)
        if options["quantize"] == "int8_dynamic" and request.loras:
            raise InvalidRequestError("`quantize=int8_dynamic` takes no LoRAs: its Linear layers become int8 modules "
                                      "that peft cannot add a LoRA to. Use quantize=int8, or leave the LoRAs out.",
                                      param="quantize")
        if request.hires_scale and request.hires_upscaler not in HIRES_UPSCALERS:
            self.upscalers.model(request.hires_upscaler, download=False, param="hires_upscaler")
        self.loader.check(spec)

    def _active(self, spec: ModelSpec, requests: list[ImageRequest]) -> list[tuple[Adapter, Any]]:
        """The adapters these requests use, with what they ask of each."""
        fitting = (adapter for adapter in self.adapters if adapter.fits(spec.family))
        return [(adapter, uses) for adapter in fitting if (uses := adapter.uses(requests) or (
            adapter.default(spec) if adapter.param not in requests[0].extra else None))]

    def load(self, spec: ModelSpec, options: dict[str, Any] | None = None) -> LoadedPipeline:
        """The pipeline for `spec`, from the cache or loaded now."""
        options = options or self.loader.options(spec, {})
        return self.cache.get(self.loader.key(spec, options),
                              lambda: self.loader.load(spec, options, held=self.cache.resident_bytes()))

    def warm(self, spec: ModelSpec) -> None:
        self.load(spec)

    def release(self) -> int:
        import gc

        held = self.cache.clear()
        gc.collect()
        if pick_device(self.loader.device) == "cuda":
            import torch

            torch.cuda.empty_cache()
        return_freed_memory()
        return held

    def footprint(self, spec: ModelSpec) -> dict[str, Any]:
        """Its size as it would load here (its files' headers, the dtype and quantization of the server's
        options) and where the memory plan would put it: "yes", "with model offload", or "no" and why."""
        options = self.loader.options(spec, {})
        need = self.loader.needs(spec, options)
        if need is None:
            return {"size_gb": None, "fits": "unknown (not downloaded)"}
        try:
            plan = self.loader.plan(spec, options, held=self.cache.resident_bytes())
        except InvalidRequestError as exc:  # the plan's own words say why
            return {"size_gb": round(need.weights / GB, 2), "fits": "no", "why": exc.message}
        return {"size_gb": round(need.weights / GB, 2),
                "fits": "yes" if plan.offload == "none" else f"with {plan.offload} offload"}

    def memory(self) -> dict[str, Any]:
        """Free and used memory of its device and of RAM (this process's share), and the loaded models' bytes."""
        device = pick_device(self.loader.device)
        device_free, ram_free = free_memory(device)
        out = {"device": device, "ram_free_gb": round(ram_free / GB, 2), "process_rss_gb": round(rss() / GB, 2),
               "models_bytes": self.cache.resident_bytes()}
        if device_free is not None:
            import torch

            out.update(device_free_gb=round(device_free / GB, 2),
                       device_used_gb=round(torch.cuda.memory_reserved() / GB, 2))
        return out

    def upscale(self, image, scale: float, name: str, tile: int = 256, progress: Progress | None = None):
        """`image` through an upscaler model (see `Upscalers.upscale`); `scale` is its caller's to reach."""
        return self.upscalers.upscale(image, name, tile, progress)

    def run_batch(self, batch: Batch, progress: Progress) -> list[ProviderOutput]:
        """Run compatible requests (same mode, size, steps, guidance, scheduler and options) as one pipeline
        call, each image from its own seeded generator, and split the images back per request."""
        spec, first = batch.spec, batch.first
        adapters = self._active(spec, batch.requests)
        options = {k: v for k, v in first.extra.items() if k not in LOAD_OPTIONS and k not in self._options}
        load = self.loader.options(spec, first.extra)
        loaded = self.load(spec, load)                                             # 1. the pipeline
        asked, batch = len(batch), inputs.to_bucket(batch) if load["compile"] != "none" else batch  # few shapes
        kwargs = inputs.for_batch(batch, options)                                  # 2. prompts, seeds, size, images
        steps = StepReporter(progress, loaded, batch, inputs.total_steps(batch, kwargs))
        mode = inputs.pipeline_mode(batch)
        with loaded.lock, pipeline_errors(spec, OPERATIONS[mode]), contextlib.ExitStack() as stack:
            loaded.calls += 1  # the add-ons this call uses are the last to go (see PipelineCache.trim)
            call = Call(loaded, batch, loaded.for_mode(mode, spec.family.pipelines), kwargs,
                        self.loader.record(load, spec))
            for adapter, uses in adapters:                                         # 3. each adapter enters
                call.kwargs = {**call.kwargs, **stack.enter_context(adapter.enter(call, uses))}
            if spec.family.weights:
                call.kwargs = weigh_prompts(loaded.pipe, call.kwargs)
            call.pipe.scheduler = inputs.fresh_scheduler(loaded, first.scheduler)
            out = call.pipe(**call.kwargs, callback_on_step_end=steps)             # 4. denoise
        self.cache.trim(keep=loaded)  # what this call loaded counts against EASEL_MAX_CACHE_GB from now on
        return outputs.per_request(batch, out, call.details, steps.latents, loaded.warnings)[:asked]  # 5. images

    @property
    def _options(self) -> set[str]:
        """The request options that adapters read (not the pipeline's arguments)."""
        return {adapter.param for adapter in self.adapters if adapter.option is not None}


def register(add, settings) -> None:
    """Entry point of the `easel.providers` group."""
    from ...addons import FOLDERS
    from ...keys import get_key

    add(DiffusersProvider(settings.device, settings.dtype, settings.max_cached_pipelines,
                          int(settings.max_cache_gb * 1e9), hf_token=get_key(settings.keys_path, "hf"),
                          defaults={"compile": settings.compile, "channels_last": settings.channels_last,
                                    "fuse_qkv": settings.fuse_qkv, "quantize": settings.quantize,
                                    "decoder": settings.decoder, "cache": settings.step_cache,
                                    "tokens": settings.tokens},
                          folders={kind.folder: settings.folder(kind.folder) for kind in FOLDERS}))
