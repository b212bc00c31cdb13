"""The web UI's layout: a Gradio Blocks app (tabs Generate, Compare, Edit, History) whose controls call the plain
handlers of `ui/handlers.py` on the server's engine. On a wide screen the results sit beside the controls."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..control import PREPROCESSORS
from ..engine.queue import Engine
from ..prompts import STYLE_PRESETS, compose_prompt
from .handlers import VARIATION_STRENGTH, Handlers, ui_cache

__all__ = ["CSS", "build_ui", "ui_cache"]
PRIVATE = dict(api_visibility="private")  # UI plumbing: not part of the app's API
# a gallery's enlarged image covers its grid (Gradio draws it on a clear layer, the thumbnails showing through)
CSS = ".gallery-container .preview { background: var(--block-background-fill); }"


def _gallery(label: str, elem_id: str, columns: int = 4, height: int = 360, **options) -> gr.Gallery:
    """A grid of whole images (never cropped, one image not stretched to the full width)."""
    return gr.Gallery(label=label, columns=columns, height=height, format="png", preview=False,
                      object_fit="contain", fit_columns=False, elem_id=elem_id, **options)


def _named(names: dict) -> SimpleNamespace:
    """The Gradio components among a builder's local names, by name."""
    return SimpleNamespace(**{k: v for k, v in names.items() if isinstance(v, gr.blocks.Block)})


def build_ui(engine: Engine) -> gr.Blocks:
    h = Handlers(engine)
    default = h.resolve(None)
    with gr.Blocks(title="Easel") as ui:
        state = gr.State({})
        gr.Markdown("## Easel\nText to image with any model. Every image is saved in the workspace and the history.")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=380):  # the controls; the results beside them
                        g = SimpleNamespace(**vars(_generate_controls(h, default)), **vars(_add_ons(h)),
                                            **vars(_prompt_help(default.family)))
                    with gr.Column(scale=6, min_width=380):
                        g.gallery = _gallery("Images", "gallery", columns=2, height=480,
                                             buttons=["download", "fullscreen"])
                        g.info = gr.JSON(label="Metadata of the selected image", elem_id="metadata")
            with gr.Tab("Compare", id="compare"):
                c = _compare_tab(h, default)
            with gr.Tab("Edit", id="edit"):
                e = _edit_tab(h, default)
            with gr.Tab("History", id="history"):
                r = _history_tab()
        _wire_generate(h, g, state)
        _wire_others(h, g, c, e, r, tabs, ui)
    return ui


def _generate_controls(h: Handlers, default) -> SimpleNamespace:
    fam = default.family
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                        placeholder="a large red circle on the left on a blue background")
    negative = gr.Textbox(label="Negative prompt", elem_id="negative",
                          interactive=fam.negative_prompt)
    with gr.Row():
        go = gr.Button("Generate", variant="primary", elem_id="generate")
        stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
    status = gr.Markdown("", elem_id="status")
    with gr.Row():
        model = gr.Dropdown(h.model_choices(), value=default.name, label="Model",
                            allow_custom_value=True, elem_id="model")
        aspect = gr.Dropdown(["custom", *fam.aspects], value="custom", label="Aspect preset",
                             elem_id="aspect")
    with gr.Row():
        width = gr.Number(fam.size[0], label="Width", step=fam.size_step, elem_id="width")
        height = gr.Number(fam.size[1], label="Height", step=fam.size_step, elem_id="height")
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0, elem_id="seed")
        reuse = gr.Button("Reuse last seed", elem_id="reuse-seed", size="sm")
    with gr.Row():
        steps = gr.Slider(1, 100, value=default.default_steps or 20, step=1, label="Steps",
                          elem_id="steps")
        guidance = gr.Slider(0, 20, value=default.default_guidance or 0, step=0.5,
                             label="Guidance", elem_id="guidance")
    with gr.Row():  # A1111's LoRA tags, written into the prompt with their weight
        lora = gr.Dropdown(h.lora_choices(), value=None, label="LoRA", elem_id="lora",
                           info="From the loras folder; adds <lora:name:weight> to the prompt")
        lora_weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="LoRA weight",
                                elem_id="lora-weight")
        add_lora = gr.Button("Add LoRA", elem_id="add-lora", size="sm")
    with gr.Row():
        n = gr.Slider(1, 4, value=1, step=1, label="Images per batch", elem_id="n")
        batches = gr.Slider(1, 8, value=1, step=1, label="Batches (run one after another)",
                            elem_id="batches")
    return _named(locals())


