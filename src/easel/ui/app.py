"""The web UI: a Gradio Blocks app on the server's engine and history (tabs Generate, Compare, Edit, History).

Every run is an engine job like any API request: it shows its progress and previews while it denoises, can be
cancelled, and lands in the same history. Errors are shown as messages, never as a traceback."""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import ImageChops

from ..engine.jobs import FINAL
from ..engine.queue import Engine
from ..engine.runner import revise_prompt
from ..errors import EaselError
from ..types import ImageRequest

STYLE_PRESETS = {
    "none": "",
    "photo": "photograph, natural light, 35mm, shallow depth of field",
    "oil painting": "oil painting, visible brush strokes, rich colours",
    "watercolour": "watercolour, soft edges, paper texture",
    "anime": "anime style, clean line art, cel shading",
    "3d render": "3d render, octane, soft global illumination",
    "pixel art": "pixel art, 16-bit, limited palette",
    "sketch": "pencil sketch, cross-hatching, monochrome",
}
PREVIEW_EVERY = 4  # steps between two preview images


def compose_prompt(subject: str, action: str, style: str, environment: str, details: str, quality: str) -> str:
    """The prompt formula: subject, action, style, environment, details, quality words; empty parts left out."""
    parts = [subject, action, environment, details, STYLE_PRESETS.get(style, style), quality]
    return ", ".join(p.strip() for p in parts if p and p.strip())


def _fail(exc: Exception):
    """Easel's errors as a UI message; anything else as a short message (the server log has the details)."""
    if isinstance(exc, EaselError):
        return gr.Error(exc.message, print_exception=False)
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


def _caption(im) -> str:
    return f"seed {im.seed} · {im.width}x{im.height}"


def ui_cache(home: Path) -> Path:
    """Copies of the images the UI shows (with their metadata), the one folder Gradio may serve files from:
    the workspace itself is never exposed by path."""
    folder = Path(home) / "ui-cache"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _gallery(label: str, elem_id: str, columns: int = 4, height: int = 360, **options) -> gr.Gallery:
    """A grid of whole images (never cropped, one image not stretched to the full width)."""
    return gr.Gallery(label=label, columns=columns, height=height, format="png", preview=False,
                      object_fit="contain", fit_columns=False, elem_id=elem_id, **options)


