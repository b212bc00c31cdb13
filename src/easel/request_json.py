"""A request as JSON, in one place: every field of `ImageRequest` under its own name (`to_json`, `from_json`: the
CLI's hand-off to a server and the job record), and the part of it an image's parameters keep (`record`,
`from_record`: the PNG's `easel` chunk, the history, `--from`). Images travel as base64 PNG, or as named files
beside the JSON (a multipart form); what cannot come back (an image a record does not keep) comes back as None,
for its reader to name."""

from __future__ import annotations

import base64
import dataclasses
import io
from typing import TYPE_CHECKING, Any

from .control import ControlUnit, IPAdapter, image_from_base64
from .errors import InvalidRequestError
from .types import ImageRequest

if TYPE_CHECKING:
    import PIL.Image

IMAGES = ("image", "mask")
UNITS = ("control", "ip_adapter")
LISTS = ("references",)  # lists of images
SET_BY_CHECK = ("revised_prompt", "enhanced_by", "warnings")  # written in records, never taken from a client
FILE = "file:"  # an image given as a named file beside the JSON: "file:<name>"
_UNIT_FIELDS = [f.name for f in dataclasses.fields(ControlUnit) if f.name != "map"]
# what an image's parameters keep of its request (the rest is the result's: model, seed, version, the details)
RECORDED = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "width", "height", "scheduler",
            "mode", "output_format")


def to_json(r: ImageRequest, images: str = "base64") -> tuple[dict[str, Any], dict[str, PIL.Image.Image]]:
    """Every field of `r` (those the check sets, where set); its images as base64 PNG (`images="base64"`), as
    "file:<name>" with the images by name beside (`"files"`), or left out (`"none"`, a record's). Returns the JSON
    and the files."""
    files: dict[str, Any] = {}

    def picture(name: str, image):
        if image is None or images == "none":
            return None
        if images == "files":
            files[name] = image
            return FILE + name
        return _base64(image)

    kept = [f.name for f in dataclasses.fields(r) if f.name not in (*IMAGES, *UNITS, *LISTS, *SET_BY_CHECK)]
    out = {name: getattr(r, name) for name in kept}
    out.update({name: getattr(r, name) for name in SET_BY_CHECK if getattr(r, name)})  # a checked request's
    out.update({name: picture(name, getattr(r, name)) for name in IMAGES})
    out["references"] = [] if images == "none" else [picture(f"references.{i}", image)
                                                     for i, image in enumerate(r.references)]
    out["extra"], out["loras"] = dict(r.extra), dict(r.loras)
    out["control"] = [{**{k: getattr(u, k) for k in _UNIT_FIELDS}, "image": picture(f"control.{i}", u.image)}
                      for i, u in enumerate(r.control)]
    prompt = r.ip_adapter
    out["ip_adapter"] = None if prompt is None else {"model": prompt.model, "scale": prompt.scale,
                                                     "image": picture("ip_adapter", prompt.image)}
    return out, files


def from_json(data: Any, files: dict[str, PIL.Image.Image] | None = None) -> ImageRequest:
    """The request `to_json` wrote (from a client: the fields the check sets are refused, as is any unknown one)."""
    if not isinstance(data, dict):
        raise InvalidRequestError(f"`request` must be an object of request fields but is {data!r}.", param="request")
    fields = {f.name for f in dataclasses.fields(ImageRequest)} - set(SET_BY_CHECK)
    unknown = sorted(set(data) - fields)
    if unknown:
        raise InvalidRequestError(f"Unknown request field {unknown[0]!r} (the fields are: "
                                  f"{', '.join(sorted(fields))}).", param=unknown[0])
    if "prompt" not in data:
        raise InvalidRequestError("Missing required parameter: 'prompt'.", param="prompt")
    values = {k: v for k, v in data.items() if k not in (*IMAGES, *UNITS, *LISTS)}
    for name in IMAGES:
        values[name] = _image(data.get(name), name, files)
    values["references"] = [_image(one, f"references.{i}", files)
                            for i, one in enumerate(_list(data.get("references"), "references"))]
    if None in values["references"]:
        raise InvalidRequestError("`references` must be a list of images, not of null.", param="references")
    values["control"] = [_unit(unit, i, files) for i, unit in enumerate(_list(data.get("control"), "control"))]
    values["ip_adapter"] = _ip_adapter(data.get("ip_adapter"), files)
    return ImageRequest(**values)