def _add_ons(h: Handlers) -> SimpleNamespace:
    """ControlNet, the image prompt and the hires fix, each folded away until opened."""
    with gr.Accordion("ControlNet", open=False, elem_id="controlnet"):
        with gr.Row():
            c_image = gr.Image(label="Control image", type="pil", elem_id="control-image",
                               height=200)
            c_map = gr.Image(label="Map (what the ControlNet sees)", type="pil",
                             interactive=False, elem_id="control-map", height=200,
                             format="png")
        with gr.Row():
            c_net = gr.Dropdown(h.controlnet_choices(), value=None, label="Control model",
                                elem_id="control-model",
                                info="From the controlnets folder (SD 1.5, SDXL, SD3, FLUX)")
            c_pre = gr.Dropdown(list(PREPROCESSORS), value="canny", label="Preprocessor",
                                elem_id="control-preprocessor")
            c_weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control weight",
                                 elem_id="control-weight")
        c_preview = gr.Button("Preview the map", elem_id="control-preview", size="sm")
    with gr.Accordion("Image prompt (IP-Adapter)", open=False, elem_id="image-prompt"):
        with gr.Row():
            ip_image = gr.Image(label="Image prompt", type="pil", elem_id="ip-image", height=200)
            with gr.Column():
                ip_model = gr.Dropdown(h.ip_adapter_choices(), value=None, label="IP-Adapter",
                                       elem_id="ip-model",
                                       info="From the ip_adapters folder (SD 1.5 and SDXL)")
                ip_scale = gr.Slider(0, 1.5, value=0.6, step=0.05, label="Image prompt scale",
                                     elem_id="ip-scale")
    with gr.Accordion("Hires fix", open=False, elem_id="hires"):
        with gr.Row():
            hr_scale = gr.Slider(1, 4, value=1, step=0.25, label="Upscale by (1: off)",
                                 elem_id="hires-scale")
            hr_upscaler = gr.Dropdown(h.upscaler_choices(), value="lanczos", label="Upscaler",
                                      elem_id="hires-upscaler")
        with gr.Row():
            hr_strength = gr.Slider(0.05, 1, value=0.55, step=0.05, label="Denoising strength",
                                    elem_id="hires-strength")
            hr_steps = gr.Number(0, label="Second pass steps (0: the same)", precision=0,
                                 elem_id="hires-steps")
    return _named(locals())


def _prompt_help(fam) -> SimpleNamespace:
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
    return _named(locals())


def _compare_tab(h: Handlers, default) -> SimpleNamespace:
    fam = default.family
    with gr.Row():
        c_prompt = gr.Textbox(label="Prompt", elem_id="compare-prompt")
        c_axis = gr.Radio(["styles", "seeds", "models"], value="seeds", label="Compare across",
                          elem_id="compare-axis")
    c_values = gr.Textbox(label="Values, separated by commas", value=h.axis_values("seeds"),
                          elem_id="compare-values")
    with gr.Row():
        c_model = gr.Dropdown(h.model_choices(), value=default.name, label="Model",
                              allow_custom_value=True, elem_id="compare-model")
        c_seed = gr.Number(0, label="Seed", precision=0)
        c_width = gr.Number(fam.size[0], label="Width", step=fam.size_step)
        c_height = gr.Number(fam.size[1], label="Height", step=fam.size_step)
    c_go = gr.Button("Compare", variant="primary", elem_id="compare-go")
    c_status = gr.Markdown("", elem_id="compare-status")
    c_grid = _gallery("Grid", "compare-grid")
    return _named(locals())


def _edit_tab(h: Handlers, default) -> SimpleNamespace:
    with gr.Row():
        editor = gr.ImageEditor(type="pil", label="Image (paint the part to change)", height=420,
                                brush=gr.Brush(colors=["#ff00aa"], default_size=12),
                                layers=False, elem_id="editor")
        with gr.Column():
            e_prompt = gr.Textbox(label="Describe the change", elem_id="edit-prompt")
            e_model = gr.Dropdown(h.model_choices(), value=default.name, label="Model",
                                  allow_custom_value=True, elem_id="edit-model")
            e_seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
            e_strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Inpainting strength",
                                   elem_id="inpaint-strength")
            with gr.Row():
                e_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur (pixels)",
                                   elem_id="mask-blur")
                e_only = gr.Checkbox(False, label="Only the masked area, at full resolution",
                                     elem_id="only-masked")
                e_padding = gr.Slider(0, 256, value=32, step=4, label="Padding (pixels)",
                                      elem_id="padding")
            e_go = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
            v_strength = gr.Slider(0.05, 1.0, value=VARIATION_STRENGTH, step=0.05,
                                   label="Variation strength (0 keeps the image, 1 redraws it)",
                                   elem_id="variation-strength")
            e_vary = gr.Button("Variations", elem_id="variations")
            e_status = gr.Markdown("", elem_id="edit-status")
    e_gallery = _gallery("Results", "edit-gallery", height=300, buttons=["download"])
    return _named(locals())


def _history_tab() -> SimpleNamespace:
    rows = gr.State([])
    picked = gr.State(None)
    with gr.Row():
        search = gr.Textbox(label="Search prompts", elem_id="history-search")
        refresh = gr.Button("Search", elem_id="history-refresh")
    # selecting an image shows its settings beside the grid, not an overlay on top of it
    h_gallery = _gallery("Recent", "history-gallery", columns=6, height=320, allow_preview=False)
    with gr.Row():
        h_info = gr.JSON(label="Settings", elem_id="history-metadata")
        with gr.Column():
            h_reopen = gr.Button("Open in Generate", elem_id="history-reopen")
            h_edit = gr.Button("Edit this image", elem_id="history-edit")
    return _named(locals())