def build_ui(engine: Engine) -> gr.Blocks:
    runner = engine.runner
    catalog = runner.catalog
    settings = runner.settings

    def model_choices() -> list[tuple[str, str]]:
        choices = []
        for spec in catalog.models.values():
            label = spec.name + ("" if spec.is_available_locally() else " (download)")
            choices.append((label, spec.name))
        return choices

    def resolve(model: str | None):
        """The model a UI field names; as for any client of a server, never a folder it names itself."""
        return catalog.resolve(model, allow_paths=runner.allow_paths) if model else catalog.resolve(
            settings.default_model)

    def family_of(model: str):
        return resolve(model).family

    # -- running jobs ----------------------------------------------------------------------------------------------
    def follow(job, progress=None, previews: bool = True) -> Iterator[tuple[list | None, str]]:
        """(gallery items, status line) while the job runs, moving Gradio's progress bar when given one."""
        events = job.events
        while True:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if event is None:
                break
            if event.get("status") in FINAL:
                continue
            images = event.get("preview") or []
            step, total = event.get("step", 0), event.get("total_steps") or 1
            if progress is not None:
                progress((step, total), desc="Denoising", unit="steps")
            status = f"Step {step} of {total}"
            yield ([(im, f"preview, step {event.get('step')}") for im in images] if previews else None), status
        if job.state == "cancelled":
            raise gr.Error("Cancelled.", print_exception=False)
        if job.state != "succeeded":
            raise _fail(job.error or EaselError("The job failed."))

    def submit(request: ImageRequest, previews: bool = True):
        try:
            job = engine.submit(request, listen=True)
        except Exception as exc:  # noqa: BLE001 - shown in the UI
            raise _fail(exc) from None
        if previews:
            job.preview_every(PREVIEW_EVERY)
        return job

    cache = ui_cache(settings.home)

    def shown(image_id: str, source: str | None = None, image=None) -> str:
        """The UI's copy of a saved image (by id), made once."""
        suffix = Path(source).suffix if source else ".png"
        target = cache / f"{image_id}{suffix}"
        if not target.exists():
            if source:
                try:
                    os.link(source, target)  # no second copy on disk where the file system allows
                except OSError:
                    shutil.copyfile(source, target)
            else:
                target.write_bytes(image.to_bytes())
        return str(target)

    def shown_result(result) -> list[tuple[str, str]]:
        return [(shown(im.id, im.path, im), _caption(im)) for im in result.images]

    def metadata(im) -> dict[str, Any]:
        return {"id": im.id, **im.parameters}  # the id, not the server's path: the UI may be remote

    # -- Generate --------------------------------------------------------------------------------------------------
    def generate(prompt, negative, model, aspect, width, height, steps, guidance, seed, n, state,
                 progress=gr.Progress()):
        try:
            takes = family_of(model).takes  # a remote model may pick its own steps, guidance and seed
        except EaselError as exc:
            raise _fail(exc) from None
        steps, guidance = (steps if "steps" in takes else None), (guidance if "guidance" in takes else None)
        seed = seed if "seed" in takes else None
        request = ImageRequest(prompt=prompt, negative_prompt=negative or None, model=model or None,
                               num_images=_number(n, "Images") or 1, width=_number(width, "Width") or None,
                               height=_number(height, "Height") or None,
                               aspect=aspect if aspect and aspect != "custom" else None,
                               num_inference_steps=_number(steps, "Steps") or None,
                               guidance_scale=_number(guidance, "Guidance", whole=False), seed=_seed(seed))
        if request.aspect:
            request.width = request.height = None
        job = submit(request)
        state = {**(state or {}), "job": job.id}
        yield [], "Queued", None, state
        for previews, status in follow(job, progress):
            yield previews if previews else gr.skip(), status, gr.skip(), state
        result = job.result
        state["last_seed"] = result.images[0].seed
        state["images"] = [metadata(im) for im in result.images]
        note = f"Done in {result.elapsed_s:.1f} s · {result.model}"
        if result.warnings:
            note += " · " + " ".join(result.warnings)
        yield shown_result(result), note, state["images"][0], state

    def cancel(state):
        job_id = (state or {}).get("job")
        if job_id:
            try:
                engine.cancel(job_id)
            except EaselError:
                pass  # already finished
        return "Cancelling…"

    def reuse_seed(state):
        return (state or {}).get("last_seed", -1)

    def show_selected(state, evt: gr.SelectData):
        images = (state or {}).get("images") or []
        return images[evt.index] if evt.index is not None and evt.index < len(images) else None

    def on_model(model):
        try:
            spec = resolve(model)
        except EaselError as exc:
            raise _fail(exc) from None
        family = spec.family
        aspects = ["custom", *family.aspects]
        quality = family.quality_words.get("en", "")
        return (gr.update(choices=aspects, value="1:1" if "1:1" in family.aspects else "custom"),
                gr.update(value=family.size[0], step=family.size_step, maximum=family.max_side),
                gr.update(value=family.size[1], step=family.size_step, maximum=family.max_side),
                gr.update(value=spec.default_steps or 1), gr.update(value=spec.default_guidance or 0.0),
                gr.update(value=quality), gr.update(interactive=family.negative_prompt))

    def final_prompt(prompt, model):
        try:
            spec = resolve(model)
        except EaselError as exc:
            return exc.message
        return revise_prompt(spec, prompt or "") or prompt

    # -- Compare ---------------------------------------------------------------------------------------------------
    def compare(prompt, axis, values, model, seed, width, height, progress=gr.Progress()):
        items = [v.strip() for v in (values or "").split(",") if v.strip()]
        if not items:
            raise gr.Error("List the styles, seeds or models to compare, separated by commas.",
                           print_exception=False)
        base = dict(prompt=prompt, model=model or None, seed=_seed(seed) or 0, width=_number(width, "Width"),
                    height=_number(height, "Height"))
        requests, labels = [], []
        for item in items[:12]:
            fields = dict(base)
            if axis == "styles":
                fields["prompt"] = compose_prompt(prompt, "", item, "", "", "")
            elif axis == "seeds":
                if not item.isascii() or not item.lstrip("-").isdigit():
                    raise gr.Error(f"`{item}` is not a seed (a whole number).", print_exception=False)
                fields["seed"] = int(item)
            else:
                fields["model"] = item
            requests.append(ImageRequest(**fields))
            labels.append(f"{axis[:-1]}: {item}")
        jobs = [submit(r, previews=False) for r in requests]  # queued together, so the engine batches them
        done = 0
        for job in jobs:
            progress((done, len(jobs)), desc="Images", unit="images")
            for _ in follow(job, previews=False):
                yield gr.skip(), f"Image {done + 1} of {len(jobs)}: running"
            done += 1
        yield ([(shown_result(job.result)[0][0], label) for job, label in zip(jobs, labels)],
               f"{len(jobs)} images, one per {axis[:-1]}")

    # -- Edit ------------------------------------------------------------------------------------------------------
    def editor_parts(value):
        if not value or value.get("background") is None:
            raise gr.Error("Upload or pick an image first.", print_exception=False)
        background = value["background"].convert("RGB")
        mask = None
        for layer in value.get("layers") or []:  # whatever the brush painted, on any layer, is the mask
            alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
            if alpha.size != background.size:
                alpha = alpha.resize(background.size)
            mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
        return background, mask

    def inpaint(value, prompt, strength, seed, progress=gr.Progress()):
        image, mask = editor_parts(value)
        if mask is None or not mask.getbbox():
            raise gr.Error("Paint over the part to change (the brush marks the mask).", print_exception=False)
        job = submit(ImageRequest(prompt=prompt, mode="edit", image=image, mask=mask,
                                  strength=_number(strength, "Strength", whole=False), seed=_seed(seed)))
        yield from _edit_updates(job, progress)

    def variations(value, prompt, strength, seed, progress=gr.Progress()):
        image, _ = editor_parts(value)
        job = submit(ImageRequest(prompt=prompt or "", mode="vary", image=image, num_images=2,
                                  strength=_number(strength, "Strength", whole=False), seed=_seed(seed)))
        yield from _edit_updates(job, progress)

    def _edit_updates(job, progress):
        yield [], "Queued"
        for previews, status in follow(job, progress):
            yield previews if previews else gr.skip(), status
        yield shown_result(job.result), "Done"

    # -- History ---------------------------------------------------------------------------------------------------
    def history(search):
        workspace = runner.workspace()
        rows = [(r, workspace.image_file(r["id"])) for r in workspace.history.recent(48, search or None)]
        rows = [(r, path) for r, path in rows if path is not None]  # only real files inside the images folder
        return [(shown(r["id"], str(path)), r["prompt"][:60]) for r, path in rows], [r for r, _ in rows]

    def pick(rows, evt: gr.SelectData):
        if evt.index is None or evt.index >= len(rows or []):
            return None, None
        row = rows[evt.index]
        return json.loads(row["parameters"]), row

    def reopen(row):
        if not row:
            raise gr.Error("Pick an image in the history first.", print_exception=False)
        p = json.loads(row["parameters"])
        return (p.get("prompt", ""), p.get("negative_prompt") or "", p.get("model", settings.default_model),
                "custom", p.get("width"), p.get("height"), p.get("num_inference_steps"), p.get("guidance_scale"),
                p.get("seed", -1), gr.Tabs(selected="generate"))

    def to_editor(row):
        if not row:
            raise gr.Error("Pick an image in the history first.", print_exception=False)
        path = runner.workspace().image_file(row["id"])
        if path is None:
            raise gr.Error("This image's file is gone from the workspace.", print_exception=False)
        picture = shown(row["id"], str(path))
        return {"background": picture, "layers": [], "composite": picture}, row["prompt"], gr.Tabs(selected="edit")

    # -- layout ----------------------------------------------------------------------------------------------------
    default = catalog.resolve(settings.default_model)
    fam = default.family
    with gr.Blocks(title="Easel") as ui:
        state = gr.State({})
        gr.Markdown("## Easel\nText to image with any model. Every image is saved in the workspace and the history.")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                            placeholder="a large red circle on the left on a blue background")
                        negative = gr.Textbox(label="Negative prompt", elem_id="negative",
                                              interactive=fam.negative_prompt)
                        with gr.Accordion("Prompt help", open=False, elem_id="prompt-help"):
                            with gr.Row():
                                subject = gr.Textbox(label="Subject", elem_id="subject")
                                action = gr.Textbox(label="Action")
                            with gr.Row():
                                style = gr.Dropdown(list(STYLE_PRESETS), value="none", label="Style preset",
                                                    elem_id="style")
                                environment = gr.Textbox(label="Environment")
                            with gr.Row():
                                details = gr.Textbox(label="Details")
                                quality = gr.Textbox(label="Quality words (the model's own)",
                                                     value=fam.quality_words.get("en", ""))
                            build = gr.Button("Build the prompt", elem_id="build-prompt")
                        sent = gr.Textbox(label="Final prompt (what the model receives)", interactive=False,
                                          elem_id="final-prompt")
                        with gr.Row():
                            go = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
                        status = gr.Markdown("", elem_id="status")
                    with gr.Column(scale=1):
                        model = gr.Dropdown(model_choices(), value=default.name, label="Model",
                                            allow_custom_value=True, elem_id="model")
                        aspect = gr.Dropdown(["custom", *fam.aspects], value="custom", label="Aspect preset",
                                             elem_id="aspect")
                        with gr.Row():
                            width = gr.Number(fam.size[0], label="Width", step=fam.size_step, elem_id="width")
                            height = gr.Number(fam.size[1], label="Height", step=fam.size_step, elem_id="height")
                        steps = gr.Slider(1, 100, value=default.default_steps or 20, step=1, label="Steps",
                                          elem_id="steps")
                        guidance = gr.Slider(0, 20, value=default.default_guidance or 0, step=0.5,
                                             label="Guidance", elem_id="guidance")
                        with gr.Row():
                            seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="seed")
                            reuse = gr.Button("Reuse last seed", elem_id="reuse-seed")
                        n = gr.Slider(1, 4, value=1, step=1, label="Images", elem_id="n")
                with gr.Row():
                    gallery = _gallery("Images", "gallery", buttons=["download", "fullscreen"])
                    info = gr.JSON(label="Metadata of the selected image", elem_id="metadata")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    c_prompt = gr.Textbox(label="Prompt", elem_id="compare-prompt")
                    c_axis = gr.Radio(["styles", "seeds", "models"], value="seeds", label="Compare across",
                                      elem_id="compare-axis")
                c_values = gr.Textbox(label="Values, separated by commas", value="1, 2, 3, 4",
                                      elem_id="compare-values")
                with gr.Row():
                    c_model = gr.Dropdown(model_choices(), value=default.name, label="Model",
                                          allow_custom_value=True)
                    c_seed = gr.Number(0, label="Seed", precision=0)
                    c_width = gr.Number(fam.size[0], label="Width", step=fam.size_step)
                    c_height = gr.Number(fam.size[1], label="Height", step=fam.size_step)
                c_go = gr.Button("Compare", variant="primary", elem_id="compare-go")
                c_status = gr.Markdown("", elem_id="compare-status")
                c_grid = _gallery("Grid", "compare-grid")
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    editor = gr.ImageEditor(type="pil", label="Image (paint the part to change)", height=420,
                                            brush=gr.Brush(colors=["#ff00aa"], default_size=12),
                                            layers=False, elem_id="editor")
                    with gr.Column():
                        e_prompt = gr.Textbox(label="Describe the change", elem_id="edit-prompt")
                        e_strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
                        e_seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
                        with gr.Row():
                            e_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                            e_vary = gr.Button("Variations", elem_id="variations")
                        e_status = gr.Markdown("", elem_id="edit-status")
                e_gallery = _gallery("Results", "edit-gallery", height=300, buttons=["download"])
            with gr.Tab("History", id="history"):
                rows = gr.State([])
                picked = gr.State(None)
                with gr.Row():
                    search = gr.Textbox(label="Search prompts", elem_id="history-search")
                    refresh = gr.Button("Search", elem_id="history-refresh")
                h_gallery = _gallery("Recent", "history-gallery", columns=6, height=320)
                with gr.Row():
                    h_info = gr.JSON(label="Settings", elem_id="history-metadata")
                    with gr.Column():
                        h_reopen = gr.Button("Open in Generate", elem_id="history-reopen")
                        h_edit = gr.Button("Edit this image", elem_id="history-edit")

        inputs = [prompt, negative, model, aspect, width, height, steps, guidance, seed, n, state]
        # the progress bar sits on the metadata panel, so that the gallery's previews stay in view
        go.click(generate, inputs, [gallery, status, info, state], concurrency_limit=None, show_progress_on=[info])
        private = dict(api_visibility="private")  # UI plumbing: not part of the app's API
        prompt.submit(generate, inputs, [gallery, status, info, state], concurrency_limit=None,
                      show_progress_on=[info], **private)
        stop.click(cancel, [state], [status], queue=False, **private)
        reuse.click(reuse_seed, [state], [seed], queue=False, **private)
        gallery.select(show_selected, [state], [info], queue=False, **private)
        model.change(on_model, [model], [aspect, width, height, steps, guidance, quality, negative], queue=False,
                     **private)
        prompt.change(final_prompt, [prompt, model], [sent], queue=False)
        model.change(final_prompt, [prompt, model], [sent], queue=False, **private)
        build.click(compose_prompt, [subject, action, style, environment, details, quality], [prompt], queue=False)
        c_go.click(compare, [c_prompt, c_axis, c_values, c_model, c_seed, c_width, c_height], [c_grid, c_status],
                   concurrency_limit=None, show_progress_on=[c_grid])
        e_go.click(inpaint, [editor, e_prompt, e_strength, e_seed], [e_gallery, e_status], concurrency_limit=None,
                   show_progress_on=[e_gallery])
        e_vary.click(variations, [editor, e_prompt, e_strength, e_seed], [e_gallery, e_status],
                     concurrency_limit=None, show_progress_on=[e_gallery])
        refresh.click(history, [search], [h_gallery, rows], queue=False)
        search.submit(history, [search], [h_gallery, rows], queue=False, **private)
        h_gallery.select(pick, [rows], [h_info, picked], queue=False, **private)
        h_reopen.click(reopen, [picked], [prompt, negative, model, aspect, width, height, steps, guidance, seed,
                                          tabs], queue=False, **private)
        h_edit.click(to_editor, [picked], [editor, e_prompt, tabs], queue=False, **private)
        ui.load(history, [search], [h_gallery, rows], queue=False, **private)
    return ui

