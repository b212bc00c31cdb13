"""What the web UI's controls do, as plain methods on the server's engine, apart from the layout (`ui/app.py`).

Every run is an engine job like any API request: it shows its progress and previews while it denoises, can be
cancelled, and lands in the same history. Errors are shown as messages (and on the status line), never as a
traceback."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from .. import masks
from ..engine.queue import Engine
from ..errors import EaselError
from ..catalog import CONTROLNET_MARKER, IP_ADAPTER_MARKER, lora_files, model_folders, upscaler_names
from ..control import ControlUnit, IPAdapter, preprocess
from ..upscalers import HIRES_UPSCALERS
from ..prompts import STYLE_PRESETS, compose_prompt, style_preset
from ..types import ImageRequest

PREVIEW_EVERY = 4  # steps between two preview images
MAX_COMPARE = 12
VARIATION_STRENGTH = 0.55  # keeps the picture's layout and colours, redraws its details
# Easel's parameter names -> the UI's labels, so that an error names the field a person sees
LABELS = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "num_inference_steps": "Steps",
          "guidance_scale": "Guidance", "n": "Images", "width": "Width", "height": "Height", "seed": "Seed",
          "strength": "Strength", "aspect": "Aspect preset", "model": "Model", "mask_blur": "Mask blur",
          "inpaint_full_res_padding": "Padding"}


def ui_error(exc: Exception) -> gr.Error:
    """Easel's errors as a UI message in the UI's own terms; anything else as a short message (the server log has
    the details)."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, EaselError):
        return gr.Error(exc.renamed(LABELS).message, print_exception=False)
    return gr.Error(f"Something went wrong: {type(exc).__name__}.", print_exception=False)