def _wire_generate(h: Handlers, g: SimpleNamespace, state: gr.State) -> None:
    inputs = [g.prompt, g.negative, g.model, g.aspect, g.width, g.height, g.steps, g.guidance, g.seed, g.n, g.batches,
              g.c_image, g.c_net, g.c_pre, g.c_weight, g.hr_scale, g.hr_upscaler, g.hr_strength, g.hr_steps,
              g.ip_image, g.ip_model, g.ip_scale, state]
    outputs = [g.gallery, g.status, g.info, state]
    # the progress bar sits on the metadata panel, so that the gallery's previews stay in view
    g.go.click(h.generate, inputs, outputs, concurrency_limit=None, show_progress_on=[g.info], api_name="generate")
    g.prompt.submit(h.generate, inputs, outputs, concurrency_limit=None, show_progress_on=[g.info], **PRIVATE)
    g.stop.click(h.cancel, [state], [g.status], queue=False, **PRIVATE)
    g.reuse.click(h.reuse_seed, [state], [g.seed], queue=False, **PRIVATE)
    g.gallery.select(h.show_selected, [state], [g.info], queue=False, **PRIVATE)
    # a model the person picks brings its defaults; one that "Open in Generate" sets keeps the image's own values
    g.model.input(h.on_model, [g.model], [g.aspect, g.width, g.height, g.steps, g.guidance, g.quality, g.negative],
                  queue=False, **PRIVATE)
    g.aspect.input(h.on_aspect, [g.aspect, g.model], [g.width, g.height], queue=False, **PRIVATE)
    for size in (g.width, g.height):  # a size typed by hand is a custom one: no preset overrides it
        size.input(lambda: "custom", None, [g.aspect], queue=False, **PRIVATE)
    g.prompt.change(h.final_prompt, [g.prompt, g.model], [g.sent], queue=False, api_name="final_prompt")
    g.model.change(h.final_prompt, [g.prompt, g.model], [g.sent], queue=False, **PRIVATE)
    g.c_preview.click(h.control_map, [g.c_image, g.c_pre], [g.c_map], queue=False, api_name="control_map")
    g.add_lora.click(h.insert_lora, [g.prompt, g.lora, g.lora_weight], [g.prompt], queue=False, **PRIVATE)
    g.build.click(compose_prompt, [g.subject, g.action, g.style, g.environment, g.details, g.quality], [g.prompt],
                  queue=False, api_name="compose_prompt")


def _wire_others(h: Handlers, g: SimpleNamespace, c: SimpleNamespace, e: SimpleNamespace, r: SimpleNamespace,
                 tabs: gr.Tabs, ui: gr.Blocks) -> None:
    """Compare, Edit and History, and what History hands to Generate and Edit."""
    c.c_axis.change(h.axis_values, [c.c_axis], [c.c_values], queue=False, **PRIVATE)
    c.c_go.click(h.compare, [c.c_prompt, c.c_axis, c.c_values, c.c_model, c.c_seed, c.c_width, c.c_height],
                 [c.c_grid, c.c_status], concurrency_limit=None, show_progress_on=[c.c_grid], api_name="compare")
    e.e_go.click(h.inpaint, [e.editor, e.e_prompt, e.e_strength, e.e_seed, e.e_blur, e.e_only, e.e_padding,
                             e.e_model], [e.e_gallery, e.e_status], concurrency_limit=None,
                 show_progress_on=[e.e_gallery], api_name="inpaint")
    e.e_vary.click(h.variations, [e.editor, e.e_prompt, e.v_strength, e.e_seed, e.e_model], [e.e_gallery, e.e_status],
                   concurrency_limit=None, show_progress_on=[e.e_gallery], api_name="variations")
    r.refresh.click(h.history, [r.search], [r.h_gallery, r.rows], queue=False, api_name="history")
    r.search.submit(h.history, [r.search], [r.h_gallery, r.rows], queue=False, **PRIVATE)
    r.h_gallery.select(h.pick, [r.rows], [r.h_info, r.picked], queue=False, **PRIVATE)
    r.h_reopen.click(h.reopen, [r.picked], [g.prompt, g.negative, g.model, g.aspect, g.width, g.height, g.steps,
                                            g.guidance, g.seed, g.hr_scale, g.hr_upscaler, g.hr_strength, g.hr_steps,
                                            g.c_net, g.c_pre, g.c_weight, g.ip_model, g.ip_scale, g.status, tabs],
                     queue=False, **PRIVATE)
    r.h_edit.click(h.to_editor, [r.picked], [e.editor, e.e_prompt, e.e_model, tabs], queue=False, **PRIVATE)
    ui.load(h.history, [r.search], [r.h_gallery, r.rows], queue=False, **PRIVATE)
    ui.load(lambda: gr.update(choices=h.lora_choices()), None, [g.lora], queue=False, **PRIVATE)  # files added
