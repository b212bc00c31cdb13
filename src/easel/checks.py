"""`check_request`: validate a request against its model once, early, and fill in the model's defaults."""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from typing import NamedTuple

from .catalog import ModelCatalog, ModelSpec, OptionSpec, default_catalog, is_hub_id, names_a_file, with_base
from .errors import EaselError, InvalidRequestError, UnsupportedError
from .masks import WHOLE_PICTURE_STRENGTH
from .moderation import check_prompt
from .prompts import is_weighted, lora_tags, revise_prompt, unweighted
from .types import MODES, OUTPUT_FORMATS, ImageRequest, parse_size

MAX_IMAGES = 10
MAX_STEPS = 500
MAX_SEED = 2**63 - 1
DEFAULT_MASK_BLUR = 4
_ASPECT = re.compile(r"^\s*([0-9]{1,5}(?:\.[0-9]{1,5})?)\s*:\s*([0-9]{1,5}(?:\.[0-9]{1,5})?)\s*$")


def _require_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"`{name}` must be an integer but is {value!r}.", param=name)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"`{name}` must be between {lo} and {hi} but is {value}.", param=name)
    return value


def _require_number(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequestError(f"`{name}` must be a number but is {value!r}.", param=name)
    if not lo <= value <= hi:
        raise InvalidRequestError(f"`{name}` must be between {lo} and {hi} but is {value}.", param=name)
    return float(value)


def _require_unicode(name: str, value: str) -> None:
    """Text that can be stored and sent: no lone surrogates (`"\\ud800"` decodes from JSON, encodes nowhere)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(f"`{name}` holds a character that is not valid Unicode "
                                  f"({value[exc.start:exc.end]!r} at {exc.start}).", param=name) from None


def _check_option(spec: OptionSpec, value):
    if spec.type == "int":
        return _require_int(spec.name, value, int(spec.ge if spec.ge is not None else -2**31),
                            int(spec.le if spec.le is not None else 2**31))
    if spec.type == "float":
        return _require_number(spec.name, value, spec.ge if spec.ge is not None else -math.inf,
                               spec.le if spec.le is not None else math.inf)
    if spec.type == "bool" and isinstance(value, bool):
        return value
    if spec.type == "str" and isinstance(value, str):
        _require_unicode(spec.name, value)
        return value
    raise InvalidRequestError(f"`{spec.name}` must be of type {spec.type} but is {value!r}.", param=spec.name)


def aspect_size(spec: ModelSpec, aspect: str) -> tuple[int, int]:
    """An aspect preset of the model's family ("16:9"), or any W:H ratio scaled to the family's pixel count."""
    family = spec.family
    if aspect in family.aspects:
        return family.aspects[aspect]
    m = _ASPECT.match(aspect) if isinstance(aspect, str) else None
    if not m or float(m.group(1)) <= 0 or float(m.group(2)) <= 0:
        presets = ", ".join(family.aspects)
        raise InvalidRequestError(f"`aspect` must be W:H (presets: {presets}) but is {aspect!r}.", param="aspect")
    ratio = float(m.group(1)) / float(m.group(2))
    if not 1 / 4 <= ratio <= 4:
        raise InvalidRequestError(f"`aspect` must be between 1:4 and 4:1 but is {aspect!r}.", param="aspect")
    area = family.size[0] * family.size[1]
    step = family.size_step
    width = round(math.sqrt(area * ratio) / step) * step
    height = round(math.sqrt(area / ratio) / step) * step
    return width, height


class CheckedRequest(NamedTuple):
    """A request after `check_request`: its model, and a copy with concrete values only (width and height, steps,
    guidance, and the seed, drawn now when the caller gave none and the model takes one). Below the check, the
    engine, the runner and the providers trust it and never check again."""

    spec: ModelSpec
    request: ImageRequest


def check_request(request: ImageRequest, catalog: ModelCatalog | None = None,
                  default_model: str | None = None, moderate: bool = True,
                  allow_paths: bool = True) -> CheckedRequest:
    """Validate `request` and return its model and a copy with every default filled in.

    Every problem raises `InvalidRequestError` (or a subclass) naming the parameter and the bad value; nothing is
    corrected silently.
    """
    if request.mode == "upscale":
        return _check_upscale(request, allow_paths)
    catalog = catalog or default_catalog()
    # a model named by a caller may be a folder only where the caller is the machine's user (not a server client)
    spec = (catalog.resolve(request.model, allow_paths=allow_paths) if request.model
            else catalog.resolve(default_model))
    r = request.replace(model=spec.name, extra=dict(request.extra), loras=request.loras,
                        warnings=list(request.warnings))
    spec = _check_base(r, spec, catalog, allow_paths)  # a GGUF denoiser's pipeline, where the caller names one
    _check_prompts(r, spec, moderate)  # 1. prompt and negative prompt, LoRAs (named or tagged in the prompt)
    model_prompt = _check_loras(r, spec, allow_paths)
    _check_mode(r, spec)  # 2. what to do, and with which images (ControlNet's among them)
    _check_control(r, spec, allow_paths)
    _check_ip_adapter(r, spec, allow_paths)
    _check_speed(r, spec)
    _check_numbers(r, spec, request)  # 3. count, size, steps, guidance, seed, and the hires fix's
    _check_hires(r, spec, allow_paths)
    _check_choices(r, spec)  # 4. scheduler, output format, family options
    # 5. the prompt the model receives, and what it will ignore
    r.warnings = _ignored(spec, r)
    if not spec.family.weights and is_weighted(model_prompt):  # the words, without emphasis it cannot honour
        model_prompt = unweighted(model_prompt)
        r.warnings.append(f"{spec.name} does not weight prompt words: A1111's emphasis ((word:1.3), [word], BREAK) "
                          "was read as plain words")
    r.revised_prompt = revise_prompt(spec, model_prompt) or (model_prompt if model_prompt != r.prompt else None)
    return CheckedRequest(spec, r)


def _check_base(r: ImageRequest, spec: ModelSpec, catalog: ModelCatalog, allow_paths: bool) -> ModelSpec:
    """`base`: the pipeline a GGUF denoiser runs with, named like a model (a folder only by the machine's user);
    the request keeps its name, so that the image's record makes it again."""
    base = r.extra.get("base")
    if base is None:
        return spec
    if not isinstance(base, str) or not base.strip():
        raise InvalidRequestError(f"`base` must name a model but is {base!r}.", param="base")
    try:
        base_spec = catalog.resolve(base, allow_paths=allow_paths)
    except EaselError as exc:
        raise InvalidRequestError(exc.message.replace("model", "base model", 1), param="base") from None
    r.extra["base"] = base_spec.name
    return with_base(spec, base_spec)


def _check_upscale(request: ImageRequest, allow_paths: bool) -> CheckedRequest:
    """An upscale: an image, a scale, an image filter or an upscaler model (by name; a path only for the machine's
    user), a tile size and an output format. Whether the model exists is its provider's check."""
    import PIL.Image

    from .catalog import upscale_spec
    from .upscalers import IMAGE_UPSCALERS, check_upscale

    if not isinstance(request.image, PIL.Image.Image):
        raise InvalidRequestError("`image` is required for mode 'upscale'.", param="image")
    if not isinstance(request.prompt, str):
        raise InvalidRequestError(f"`prompt` must be a string but is {request.prompt!r}.", param="prompt")
    width, height = check_upscale(request.image, request.scale, request.upscaler, request.tile)
    if request.upscaler not in IMAGE_UPSCALERS:
        _require_model_name("upscaler", request.upscaler, allow_paths, "upscalers", "upscaler")
    if request.output_format not in OUTPUT_FORMATS:
        raise InvalidRequestError(f"`output_format` must be one of {', '.join(OUTPUT_FORMATS)} but is "
                                  f"{request.output_format!r}.", param="output_format")
    spec = upscale_spec(request.upscaler)
    return CheckedRequest(spec, request.replace(model=spec.name, width=width, height=height, num_images=1,
                                                extra={}, loras={}, control=[], ip_adapter=None, warnings=[]))


def _check_prompts(r: ImageRequest, spec: ModelSpec, moderate: bool) -> None:
    """The prompt and the negative prompt: text the model takes, within its length, past moderation."""
    family = spec.family
    if not isinstance(r.prompt, str) or (not r.prompt.strip() and r.mode != "vary"):
        raise InvalidRequestError("`prompt` must be a non-empty string.", param="prompt")
    _require_unicode("prompt", r.prompt)
    if len(r.prompt) > family.max_prompt_chars:
        raise InvalidRequestError(
            f"`prompt` is {len(r.prompt)} characters, over the {family.max_prompt_chars} that {spec.name} takes.",
            param="prompt",
        )
    if moderate:
        check_prompt(r.prompt, r.moderation)
    if r.negative_prompt is not None:
        if not isinstance(r.negative_prompt, str):
            raise InvalidRequestError(f"`negative_prompt` must be a string but is {r.negative_prompt!r}.",
                                      param="negative_prompt")
        _require_unicode("negative_prompt", r.negative_prompt)
        if r.negative_prompt and not family.negative_prompt:
            raise UnsupportedError(f"{spec.name} does not take a negative prompt.", param="negative_prompt")
        if len(r.negative_prompt) > family.max_prompt_chars:
            raise InvalidRequestError(f"`negative_prompt` is over {family.max_prompt_chars} characters.",
                                      param="negative_prompt")
    elif family.default_negative_prompt is not None:
        r.negative_prompt = family.default_negative_prompt


def _check_loras(r: ImageRequest, spec: ModelSpec, allow_paths: bool) -> str:
    """The request's LoRAs (`loras`, and A1111's `<lora:name:weight>` tags in the prompt, which `loras` overrides)
    as {name: weight}; the prompt the model receives, without the tags. Names are names; a file path only where
    the caller is the machine's user. Whether a name exists is its provider's check."""
    prompt, tags = lora_tags(r.prompt)
    if not isinstance(r.loras, dict):
        raise InvalidRequestError(f"`loras` must be an object of name: weight but is {r.loras!r}.", param="loras")
    tagged = []
    for name, text in tags:
        try:
            tagged.append((name, float(text) if text else 1.0))
        except ValueError:
            raise InvalidRequestError(f"The LoRA tag <lora:{name}:{text}> needs a number as its weight.",
                                      param="prompt") from None
    loras: dict[str, float] = {}
    for name, weight in [*tagged, *r.loras.items()]:
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\0" in name:
            raise InvalidRequestError(f"`loras` names must be text of 1 to 200 characters but one is {name!r}.",
                                      param="loras")
        _require_unicode("loras", name)
        if not allow_paths and names_a_file(name):
            raise InvalidRequestError(f"`loras` names a LoRA by its name in the server's loras folder, not a path: "
                                      f"{name!r}.", param="loras")
        try:
            loras[name] = _require_number(f"loras.{name}", weight, -10.0, 10.0)
        except InvalidRequestError as exc:  # named by the field the client sent
            raise InvalidRequestError(exc.message, param="loras") from None
    if loras and not spec.family.loras:
        raise UnsupportedError(f"{spec.name} does not take LoRAs ({', '.join(loras)}).", param="loras")
    r.loras = loras
    return prompt


def _require_model_name(field: str, name, allow_paths: bool, folder: str, param: str) -> None:
    """A model a request names (a ControlNet, an IP-Adapter): its name in the server's `folder` folder or a hub id;
    a path only where the caller is the machine's user."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\0" in name:
        raise InvalidRequestError(f"`{field}` must be a name of 1 to 200 characters but is {name!r}.", param=param)
    if not allow_paths and names_a_file(name) and not is_hub_id(name):
        raise InvalidRequestError(f"`{field}` names a model of the server's {folder} folder (or a hub id), not a "
                                  f"path: {name!r}.", param=param)


def _check_control(r: ImageRequest, spec: ModelSpec, allow_paths: bool) -> None:
    """ControlNet units: a control model by name (a path only for the machine's user), an image, a known
    preprocessor, a weight and a span of the steps (each unit's map is made by the engine's worker). Whether the
    control model exists is its provider's check."""
    import PIL.Image

    from .control import MAX_UNITS, PREPROCESSORS, ControlUnit

    if not isinstance(r.control, list):
        raise InvalidRequestError(f"`control` must be a list of ControlNet units but is {r.control!r}.",
                                  param="control")
    if not r.control:
        return
    if not spec.family.controlnet:
        raise UnsupportedError(f"{spec.name} does not take ControlNet.", param="control")
    if r.mode not in spec.family.controlnet:
        what = {"edit": "edits", "vary": "variations"}.get(r.mode, r.mode)
        raise UnsupportedError(f"{spec.name} takes ControlNet for {', '.join(spec.family.controlnet)}, not {what}.",
                               param="control")
    if len(r.control) > MAX_UNITS:
        raise InvalidRequestError(f"`control` takes at most {MAX_UNITS} units but has {len(r.control)}.",
                                  param="control")
    if not all(isinstance(unit, ControlUnit) for unit in r.control):
        raise InvalidRequestError("Each `control` unit must be a ControlUnit (easel.control).", param="control")
    r.control = [dataclasses.replace(unit) for unit in r.control]  # the caller's units stay as they were
    for unit in r.control:
        _require_model_name("control.model", unit.model, allow_paths, "controlnets", "control")
        if not isinstance(unit.image, PIL.Image.Image):
            raise InvalidRequestError("Each `control` unit needs an `image`.", param="control")
        try:
            unit.weight = _require_number("control.weight", unit.weight, 0.0, 2.0)
            unit.start = _require_number("control.start", unit.start, 0.0, 1.0)
            unit.end = _require_number("control.end", unit.end, 0.0, 1.0)
            unit.low_threshold = _require_int("control.low_threshold", unit.low_threshold, 1, 255)
            unit.high_threshold = _require_int("control.high_threshold", unit.high_threshold, 1, 255)
        except InvalidRequestError as exc:  # named by the field the client sent
            raise InvalidRequestError(exc.message, param="control") from None
        if unit.start >= unit.end:
            raise InvalidRequestError(f"`control.start` ({unit.start}) must be below `control.end` ({unit.end}).",
                                      param="control")
        if unit.preprocessor not in PREPROCESSORS:  # the map itself is made on the engine's worker
            raise InvalidRequestError(f"`control.preprocessor` must be one of {', '.join(PREPROCESSORS)} but is "
                                      f"{unit.preprocessor!r}.", param="control")


def _check_mode(r: ImageRequest, spec: ModelSpec) -> None:
    """What to do (generate, edit, vary), with which images, and how an edit is shaped."""
    family = spec.family
    if r.mode not in MODES:
        raise InvalidRequestError(f"`mode` must be one of {', '.join(MODES)} but is {r.mode!r}.", param="mode")
    if r.mode == "edit" and r.mask is None and r.image is not None:
        _whole_picture_edit(r, spec)
    if r.references and not (r.mode == "edit" and r.mask is None and family.edits == "instruction"):
        r.warnings.append(f"{spec.name} takes one input image here: the first of the {1 + len(r.references)} given "
                          "was used (several go to a model that edits by instruction from several, such as "
                          "flux2-klein or qwen-image-edit-plus, in an edit without a mask)")
        r.references = []
    if r.mode not in family.supports:
        what = {"edit": "edits (inpainting)", "vary": "variations (image-to-image)"}.get(r.mode, r.mode)
        raise UnsupportedError(f"{spec.name} does not support {what}.", param="model")
    if r.mode == "edit" and r.mask is not None and family.edits == "instruction" and family.provider == "diffusers" \
            and "edit" not in family.pipelines:  # a remote service's edits take masks too
        raise UnsupportedError(f"{spec.name} edits by instruction only and takes no mask: leave the mask out (and say "
                               "in the prompt what to change).", param="mask")
    if r.mode in ("edit", "vary") and r.image is None:
        raise InvalidRequestError(f"`image` is required for mode {r.mode!r}.", param="image")
    if r.mode == "edit" and r.mask is not None and r.mask.size != r.image.size:
        raise InvalidRequestError(
            f"`mask` must be the same size as `image` ({r.image.width}x{r.image.height}) "
            f"but is {r.mask.width}x{r.mask.height}.", param="mask",
        )
    if r.strength is not None:
        r.strength = _require_number("strength", r.strength, 0.01, 1.0)
    elif r.mode == "vary":
        r.strength = 0.6
    if r.mode == "edit" and r.mask is None:  # an instruction edit: the pipeline takes the images as they are
        if r.strength is not None:
            r.warnings.append(f"{spec.name} edits by instruction: `strength` ({r.strength}) does not apply")
            r.strength = None
        return
    if r.mode == "edit":
        r.mask_blur = _require_int("mask_blur", DEFAULT_MASK_BLUR if r.mask_blur is None else r.mask_blur, 0, 64)
        if not isinstance(r.inpaint_full_res, bool):
            raise InvalidRequestError(f"`inpaint_full_res` must be true or false but is {r.inpaint_full_res!r}.",
                                      param="inpaint_full_res")
        r.inpaint_full_res_padding = _require_int("inpaint_full_res_padding", r.inpaint_full_res_padding, 0, 512)


def _check_speed(r: ImageRequest, spec: ModelSpec) -> None:
    """`speed`: a few-step LoRA preset of the family (`fast`: its first), as the LoRA (`hub:` its file) and the
    scheduler, steps and guidance it needs, where the request does not set them."""
    name = r.extra.pop("speed", None)
    if name is None:
        return
    presets = spec.family.speed
    if not isinstance(name, str) or (name != "fast" and name not in presets):
        raise InvalidRequestError(f"`speed` for {spec.name} must be fast or one of {', '.join(presets)} but is "
                                  f"{name!r}.", param="speed")
    preset = presets[next(iter(presets)) if name == "fast" else name]
    r.loras = {**r.loras, f"hub:{preset['lora']}": preset.get("weight", 1.0)}
    r.scheduler = r.scheduler or preset.get("scheduler")
    if r.num_inference_steps is None:
        r.num_inference_steps = preset["steps"]
    if r.guidance_scale is None:
        r.guidance_scale = preset["guidance"]


def _whole_picture_edit(r: ImageRequest, spec: ModelSpec) -> None:
    """An edit with no mask and no transparent area: an instruction edit on a model that edits that way, else the
    whole picture changed as the prompt says (image-to-image at WHOLE_PICTURE_STRENGTH unless a strength is given),
    as OpenAI's gpt-image models do; refused where the model does neither, or needs the area named (dall-e-2)."""
    family = spec.family
    if family.edits == "instruction":
        if 1 + len(r.references) > family.input_images:
            raise InvalidRequestError(f"{spec.name} edits from at most {family.input_images} image"
                                      f"{'s' if family.input_images > 1 else ''} but got {1 + len(r.references)}.",
                                      param="image")
        return
    if family.edit_needs_mask:
        raise InvalidRequestError(f"{spec.name} edits the area a mask names (or the image's transparent pixels), and "
                                  "neither was given.", param="mask")
    if "vary" not in family.supports:
        if "edit" in family.supports:
            raise UnsupportedError(f"{spec.name} has no image-to-image: an edit needs a mask (the area to repaint).",
                                   param="mask")
        return  # refused as an edit
    r.mode = "vary"
    if r.strength is None:
        r.strength = WHOLE_PICTURE_STRENGTH


def _check_numbers(r: ImageRequest, spec: ModelSpec, request: ImageRequest) -> None:
    """Count, size (from size, aspect, the input image or the family), steps, guidance and the seed."""
    family = spec.family
    r.num_images = _require_int("n", r.num_images, 1, MAX_IMAGES)
    if r.size is not None and r.size != "auto":
        r.width, r.height = parse_size(r.size)
    elif r.aspect is not None:
        r.width, r.height = aspect_size(spec, r.aspect)
    if r.width is None and r.height is None and r.image is not None and r.mode != "generate":
        r.width, r.height = _snap(r.image.width, family.size_step), _snap(r.image.height, family.size_step)
    r.width = family.size[0] if r.width is None else r.width
    r.height = family.size[1] if r.height is None else r.height
    from_size = request.size not in (None, "auto")
    for name in ("width", "height"):
        # a client that sent `size` is told about `size`, the parameter it knows
        param = "size" if from_size else name
        value = getattr(r, name)
        if from_size and not family.size_step <= value <= family.max_side:
            raise InvalidRequestError(f"`size` {request.size!r} has a {name} outside {family.size_step}-"
                                      f"{family.max_side} for {spec.name}.", param=param)
        value = _require_int(name, value, family.size_step, family.max_side)
        if value % family.size_step:
            raise InvalidRequestError(
                f"`{param}` has to be divisible by {family.size_step} for {spec.name} but its {name} is {value}."
                if from_size else f"`{name}` has to be divisible by {family.size_step} for {spec.name} "
                f"but is {value}.", param=param)
    r.size, r.aspect = f"{r.width}x{r.height}", None
    for field, takes in (("num_inference_steps", "steps"), ("guidance_scale", "guidance"), ("seed", "seed")):
        if getattr(r, field) is not None and takes not in family.takes:
            raise UnsupportedError(f"{spec.name} does not take `{field}`.", param=field)
    steps = spec.default_steps if r.num_inference_steps is None else r.num_inference_steps
    if steps is not None:  # None: the remote service decides
        r.num_inference_steps = _require_int("num_inference_steps", steps, 1, MAX_STEPS)
    guidance = spec.default_guidance if r.guidance_scale is None else r.guidance_scale
    if guidance is not None:
        r.guidance_scale = _require_number("guidance_scale", guidance, 0.0, 50.0)
    if r.seed is not None:
        r.seed = _require_int("seed", r.seed, 0, MAX_SEED)
    elif "seed" in family.takes:
        r.seed = secrets.randbelow(2**32)  # drawn here, so that the job's record knows it from the start


def _check_ip_adapter(r: ImageRequest, spec: ModelSpec, allow_paths: bool) -> None:
    """An image prompt: an IP-Adapter by name (a path only for the machine's user), an image and a scale."""
    import PIL.Image

    from .control import IPAdapter

    if r.ip_adapter is None:
        return
    if not isinstance(r.ip_adapter, IPAdapter):
        raise InvalidRequestError("`ip_adapter` must be an IPAdapter (easel.control).", param="ip_adapter")
    if not spec.family.ip_adapter:
        raise UnsupportedError(f"{spec.name} does not take IP-Adapter image prompts.", param="ip_adapter")
    if r.mode != "generate":
        raise UnsupportedError("IP-Adapter image prompts guide generation (not edits or variations yet).",
                               param="ip_adapter")
    r.ip_adapter = dataclasses.replace(r.ip_adapter)
    _require_model_name("ip_adapter.model", r.ip_adapter.model, allow_paths, "ip_adapters", "ip_adapter")
    if not isinstance(r.ip_adapter.image, PIL.Image.Image):
        raise InvalidRequestError("`ip_adapter` needs an `image`.", param="ip_adapter")
    try:
        r.ip_adapter.scale = _require_number("ip_adapter.scale", r.ip_adapter.scale, 0.0, 2.0)
    except InvalidRequestError as exc:
        raise InvalidRequestError(exc.message, param="ip_adapter") from None


def _check_hires(r: ImageRequest, spec: ModelSpec, allow_paths: bool) -> None:
    """The hires fix: a scale (1 or none: off), an upscaler, the second pass's strength and steps; the final size
    within the model's limit. Whether an upscaler model exists is its provider's check."""
    from .upscalers import A1111_HIRES_NAMES, A1111_UPSCALERS, HIRES_UPSCALERS

    if r.hires_size is not None:
        _hires_size(r, spec)
    if r.hires_scale is None or r.hires_scale == 1:
        r.hires_scale, r.hires_size = None, None
        return
    r.hires_scale = _require_number("hires_scale", r.hires_scale, 1.0, 4.0)
    if r.mode != "generate":
        raise UnsupportedError("The hires fix is for generation (an edit or a variation keeps its size).",
                               param="hires_scale")
    if "vary" not in spec.family.supports:
        raise UnsupportedError(f"{spec.name} has no image-to-image pass for the hires fix.", param="hires_scale")
    if not isinstance(r.hires_upscaler, str) or not r.hires_upscaler.strip() or len(r.hires_upscaler) > 200:
        raise InvalidRequestError(f"`hires_upscaler` must be one of {', '.join(HIRES_UPSCALERS)} (or A1111's "
                                  f"names: {', '.join(repr(n) for n in A1111_HIRES_NAMES)}), or an upscaler model's "
                                  f"name, but is {r.hires_upscaler!r}.", param="hires_upscaler")
    r.hires_upscaler = A1111_UPSCALERS.get(r.hires_upscaler.strip().lower(), r.hires_upscaler)  # "Latent (bicubic)"
    if r.hires_upscaler not in HIRES_UPSCALERS:
        _require_model_name("hires_upscaler", r.hires_upscaler, allow_paths, "upscalers", "hires_upscaler")
    r.hires_strength = _require_number("hires_strength", r.hires_strength, 0.01, 1.0)
    if r.hires_steps is not None:
        r.hires_steps = _require_int("hires_steps", r.hires_steps, 1, MAX_STEPS)
    step, limit = spec.family.size_step, spec.family.max_side
    for name, value in (("width", r.width), ("height", r.height)):
        if round(value * r.hires_scale / step) * step > limit:
            raise InvalidRequestError(f"`hires_scale` {r.hires_scale} makes the {name} "
                                      f"{round(value * r.hires_scale)}, over the {limit} {spec.name} takes.",
                                      param="hires_scale")


def _hires_size(r: ImageRequest, spec: ModelSpec) -> None:
    """An exact final size for the hires fix: the scale that covers it (the picture is cropped to it after the
    upscale, centred, as A1111 does with hr_resize_x/y); in the model's size steps, up to 4 times the first pass."""
    if r.hires_scale is not None and r.hires_scale != 1:
        raise InvalidRequestError("Give `hires_scale` or `hires_size`, not both.", param="hires_size")
    width, height = parse_size(r.hires_size, "hires_size")
    step, limit = spec.family.size_step, spec.family.max_side
    for name, value in (("width", width), ("height", height)):
        if value % step or not step <= value <= limit:
            raise InvalidRequestError(f"`hires_size` {r.hires_size!r} has a {name} of {value}: it must be a multiple "
                                      f"of {step} from {step} to {limit} for {spec.name}.", param="hires_size")
    scale = max(width / r.width, height / r.height)
    if not 1 <= scale <= 4:
        raise InvalidRequestError(f"`hires_size` {r.hires_size!r} is {scale:.2f} times the first pass's "
                                  f"{r.width}x{r.height}: the hires fix upscales 1 to 4 times.", param="hires_size")
    r.hires_size, r.hires_scale = f"{width}x{height}", scale


def _check_choices(r: ImageRequest, spec: ModelSpec) -> None:
    """Scheduler, output format, prompt enhancement and the family's own options."""
    family = spec.family
    if r.enhance_prompt is not None and not isinstance(r.enhance_prompt, bool):
        raise InvalidRequestError(f"`enhance_prompt` must be true or false but is {r.enhance_prompt!r}.",
                                  param="enhance_prompt")
    if r.scheduler is not None and r.scheduler not in family.schedulers:
        allowed = ", ".join(family.schedulers) or "none (the model's own)"
        raise InvalidRequestError(f"`scheduler` for {spec.name} must be one of {allowed} but is {r.scheduler!r}.",
                                  param="scheduler")
    if r.output_format not in OUTPUT_FORMATS:
        raise InvalidRequestError(
            f"`output_format` must be one of {', '.join(OUTPUT_FORMATS)} but is {r.output_format!r}.",
            param="output_format",
        )
    for key, value in list(r.extra.items()):
        option = family.options.get(key)
        if option is None:
            known = ", ".join(family.options) or "none"
            raise InvalidRequestError(f"Unknown option {key!r} for {spec.name} (its options: {known}).", param=key)
        r.extra[key] = _check_option(option, value)


def _ignored(spec: ModelSpec, r: ImageRequest) -> list[str]:
    """What the model will receive but not use, said in the result rather than dropped silently."""
    family, warnings = spec.family, [*r.warnings]
    if family.warning:
        warnings.append(family.warning)
    needs = family.negative_prompt_needs
    negative = (r.negative_prompt or "").strip() and r.negative_prompt != family.default_negative_prompt
    if needs and negative:
        name = "guidance_scale" if needs == family.cfg_param else needs
        value = r.guidance_scale if needs == family.cfg_param else r.extra.get(needs)
        if value is None or value <= 1:
            warnings.append(f"{spec.name} ignores the negative prompt unless `{name}` is above 1 "
                            f"(it is {value if value is not None else 'not set'})")
    return warnings


def _snap(value: int, step: int) -> int:
    return max(step, value // step * step)
