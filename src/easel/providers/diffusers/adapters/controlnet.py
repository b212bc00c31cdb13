"""ControlNet: the family's ControlNet pipeline for the call's mode over the loaded one (its weights shared,
`from_pipe`), with the units' control models, each loaded once per pipeline, and each unit's map, weight and span."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ....catalog import CONTROLNET_MARKER
from .. import fit
from ..errors import does_not_fit, refuse
from .base import Adapter, Call, ModelFiles


class ControlNet(Adapter):
    kind = "controlnet"
    param = "control"

    def __init__(self, folder: Path | None, loader):
        self.folder, self.loader = folder, loader

    def fits(self, family) -> bool:
        return bool(family.controlnet)

    def uses(self, requests) -> list:
        return requests[0].control

    def model_folder(self, name: str, download: bool = True) -> Path | None:
        """A ControlNet model's folder (see `Loader.named_folder`)."""
        return self.loader.named_folder(name, self.folder, CONTROLNET_MARKER, "ControlNet", "control", download)

    def check(self, model: ModelFiles, uses: list) -> None:
        for unit in uses:
            controlnet = fit.read_config(self.model_folder(unit.model, download=False))
            refuse(fit.controlnet_misfit(unit.model, controlnet, model.denoiser, model.spec.name), "control")

    @contextlib.contextmanager
    def enter(self, call: Call, uses: list) -> Iterator[dict[str, Any]]:
        folders = tuple(str(self.model_folder(unit.model).resolve()) for unit in uses)
        key = ("control", call.first.mode, folders)
        loaded = call.loaded
        if key not in loaded.derived:
            models = [self._model(call, folder) for folder in folders]
            loaded.derived[key] = self._pipeline(call, models)
        for folder in folders:
            loaded.touch((self.kind, folder), release=functools.partial(_release, loaded.derived, folder))
        call.pipe = loaded.derived[key]
        yield _inputs(call.pipe, call.first)

    def _model(self, call: Call, folder: str):
        import diffusers

        from ..onednn import use_onednn_like

        derived = call.loaded.derived
        if (self.kind, folder) not in derived:
            pipe = call.loaded.pipe
            denoiser = getattr(pipe, "unet", None) or pipe.transformer
            model_class = getattr(diffusers, call.spec.family.controlnet_model)
            try:
                model = model_class.from_pretrained(folder, dtype=denoiser.dtype)
            except Exception as exc:  # noqa: BLE001 - not a ControlNet, or a damaged one
                raise does_not_fit(f"The ControlNet {Path(folder).name!r}", exc, "control") from None
            derived[(self.kind, folder)] = model.to(denoiser.device)
            use_onednn_like([model], denoiser)
        return derived[(self.kind, folder)]

    @staticmethod
    def _pipeline(call: Call, models: list):
        import diffusers

        family = call.spec.family
        multi = getattr(diffusers, family.controlnet_model.replace("ControlNet", "MultiControlNet"))
        controlnet = models[0] if len(models) == 1 else multi(models)
        pipe = call.loaded.pipe
        try:  # in the pipeline's dtype: from_pipe's default (float32) would convert the shared weights in place
            controlled = getattr(diffusers, family.controlnet[call.first.mode]).from_pipe(
                pipe, controlnet=controlnet, dtype=pipe.dtype)
        except Exception as exc:  # noqa: BLE001 - a ControlNet made for another architecture
            raise does_not_fit("The ControlNet", exc, "control") from None
        controlled.set_progress_bar_config(disable=True)
        return controlled


def _release(derived: dict, folder: str) -> None:
    """A control model goes with the ControlNet pipelines built over it."""
    derived.pop((ControlNet.kind, folder), None)
    for key in [k for k in derived if isinstance(k, tuple) and k[0] == "control" and folder in k[2]]:
        del derived[key]


def _inputs(pipe, request) -> dict[str, Any]:
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