def _number(value, name: str, whole: bool = True) -> int | float | None:
    """A number from a UI field (or a client of its API): None when empty, else a finite number (whole where it
    must be), or an error naming the field; never truncated silently."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number but is {value!r}.", print_exception=False) from None
    if not math.isfinite(number) or (whole and not number.is_integer()):
        kind = "a whole number" if whole else "a finite number"
        raise gr.Error(f"{name} must be {kind} but is {value!r}.", print_exception=False)
    return int(number) if whole else number


def _seed(value) -> int | None:
    """The seed field: -1 (or empty) for a random seed."""
    seed = _number(value, "Seed")
    return None if seed is None or seed < 0 else seed


def to_image_request(prompt: str, *, negative: str | None = None, model: str | None = None,
                     aspect: str | None = None, width=None, height=None, steps=None, guidance=None, seed=None,
                     n=1, mode: str = "generate", image=None, mask=None, strength=None, mask_blur=None,
                     only_masked: bool = False, padding=32) -> ImageRequest:
    """The UI's form values as a request: the front's one mapping. Empty fields are the model's defaults; an
    aspect preset stands in for width and height."""
    preset = aspect if aspect and aspect != "custom" else None
    return ImageRequest(
        prompt=prompt or "", negative_prompt=negative or None, model=model or None,
        num_images=_number(n, "Images") or 1,
        width=None if preset else _number(width, "Width") or None,
        height=None if preset else _number(height, "Height") or None, aspect=preset,
        num_inference_steps=_number(steps, "Steps") or None, guidance_scale=_number(guidance, "Guidance", whole=False),
        seed=_seed(seed), mode=mode, image=image, mask=mask, strength=_number(strength, "Strength", whole=False),
        mask_blur=_number(mask_blur, "Mask blur"), inpaint_full_res=bool(only_masked),
        inpaint_full_res_padding=_number(padding, "Padding") or 0)


def _sameness(jobs, axis: str) -> str:
    """What the status line adds when the grid's cells came out the same (a model that ignores style words): that
    they did, and the warnings that say why."""
    pictures = {job.result.images[0].image.tobytes() for job in jobs}
    warnings = list(dict.fromkeys(w for job in jobs for w in job.result.warnings))
    if len(pictures) > 1 or len(jobs) < 2:
        return f" · {' '.join(warnings)}" if warnings and axis == "styles" else ""
    why = " ".join(warnings) or f"the model made the same image for every {axis[:-1]}"
    return f" · the images are all the same: {why}"


def ui_cache(home: Path) -> Path:
    """Copies of the images the UI shows (with their metadata), the one folder Gradio may serve files from:
    the workspace itself is never exposed by path."""
    folder = Path(home) / "ui-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _caption(im) -> str:
    return f"{'no seed' if im.seed is None else f'seed {im.seed}'} · {im.width}x{im.height}"


class Handlers:
    """The UI's actions on one engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.runner = engine.runner
        self.catalog = engine.runner.catalog
        self.settings = engine.runner.settings
        self.cache = ui_cache(self.settings.home)

    # -- shared ----------------------------------------------------------------------------------------------------
    def resolve(self, model: str | None):
        """The model a UI field names; as for any client of a server, never a folder it names itself."""
        if not model:
            return self.catalog.resolve(self.settings.default_model)
        return self.catalog.resolve(model, allow_paths=self.runner.allow_paths)

    def model_choices(self) -> list[tuple[str, str]]:
        """The models, the operator's checkpoint files among them (said as such, with their family)."""
        def label(spec) -> str:
            if spec.checkpoint or (spec.gguf and spec.local_path is not None):
                return f"{spec.name} ({spec.family.name} {'GGUF' if spec.gguf else 'checkpoint'})"
            return spec.name + ("" if spec.is_available_locally() else " (download)")

        return [(label(s), s.name) for s in self.catalog.listed()]

    def controlnet_choices(self) -> list[str]:
        return model_folders(self.settings.controlnets_folder, CONTROLNET_MARKER)

    def ip_adapter_choices(self) -> list[str]:
        return model_folders(self.settings.ip_adapters_folder, IP_ADAPTER_MARKER)

    @staticmethod
    def control_map(image, preprocessor):
        """What the ControlNet will receive: the image through its preprocessor."""
        if image is None:
            raise gr.Error("Upload a control image first.", print_exception=False)
        try:
            return preprocess(ControlUnit("-", image, preprocessor or "none"))
        except EaselError as exc:
            raise ui_error(exc) from None

    def upscaler_choices(self) -> list[str]:
        return [*HIRES_UPSCALERS, *upscaler_names(self.settings.upscalers_folder)]

    def lora_choices(self) -> list[str]:
        return list(lora_files(self.settings.loras_folder))

    def submit(self, request: ImageRequest, previews: bool = True):
        try:
            # the gallery shows each image as it forms
            return self.engine.submit(request, listen=True, preview_every=PREVIEW_EVERY if previews else 0,
                                      every_image=True)
        except Exception as exc:  # noqa: BLE001 - shown in the UI
            raise ui_error(exc) from None

    def follow(self, job, progress=None, previews: bool = True, label: str = "") -> Iterator[tuple[list | None, str]]:
        """(gallery items, status line) while the job runs, moving Gradio's progress bar when given one; a job
        that did not succeed raises its error."""
        with job.follow() as events:
            for event in events:
                if event.final:
                    break
                step, total = event.step, event.total_steps or 1
                if progress is not None:
                    progress((step, total), desc="Denoising", unit="steps")
                items = [(im, f"preview, step {step}") for im in event.previews] if previews else None
                yield items, f"{label}Step {step} of {total}"
        if job.state == "cancelled":
            raise gr.Error("Cancelled.", print_exception=False)
        if job.state != "succeeded":
            raise ui_error(job.error or EaselError("The job failed."))

    def shown(self, image_id: str, source: str | None = None, image=None) -> str:
        """The UI's copy of a saved image (by id), made once."""
        target = self.cache / f"{image_id}{Path(source).suffix if source else '.png'}"
        if not target.exists():
            if source:
                try:
                    os.link(source, target)  # no second copy on disk where the file system allows
                except OSError:
                    shutil.copyfile(source, target)
            else:
                target.write_bytes(image.to_bytes())
        return str(target)

    def shown_result(self, result) -> list[tuple[str, str]]:
        return [(self.shown(im.id, im.path, im), _caption(im)) for im in result.images]

    # -- Generate --------------------------------------------------------------------------------------------------
    def generate(self, prompt, negative, model, aspect, width, height, steps, guidance, seed, n, batches=1,
                 control_image=None, control_model=None, preprocessor="none", control_weight=1.0, hires_scale=1.0,
                 hires_upscaler="lanczos", hires_strength=0.55, hires_steps=0, ip_image=None, ip_model=None,
                 ip_scale=0.6, state=None, progress=gr.Progress()):
        """`batches` runs of `n` images each (A1111's batch count x batch size), seeds following on; with a
        control image and model, guided by that ControlNet; with an image prompt and an IP-Adapter, steered by
        that picture; with a hires scale above 1, through the hires fix."""
        state = dict(state or {})
        try:
            takes = self.resolve(model).family.takes  # a remote model picks its own steps, guidance and seed
            request = to_image_request(prompt, negative=negative, model=model, aspect=aspect, width=width,
                                       height=height, steps=steps if "steps" in takes else None,
                                       guidance=guidance if "guidance" in takes else None,
                                       seed=seed if "seed" in takes else None, n=n)
            if control_image is not None and control_model:
                request.control = [ControlUnit(control_model, control_image, preprocessor or "none",
                                               _number(control_weight, "ControlNet weight", whole=False))]
            if ip_image is not None and ip_model:
                ip = _number(ip_scale, "Image prompt scale", whole=False)
                request.ip_adapter = IPAdapter(ip_model, ip_image, 0.6 if ip is None else ip)
            scale = _number(hires_scale, "Hires scale", whole=False) or 1.0
            if scale != 1:
                strength = _number(hires_strength, "Hires strength", whole=False)
                request = request.replace(hires_scale=scale, hires_upscaler=hires_upscaler or "lanczos",
                                          hires_strength=0.55 if strength is None else strength,
                                          hires_steps=_number(hires_steps, "Hires steps") or None)
            count = 1 if batches in (None, "") else _number(batches, "Batches")
            if not 1 <= count <= 100:
                raise gr.Error(f"Batches must be between 1 and 100 but is {count}.", print_exception=False)
            first = self.runner.check(request)  # draws the seed, so that the batches' seeds follow on from it
            seed0 = first.request.seed
            jobs = [self.submit(first)] + [
                self.submit(request.replace(seed=None if seed0 is None else seed0 + i * request.num_images))
                for i in range(1, count)]
        except Exception as exc:  # noqa: BLE001 - the status line says it too, so that no old status stays
            yield gr.skip(), f"Error: {ui_error(exc).message}", gr.skip(), state
            raise ui_error(exc) from None
        state["job"] = jobs[0].id
        state["jobs"] = [job.id for job in jobs]
        yield [], "Queued", None, state
        images, results = [], []
        try:
            for i, job in enumerate(jobs):
                label = f"Batch {i + 1} of {len(jobs)} · " if len(jobs) > 1 else ""
                for previews, status in self.follow(job, progress, label=label):
                    yield (images + previews) if previews else gr.skip(), status, gr.skip(), state
                results.append(job.result)
                images += self.shown_result(job.result)
        except gr.Error as exc:
            yield gr.skip(), f"Error: {exc.message}", gr.skip(), state
            raise
        state["last_seed"] = results[0].images[0].seed
        # the metadata panel shows each image as made: a hires image's final size (its first pass is in `hires`)
        state["images"] = [{"id": im.id, **im.parameters, "width": im.width, "height": im.height}
                           for r in results for im in r.images]
        note = f"Done in {sum(r.elapsed_s for r in results):.1f} s · {results[0].model}"
        warnings = list(dict.fromkeys(w for r in results for w in r.warnings))
        if warnings:
            note += " · " + " ".join(warnings)
        yield images, note, state["images"][0], state

    def cancel(self, state):
        for job_id in (state or {}).get("jobs") or [(state or {}).get("job")]:
            if job_id:
                try:
                    self.engine.cancel(job_id)
                except EaselError:
                    pass  # already finished
        return "Cancelling…"

    @staticmethod
    def reuse_seed(state):
        return (state or {}).get("last_seed", -1)

    @staticmethod
    def show_selected(state, evt: gr.SelectData):
        images = (state or {}).get("images") or []
        return images[evt.index] if evt.index is not None and evt.index < len(images) else None

    def on_model(self, model):
        try:
            spec = self.resolve(model)
        except EaselError as exc:
            raise ui_error(exc) from None
        family = spec.family  # the aspect stays custom: the width and height shown are the ones made
        return (gr.update(choices=["custom", *family.aspects], value="custom"),
                gr.update(value=family.size[0], step=family.size_step, maximum=family.max_side),
                gr.update(value=family.size[1], step=family.size_step, maximum=family.max_side),
                gr.update(value=spec.default_steps or 1), gr.update(value=spec.default_guidance or 0.0),
                gr.update(value=family.quality_words.get("en", "")), gr.update(interactive=family.negative_prompt))

    def on_aspect(self, aspect, model):
        """A preset's width and height into the fields, so that what they show is what is made."""
        if not aspect or aspect == "custom":
            return gr.skip(), gr.skip()
        try:
            width, height = self.resolve(model).family.aspects[aspect]
        except (EaselError, KeyError):
            return gr.skip(), gr.skip()
        return width, height

    def final_prompt(self, prompt, model):
        """What the model will receive, from the check that a request goes through: the prompt (without LoRA tags,
        with the family's quality words), the LoRAs and their weights, and what the model will ignore."""
        if not (prompt or "").strip():
            return ""
        try:
            checked = self.runner.check(ImageRequest(prompt=prompt, model=model or None)).request
        except EaselError as exc:
            return exc.message
        lines = [checked.revised_prompt or checked.prompt]
        if checked.loras:
            lines.append("LoRAs: " + ", ".join(f"{name} x{weight:g}" for name, weight in checked.loras.items()))
        return "\n".join([*lines, *checked.warnings])

    @staticmethod
    def insert_lora(prompt, name, weight) -> str:
        """The prompt with `<lora:name:weight>`; a tag of that LoRA already there takes the new weight."""
        if not name:
            return prompt
        tag = f"<lora:{name}:{float(weight):g}>"
        same = re.compile(rf"<lora:{re.escape(name)}(?::[^<>]*)?>", re.IGNORECASE)
        if same.search(prompt or ""):
            return same.sub(lambda _: tag, prompt, count=1)
        return f"{(prompt or '').rstrip()} {tag}".strip()

    # -- Compare ---------------------------------------------------------------------------------------------------
    def axis_values(self, axis: str) -> str:
        """The values to offer when the axis changes: a few seeds, the style presets, or the installed models."""
        if axis == "styles":
            return ", ".join(name for name in STYLE_PRESETS if name != "none")[:200]
        if axis == "models":
            local = [s.name for s in self.catalog.listed() if s.is_available_locally()]
            return ", ".join(local[:MAX_COMPARE])
        return "1, 2, 3, 4"

    def _compare_request(self, axis: str, item: str, base: dict[str, Any]) -> ImageRequest:
        """One cell of the grid; a value that the axis does not know is refused, naming it."""
        fields = dict(base)
        if axis == "styles":
            if style_preset(item) is None:
                raise gr.Error(f"Unknown style {item!r} (styles: {', '.join(STYLE_PRESETS)}).", print_exception=False)
            fields["prompt"] = compose_prompt(base["prompt"], "", style_preset(item), "", "", "")
        elif axis == "seeds":
            if not item.isascii() or not item.lstrip("-").isdigit():
                raise gr.Error(f"{item!r} is not a seed (a whole number).", print_exception=False)
            fields["seed"] = int(item)
        elif axis == "models":
            try:
                fields["model"] = self.resolve(item).name
            except EaselError as exc:
                raise ui_error(exc) from None
        else:
            raise gr.Error(f"Unknown axis {axis!r} (styles, seeds or models).", print_exception=False)
        return to_image_request(**fields)

    def compare(self, prompt, axis, values, model, seed, width, height, progress=gr.Progress()):
        items = [v.strip() for v in (values or "").split(",") if v.strip()]
        try:
            if not items:
                raise gr.Error("List the styles, seeds or models to compare, separated by commas.",
                               print_exception=False)
            if len(items) > MAX_COMPARE:
                raise gr.Error(f"Compare at most {MAX_COMPARE} values at a time, not {len(items)}.",
                               print_exception=False)
            base = dict(prompt=prompt, model=model or None, seed=_seed(seed) or 0, width=width, height=height)
            requests = [self._compare_request(axis, item, base) for item in items]  # every value checked first
            jobs = [self.submit(r, previews=False) for r in requests]  # queued together: the engine batches them
            labels = [f"{axis[:-1]}: {item}" for item in items]
            for done, job in enumerate(jobs):
                progress((done, len(jobs)), desc="Images", unit="images")
                for _ in self.follow(job, previews=False):
                    yield gr.skip(), f"Image {done + 1} of {len(jobs)}: running"
        except Exception as exc:  # noqa: BLE001 - on the status line too, so that no old status stays
            yield gr.skip(), f"Error: {ui_error(exc).message}"
            raise ui_error(exc) from None
        yield ([(self.shown_result(job.result)[0][0], label) for job, label in zip(jobs, labels)],
               f"{len(jobs)} images, one per {axis[:-1]}" + _sameness(jobs, axis))

    # -- Edit ------------------------------------------------------------------------------------------------------
    @staticmethod
    def editor_parts(value):
        if not value or value.get("background") is None:
            raise gr.Error("Upload or pick an image first.", print_exception=False)
        background = value["background"].convert("RGB")
        return background, masks.from_layers(value.get("layers") or [], background.size)

    def inpaint(self, value, prompt, strength, seed, mask_blur=4, only_masked=False, padding=32, model=None,
                progress=gr.Progress()):
        try:
            image, mask = self.editor_parts(value)  # nothing painted: the prompt's edit of the whole picture
            job = self.submit(to_image_request(prompt, model=model, mode="edit", image=image, mask=mask,
                                               strength=strength, seed=seed, mask_blur=mask_blur,
                                               only_masked=only_masked, padding=padding))
        except Exception as exc:  # noqa: BLE001
            yield gr.skip(), f"Error: {ui_error(exc).message}"
            raise ui_error(exc) from None
        yield from self._edit_updates(job, progress)

    def variations(self, value, prompt, strength, seed, model=None, progress=gr.Progress()):
        try:
            image, _ = self.editor_parts(value)
            job = self.submit(to_image_request(prompt, model=model, mode="vary", image=image, n=2, strength=strength,
                                               seed=seed))
        except Exception as exc:  # noqa: BLE001
            yield gr.skip(), f"Error: {ui_error(exc).message}"
            raise ui_error(exc) from None
        yield from self._edit_updates(job, progress)

    def _edit_updates(self, job, progress):
        yield [], "Queued"
        try:
            for previews, status in self.follow(job, progress):
                yield previews if previews else gr.skip(), status
        except gr.Error as exc:
            yield gr.skip(), f"Error: {exc.message}"
            raise
        yield self.shown_result(job.result), "Done"

    # -- History ---------------------------------------------------------------------------------------------------
    def history(self, search):
        workspace = self.runner.workspace()
        rows = [(r, workspace.image_file(r["id"])) for r in workspace.history.recent(48, search or None)]
        rows = [(r, path) for r, path in rows if path is not None]  # only real files inside the images folder
        return [(self.shown(r["id"], str(path)), r["prompt"][:60]) for r, path in rows], [r for r, _ in rows]

    @staticmethod
    def pick(rows, evt: gr.SelectData):
        if evt.index is None or evt.index >= len(rows or []):
            return None, None
        row = rows[evt.index]
        return json.loads(row["parameters"]), row

    def reopen(self, row):
        """An image's settings back in the Generate tab: prompt, model, size, steps, guidance, seed, and its hires
        fix, ControlNet and image prompt (whose pictures the record does not keep: the status line says so)."""
        if not row:
            raise gr.Error("Pick an image in the history first.", print_exception=False)
        p = json.loads(row["parameters"])
        hires, units, ip = p.get("hires") or {}, p.get("control") or [], p.get("ip_adapter") or {}
        unit = units[0] if units else {}
        missing = [what for what, used in (("the ControlNet's control image", unit), ("the image prompt's picture",
                                                                                     ip)) if used]
        note = f"Reopened: give {' and '.join(missing)} again (a record keeps no pictures)." if missing else ""
        return (p.get("prompt", ""), p.get("negative_prompt") or "", p.get("model", self.settings.default_model),
                "custom", p.get("width"), p.get("height"), p.get("num_inference_steps"), p.get("guidance_scale"),
                p.get("seed", -1), hires.get("scale", 1), hires.get("upscaler", "lanczos"),
                hires.get("strength", 0.55), hires.get("steps") or 0,
                unit.get("model"), unit.get("preprocessor", "canny"), unit.get("weight", 1.0),
                ip.get("model"), ip.get("scale", 0.6), note, gr.Tabs(selected="generate"))

    def to_editor(self, row):
        if not row:
            raise gr.Error("Pick an image in the history first.", print_exception=False)
        path = self.runner.workspace().image_file(row["id"])
        if path is None:
            raise gr.Error("This image's file is gone from the workspace.", print_exception=False)
        picture = self.shown(row["id"], str(path))
        model = json.loads(row["parameters"]).get("model") or row["model"]  # edited with the model that made it
        return ({"background": picture, "layers": [], "composite": picture}, row["prompt"], model,
                gr.Tabs(selected="edit"))
