"""The direct path of one request: check, seed, run the provider, save and record. Every front ends here."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from ..catalog import ModelCatalog, ModelSpec, default_catalog, operator_catalog
from ..checks import CheckedRequest, check_request, quality_words_for
from ..config import Settings, get_settings
from ..errors import ProviderError
from ..providers.base import ProviderRegistry, StepCallback
from ..store import Workspace, now_iso
from ..types import GeneratedImage, ImageRequest, ImageResult


def revise_prompt(spec: ModelSpec, prompt: str) -> str | None:
    """The prompt with the family's recommended quality words appended, where the family's authors do so."""
    if not spec.family.append_quality_words:
        return None
    words = quality_words_for(spec, prompt)
    if not words or prompt.rstrip().endswith(words):
        return None
    return f"{prompt.rstrip()} {words}"


def image_parameters(spec: ModelSpec, request: ImageRequest, seed: int, revised: str | None,
                     details: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to make an image again, as recorded in its file and in the history."""
    params: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "model": spec.name,
        "seed": seed,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "width": request.width,
        "height": request.height,
        "scheduler": request.scheduler,
        "mode": request.mode,
        "output_format": request.output_format,
        "version": __version__,
        "created": now_iso(),
    }
    if request.strength is not None and request.mode != "generate":
        params["strength"] = request.strength
    if request.extra:
        params["extra"] = dict(request.extra)
    if revised:
        params["revised_prompt"] = revised
    params.update(details)
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

    def workspace(self, out_dir: Path | None = None) -> Workspace:
        key = Path(out_dir).resolve() if out_dir else None
        if key not in self._workspaces:
            self._workspaces[key] = Workspace(self.settings.home, key)
        return self._workspaces[key]

    def check(self, request: ImageRequest | CheckedRequest) -> CheckedRequest:
        """The one check of a request (the common checks, then its provider's); a checked one passes as it is."""
        if isinstance(request, CheckedRequest):
            return request
        checked = check_request(request, self.catalog, self.settings.default_model, self.settings.moderation,
                                self.allow_paths)
        self.registry.get(checked.spec.provider).check(*checked)
        return checked

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
        results: list[ImageResult | None] = [None] * len(requests)
        for group in _batches(checked, max_batch_images):
            started = time.perf_counter()
            spec = checked[group[0]][0]
            todo = [checked[i][1] for i in group]
            seeds = [_seeds(r) for r in todo]
            revised = [revise_prompt(spec, r.prompt) for r in todo]
            to_run = [r.replace(prompt=rev) if rev else r for r, rev in zip(todo, revised)]
            provider = self.registry.get(spec.provider)
            kwargs = {"should_stop": should_stop} if should_stop is not None else {}
            outputs = provider.run_batch(spec, to_run, seeds, on_step, **kwargs)
            _check_contract(provider, outputs, seeds)
            elapsed = (time.perf_counter() - started) / len(group)
            for i, request, group_seeds, rev, output in zip(group, todo, seeds, revised, outputs):
                images = [
                    GeneratedImage(image=im, seed=seed, output_format=request.output_format,
                                   parameters=image_parameters(spec, request, seed, rev, output.details))
                    for im, seed in zip(output.images, group_seeds)
                ]
                if save:
                    workspace = self.workspace(out_dir)
                    images = [workspace.save(im) for im in images]
                results[i] = ImageResult(images=images, model=spec.name, prompt=request.prompt,
                                         revised_prompt=rev or output.revised_prompt, warnings=output.warnings,
                                         elapsed_s=elapsed)
        return results


def _check_contract(provider, outputs, seeds: list[list[int]]) -> None:
    """A provider answers one output per request and one image per seed; anything else is its defect, named."""
    if not isinstance(outputs, list) or len(outputs) != len(seeds):
        count = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
        raise ProviderError(f"The provider {provider.name!r} answered {count} outputs for {len(seeds)} requests.")
    for output, group in zip(outputs, seeds):
        if len(output.images) != len(group):
            raise ProviderError(f"The provider {provider.name!r} answered {len(output.images)} images for "
                                f"{len(group)} seeds.")


def _seeds(request: ImageRequest) -> list[int]:
    """One seed per image: the request's seed and the ones after it, or a random start when none is given."""
    base = request.seed if request.seed is not None else secrets.randbelow(2**32)
    return [base + i for i in range(request.num_images)]


def batch_key(spec: ModelSpec, r: ImageRequest) -> tuple:
    """Requests with equal keys can share one pipeline call."""
    if r.mode != "generate":
        return ("solo", id(r))
    return (spec.name, r.width, r.height, r.num_inference_steps, r.guidance_scale, r.scheduler,
            tuple(sorted(r.extra.items())))


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
