"""The direct path of one request: check, seed, run the provider, save and record. Every front ends here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image

from .. import masks
from .._version import __version__
from ..catalog import ModelCatalog, ModelSpec, default_catalog, operator_catalog
from ..checks import CheckedRequest, check_request
from ..config import Settings, get_settings
from ..control import preprocess
from ..enhance import PromptEnhancer
from ..errors import ProviderError
from ..prompts import lora_tags, revise_prompt
from ..providers.base import Batch, Progress, ProviderOutput, ProviderRegistry, StepCallback
from ..request_json import record
from ..store import Workspace, now_iso
from ..types import GeneratedImage, ImageRequest, ImageResult, parse_size

log = logging.getLogger("easel.runner")


def image_parameters(spec: ModelSpec, request: ImageRequest, seed: int | None, output: ProviderOutput,
                     index: int = 0) -> dict[str, Any]:
    """Everything needed to make an image again, as recorded in its file and in the history (`index`: which of
    the output's images)."""
    params: dict[str, Any] = {**record(request), "model": spec.name, "seed": seed, "version": __version__,
                              "created": now_iso()}
    revised = request.revised_prompt or output.revised_prompt  # Easel's revision, or the service's own
    if revised:
        params["revised_prompt"] = revised
    if request.enhanced_by:
        params["prompt_enhancer"] = request.enhanced_by
    params.update(output.details)
    if output.image_details:
        params.update(output.image_details[index])
    return params


class Runner:
    """Runs requests directly (no queue): the library's path, and the engine worker's inner step."""

    def __init__(self, settings: Settings | None = None, catalog: ModelCatalog | None = None,
                 registry: ProviderRegistry | None = None, allow_paths: bool = True):
        """`allow_paths`: whether a request may name a local folder as its model (not for servers' clients). The
        operator's folders (the models folder, a default model that is a folder) are models by name either way."""
        self.settings = settings or get_settings()
        self.allow_paths = allow_paths
        self.registry = registry or ProviderRegistry(self.settings)
        plugins = self.registry.plugin_catalog()
        self.catalog = operator_catalog((catalog or default_catalog()).with_models(*plugins), self.settings)
        self._workspaces: dict[Path | None, Workspace] = {}
        self.enhancer = PromptEnhancer.from_settings(self.settings)

    def enhance(self, checked: CheckedRequest) -> None:
        """Have the chat model rewrite the prompt where it should (see `PromptEnhancer.wants`): the rewrite becomes
        what the model receives (`revised_prompt`, with the family's quality words), the prompt as written stays.
        A failure or a timeout leaves the prompt as it was and says so; it never fails the request."""
        spec, r = checked
        prompt = lora_tags(r.prompt)[0]  # as written, without LoRA tags (which the model never sees)
        if self.enhancer is None or not self.enhancer.wants(spec, prompt, r.enhance_prompt):
            if r.enhance_prompt and self.enhancer is None:
                r.warnings.append("no prompt enhancer is configured (EASEL_PROMPT_ENHANCER_MODEL): the prompt was "
                                  "used as written")
            elif r.enhance_prompt and not spec.family.prompt_style:
                r.warnings.append(f"{spec.name}'s prompts are not rewritten (it reads its own words, or rewrites "
                                  "them itself): the prompt was used as written")
            return
        r.enhance_prompt = False  # asked once: never again (by an engine that receives the request from another)
        try:
            rewritten = self.enhancer.rewrite(spec, prompt)
        except Exception as exc:  # noqa: BLE001 - any failure of the chat model falls back to the prompt
            log.warning("prompt enhancer %s failed: %s: %s", self.enhancer.model, type(exc).__name__, exc)
            r.warnings.append(f"the prompt enhancer ({self.enhancer.model}) failed ({type(exc).__name__}): the "
                              "prompt was used as written")
            return
        r.revised_prompt = revise_prompt(spec, rewritten) or rewritten
        r.enhanced_by = self.enhancer.model

    def workspace(self, out_dir: Path | None = None) -> Workspace:
        key = Path(out_dir).resolve() if out_dir else None
        if key not in self._workspaces:
            self._workspaces[key] = Workspace(self.settings.home, key, self.settings.database_url)
        return self._workspaces[key]

    def check(self, request: ImageRequest | CheckedRequest) -> CheckedRequest:
        """The one check of a request (the common checks, then its provider's); a checked one passes as it is."""
        if isinstance(request, CheckedRequest):
            return request
        checked = check_request(request, self.catalog, self.settings.default_model, self.settings.moderation,
                                self.allow_paths)
        self.registry.get(checked.spec.provider).check(*checked)
        return checked

    def footprint(self, spec: ModelSpec) -> dict[str, Any]:
        """`spec`'s size and whether it fits this machine's memory, as its provider sees it."""
        return self.registry.get(spec.provider).footprint(spec)

    def memory(self) -> dict[str, Any]:
        """The memory in use and free where the local models run (the diffusers provider's view)."""
        return self.registry.get("diffusers").memory() if "diffusers" in self.registry.names() else {}

    def run(self, request: ImageRequest | CheckedRequest, *, save: bool = True, out_dir: Path | None = None,
            on_step: StepCallback | None = None, should_stop: Callable[[], bool] | None = None) -> ImageResult:
        """Check, run and (by default) save one request; returns its images with their seeds and parameters."""
        return self.run_many([request], save=save, out_dir=out_dir, on_step=on_step, should_stop=should_stop)[0]

    def run_many(self, requests: list[ImageRequest | CheckedRequest], *, save: bool = True, out_dir: Path | None = None,
                 on_step: StepCallback | None = None, should_stop: Callable[[], bool] | None = None,
                 max_batch_images: int = 8) -> list[ImageResult]:
        """Run several requests, batching compatible ones (same model, size, steps, ...) into one model call.

        All requests are checked before any runs, so a bad one fails the whole call early."""
        checked = [self.check(r) for r in requests]
        for request, done in zip(requests, checked):
            if not isinstance(request, CheckedRequest):  # a checked one comes from the engine, which enhanced it
                self.enhance(done)
        results: list[ImageResult | None] = [None] * len(requests)
        progress = Progress(on_step, should_stop)
        for group in _batches(checked, max_batch_images):
            started = time.perf_counter()
            spec = checked[group[0]].spec
            todo = [checked[i].request for i in group]
            outputs = self._run_batch(spec, todo, progress)
            elapsed = (time.perf_counter() - started) / len(group)
            for i, request, (seeds, output) in zip(group, todo, outputs):
                images = [GeneratedImage(image=im, seed=seed, output_format=request.output_format,
                                         parameters=image_parameters(spec, request, seed, output, k))
                          for k, (im, seed) in enumerate(zip(output.images, seeds))]
                if save:
                    images = self.workspace(out_dir).save_all(images)
                results[i] = ImageResult(images=images, model=spec.name, prompt=request.prompt,
                                         revised_prompt=request.revised_prompt or output.revised_prompt,
                                         warnings=[*request.warnings, *output.warnings], elapsed_s=elapsed,
                                         control_maps=[unit.map for unit in request.control])
        return results

    def _run_batch(self, spec: ModelSpec, requests: list[ImageRequest],
                   progress: Progress) -> list[tuple[list[int | None], ProviderOutput]]:
        """One provider call: the model receives the revised prompt and, for an edit, its frame (the whole picture
        or the painted area); its answer is checked against the contract and edits are pasted back."""
        provider = self.registry.get(spec.provider)
        if requests[0].mode == "upscale":  # no denoising: the provider's upscaler, tile by tile (alone in its batch)
            return [([None], _upscaled(provider, requests[0], progress))]
        for unit in (unit for r in requests for unit in r.control if unit.map is None):
            unit.map = preprocess(unit)  # here, on the worker: a preprocessor may take a while
        frames = [masks.InpaintFrame(r.image, r.mask, (r.width, r.height), r.mask_blur or 0, r.inpaint_full_res,
                                     r.inpaint_full_res_padding) if r.mode == "edit" and r.mask is not None else None
                  for r in requests]
        sent = []
        for r, frame in zip(requests, frames):
            changes: dict[str, Any] = {"prompt": r.revised_prompt} if r.revised_prompt else {}
            if frame is not None:
                changes["image"], changes["mask"] = frame.model_inputs()
            sent.append(r.replace(**changes) if changes else r)
        batch = Batch(spec, sent, [_seeds(spec, r) for r in requests])
        first_pass = progress if not requests[0].hires_scale else _Shifted(progress, 0, steps_of(requests[0]))
        outputs = provider.run_batch(batch, first_pass)
        _check_contract(provider, outputs, batch.seeds)
        for frame, output in zip(frames, outputs):
            if frame is not None:
                output.images = [frame.paste(im) for im in output.images]
        if requests[0].hires_scale:  # one request (hires requests run alone): its second pass, image by image
            self._hires(spec, sent[0], batch.seeds[0], outputs[0], provider, progress)
        return list(zip(batch.seeds, outputs))

    def _hires(self, spec: ModelSpec, r: ImageRequest, seeds: list, output: ProviderOutput, provider,
               progress: Progress) -> None:
        """A1111's hires fix: each image upscaled to the final size, then image-to-image from it at
        `hires_strength` with the same prompt and seed."""
        from ..upscalers import IMAGE_UPSCALERS, LATENT_UPSCALERS, picture_filter, resize, resize_latents

        step = spec.family.size_step
        size = (round(r.width * r.hires_scale / step) * step, round(r.height * r.hires_scale / step) * step)
        final = parse_size(r.hires_size) if r.hires_size else size  # an exact size: the upscale covers it, cropped
        size = (max(size[0], final[0]), max(size[1], final[1]))
        left, top = (size[0] - final[0]) // 2, (size[1] - final[1]) // 2
        box = (left, top, left + final[0], top + final[1])
        # the second pass refines the picture: image-to-image only (a ControlNet or an image prompt guided the first)
        second = r.replace(mode="vary", width=final[0], height=final[1], size=f"{final[0]}x{final[1]}",
                           strength=r.hires_strength, num_images=1, hires_scale=None, control=[], ip_adapter=None,
                           num_inference_steps=r.hires_steps or r.num_inference_steps)
        done, each = steps_of(r.replace(hires_scale=None)), steps_of(second)
        total = done + each * len(output.images)
        latent = r.hires_upscaler in LATENT_UPSCALERS
        if latent and output.latents is None and spec.family.latent_space != "pixels":
            output.warnings.append(f"{spec.name}'s latents cannot be upscaled as they are: the hires fix resized the "
                                   f"picture ({picture_filter(r.hires_upscaler)}) instead.")
        for i, (image, seed) in enumerate(zip(output.images, seeds)):
            latents = None
            if latent and output.latents is not None:
                factor = image.width / output.latents[i].shape[-1]  # the VAE's
                latents = resize_latents(output.latents[i], (round(size[0] / factor), round(size[1] / factor)),
                                         r.hires_upscaler)
                f_left, f_top = round(left / factor), round(top / factor)
                latents = latents[..., f_top:f_top + round(final[1] / factor), f_left:f_left + round(final[0] / factor)]
                big = resize(image, size, picture_filter(r.hires_upscaler))  # what the latents show, for the record
            elif latent:  # the built-in model's latents are its pixels
                big = resize(image, size, picture_filter(r.hires_upscaler))
            elif r.hires_upscaler in IMAGE_UPSCALERS:
                big = resize(image, size, r.hires_upscaler)
            else:
                big = resize(provider.upscale(image, r.hires_scale, r.hires_upscaler), size, "lanczos")
            big = big.crop(box) if big.size != final else big
            again = provider.run_batch(Batch(spec, [second.replace(image=big)], [[seed]], latents),
                                       _Shifted(progress, done + i * each, total))
            _check_contract(provider, again, [[seed]])
            output.images[i] = again[0].images[0]
        output.latents = None
        output.details["hires"] = {"scale": r.hires_scale, "upscaler": r.hires_upscaler,
                                   "strength": r.hires_strength, "steps": second.num_inference_steps,
                                   "first_pass_size": f"{r.width}x{r.height}",
                                   **({"size": r.hires_size} if r.hires_size else {})}


class _Shifted(Progress):
    """The progress of one pass of several: its steps counted after `done`, out of the whole `total`."""

    def __init__(self, progress: Progress, done: int, total: int):
        super().__init__()
        self.progress, self.done, self.total = progress, done, total

    def step(self, step: int, total: int, preview=None) -> None:
        # previews of a later pass would show other images than the batch's: only the first pass sends them
        self.progress.step(self.done + step, self.total, preview if self.done == 0 else None)

    @property
    def stopped(self) -> bool:
        return self.progress.stopped


def _upscaled(provider, r: ImageRequest, progress: Progress) -> ProviderOutput:
    """An upscale job's output: its image `scale` times as large, and what it was made from."""
    from ..upscalers import upscale_with

    image = upscale_with(provider, r.image, r.scale, r.upscaler, r.tile, progress)
    return ProviderOutput(images=[image], details={"upscale": {
        "upscaler": r.upscaler, "scale": r.scale, "tile": r.tile, "from_size": f"{r.image.width}x{r.image.height}"}})


def _check_contract(provider, outputs, seeds: list[list[int]]) -> None:
    """A provider answers one output per request and one image per seed; anything else is its defect, named."""
    if not isinstance(outputs, list) or len(outputs) != len(seeds):
        count = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
        raise ProviderError(f"The provider {provider.name!r} answered {count} outputs for {len(seeds)} requests.")
    for output, group in zip(outputs, seeds):
        images = getattr(output, "images", None)
        if not isinstance(images, list) or len(images) != len(group):
            count = len(images) if isinstance(images, list) else type(output).__name__
            raise ProviderError(f"The provider {provider.name!r} answered {count} images for {len(group)} seeds.")
        wrong = next((im for im in images if not isinstance(im, PIL.Image.Image)), None)
        if wrong is not None:
            raise ProviderError(f"The provider {provider.name!r} answered a {type(wrong).__name__} where a PIL "
                                f"image belongs.")


def _seeds(spec: ModelSpec, request: ImageRequest) -> list[int | None]:
    """One seed per image: the request's seed (drawn by the check when none was given) and the ones after it; None
    for a model that takes no seed (a remote service), whose images cannot be made again."""
    if "seed" not in spec.family.takes:
        return [None] * request.num_images
    return [request.seed + i for i in range(request.num_images)]


def steps_of(request: ImageRequest) -> int:
    """The denoising steps a checked request runs: image-to-image runs the last `strength` share of them, a hires
    fix adds its second pass for each image; remote services report none (1)."""
    total = request.num_inference_steps or 1
    if request.mode == "vary" and request.strength is not None:
        total = max(1, round(total * request.strength))
    if request.hires_scale:
        second = max(1, round((request.hires_steps or total) * request.hires_strength))
        total += second * request.num_images
    return total


def batch_key(spec: ModelSpec, r: ImageRequest) -> tuple:
    """Requests with equal keys can share one pipeline call."""
    if r.mode != "generate" or r.control or r.ip_adapter or r.hires_scale:  # input images, a second pass: alone
        return ("solo", id(r))
    return (spec.name, r.width, r.height, r.num_inference_steps, r.guidance_scale, r.scheduler,
            tuple(sorted(r.extra.items())), tuple(sorted(r.loras.items())))


def _batches(checked: list[tuple[ModelSpec, ImageRequest]], max_images: int) -> list[list[int]]:
    """Indices of compatible requests grouped in order of first appearance, each group at most `max_images`."""
    groups: dict[tuple, list[list[int]]] = {}
    for i, (spec, request) in enumerate(checked):
        chunks = groups.setdefault(batch_key(spec, request), [[]])
        size = sum(checked[j][1].num_images for j in chunks[-1])
        if chunks[-1] and size + request.num_images > max_images:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]