def record(r: ImageRequest) -> dict[str, Any]:
    """What an image's parameters keep of the request that made it (no images: those are inputs, not results)."""
    out = {name: getattr(r, name) for name in RECORDED}
    if r.strength is not None and r.mode != "generate":
        out["strength"] = r.strength
    if r.mode == "edit" and r.mask is None:  # after the check: an edit by instruction, of this many images
        out["edit"], out["input_images"] = "instruction", 1 + len(r.references)
    if r.extra:
        out["extra"] = dict(r.extra)
    if r.loras:
        out["loras"] = dict(r.loras)
    if r.control:
        out["control"] = [unit.record() for unit in r.control]
    if r.ip_adapter is not None:
        out["ip_adapter"] = r.ip_adapter.record()
    return out


def from_record(params: dict[str, Any]) -> ImageRequest:
    """The request that made an image, from its parameters: the same prompt the model received (a chat model's
    rewrite is not asked for again: its answer varies), model, seed, settings, add-ons and hires fix. ControlNet
    units and the image prompt come back without their images (None), which a record does not keep."""
    rewritten = bool(params.get("prompt_enhancer") and params.get("revised_prompt"))
    hires = params.get("hires") or {}
    prompt = params.get("ip_adapter")
    return ImageRequest(
        prompt=params["revised_prompt"] if rewritten else params["prompt"], enhance_prompt=False,
        model=params["model"], seed=params["seed"], negative_prompt=params.get("negative_prompt"),
        width=params["width"], height=params["height"], num_inference_steps=params["num_inference_steps"],
        guidance_scale=params["guidance_scale"], scheduler=params.get("scheduler"),
        output_format=params.get("output_format", "png"), extra=dict(params.get("extra", {})),
        loras=dict(params.get("loras", {})),
        control=[_known(ControlUnit, unit) for unit in params.get("control", [])],
        ip_adapter=_known(IPAdapter, prompt) if prompt else None,
        **({"hires_scale": None if hires.get("size") else hires["scale"], "hires_size": hires.get("size"),
            "hires_upscaler": hires["upscaler"], "hires_strength": hires["strength"], "hires_steps": hires["steps"]}
           if hires else {}))


def _known(cls, fields: dict[str, Any]):
    """A ControlUnit or IPAdapter from its record (without its image); what this version does not know is left."""
    return cls(**{k: v for k, v in fields.items() if k in {f.name for f in dataclasses.fields(cls)} - {"image"}})


def _base64(image) -> str:
    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode()


def _image(value: Any, name: str, files: dict[str, Any] | None):
    """An image given as base64 text (a data URL too) or as "file:<name>" of `files`; None stays None."""
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(FILE):
        if value[len(FILE):] not in (files or {}):
            raise InvalidRequestError(f"`{name}` names the file {value[len(FILE):]!r}, which was not sent.",
                                      param=name)
        return files[value[len(FILE):]]
    return image_from_base64(value, name, name)


def _list(value: Any, param: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequestError(f"`{param}` must be a list but is {value!r}.", param=param)
    return value


def _object(value: Any, param: str, fields: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"`{param}` must be an object but is {value!r}.", param=param)
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InvalidRequestError(f"Unknown `{param}` field {unknown[0]!r} (the fields are: "
                                  f"{', '.join(sorted(fields))}).", param=param)
    return value


def _unit(value: Any, i: int, files: dict[str, Any] | None) -> ControlUnit:
    unit = _object(value, "control", _UNIT_FIELDS)
    return ControlUnit(**{**unit, "image": _image(unit.get("image"), f"control.{i}", files)})


def _ip_adapter(value: Any, files: dict[str, Any] | None) -> IPAdapter | None:
    if value is None:
        return None
    prompt = _object(value, "ip_adapter", ["model", "scale", "image"])
    return IPAdapter(**{**prompt, "image": _image(prompt.get("image"), "ip_adapter", files)})
