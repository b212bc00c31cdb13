"""The ControlNet extension of the A1111 API, as its clients send it: units in `alwayson_scripts.controlnet.args`
(ControlNets, and IP-Adapter image prompts), and the extension's own routes at /controlnet."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from ..catalog import CONTROLNET_MARKER, IP_ADAPTER_MARKER, model_folders
from ..control import PREPROCESSORS, ControlUnit, IPAdapter, png_base64, preprocess
from ..errors import InvalidRequestError
from ..types import image_from_bytes


def checkpoint_name(title: str) -> str:
    """A checkpoint as A1111 clients name it: its title (`file.safetensors [hash]`), its file name or its name."""
    return re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", title.strip())


def decode(value: str, param: str):
    """A base64 image (or data URL) as A1111 clients send them; not one: an error naming `param`."""
    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"`{param}` must be a base64 image.", param=param) from None
    return image_from_bytes(raw, param)


# the ControlNet extension's preprocessor ("module") names -> Easel's (modules named ip-adapter* make image prompts)
CONTROL_MODULES = {"none": "none", "canny": "canny", "invert (from white bg & black line)": "invert",
                   "invert": "invert"}


def _controlnet_args(scripts: dict[str, Any]) -> list:
    script = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None) if scripts else None
    args = script.get("args", []) if isinstance(script, dict) else []
    if not isinstance(args, list):
        raise InvalidRequestError("`alwayson_scripts.controlnet.args` must be a list.", param="alwayson_scripts")
    return args


def _is_ip_adapter(arg) -> bool:
    return isinstance(arg, dict) and str(arg.get("module") or "").lower().startswith("ip-adapter")


def image_prompt(scripts: dict[str, Any]) -> IPAdapter | None:
    """The ControlNet extension's IP-Adapter unit (a module named ip-adapter*, as the extension runs them): its
    model, image and weight as an image prompt; one at most."""
    units = [(i, arg) for i, arg in enumerate(_controlnet_args(scripts)) if _is_ip_adapter(arg)
             and arg.get("enabled", True)]
    if not units:
        return None
    i, arg = units[0]
    where = f"alwayson_scripts.controlnet.args[{i}]"
    if len(units) > 1:
        raise InvalidRequestError("One IP-Adapter unit at a time.", param=where)
    image = arg.get("image") or arg.get("input_image")
    if isinstance(image, dict):
        image = image.get("image")
    if not image:
        raise InvalidRequestError(f"`{where}.image` is required.", param=f"{where}.image")
    try:
        scale = float(arg.get("weight", 1.0))
    except (TypeError, ValueError):
        raise InvalidRequestError(f"`{where}.weight` must be a number.", param=f"{where}.weight") from None
    return IPAdapter(checkpoint_name(str(arg.get("model") or "")), decode(image, f"{where}.image"), scale)


def control_units(scripts: dict[str, Any]) -> list[ControlUnit]:
    """The units of the ControlNet extension's request (`alwayson_scripts.controlnet.args`, any case), enabled
    ones only; each error names the field as the client sent it."""
    units = []
    for i, arg in enumerate(_controlnet_args(scripts)):
        where = f"alwayson_scripts.controlnet.args[{i}]"
        if not isinstance(arg, dict):
            raise InvalidRequestError(f"`{where}` must be an object.", param=where)
        if not arg.get("enabled", True) or _is_ip_adapter(arg):  # image prompts: `image_prompt`
            continue
        module = str(arg.get("module") or "none")
        if module not in CONTROL_MODULES:
            raise InvalidRequestError(f"`{where}.module` must be one of {', '.join(CONTROL_MODULES)} but is "
                                      f"{module!r}.", param=f"{where}.module")
        image = arg.get("image") or arg.get("input_image")
        if isinstance(image, dict):  # {"image": ..., "mask": ...} in some versions
            image = image.get("image")
        if not image:
            raise InvalidRequestError(f"`{where}.image` is required (txt2img has no picture to use instead).",
                                      param=f"{where}.image")
        try:
            units.append(ControlUnit(
                model=checkpoint_name(str(arg.get("model") or "")), image=decode(image, f"{where}.image"),
                preprocessor=CONTROL_MODULES[module], weight=float(arg.get("weight", 1.0)),
                start=float(arg.get("guidance_start", 0.0)), end=float(arg.get("guidance_end", 1.0)),
                low_threshold=int(arg.get("threshold_a", 100)) if module == "canny" else 100,
                high_threshold=int(arg.get("threshold_b", 200)) if module == "canny" else 200))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"`{where}` has a value of the wrong type: {exc}.", param=where) from None
    return units


# the ControlNet extension's own routes (at the server's root, as the extension serves them)
controlnet_router = APIRouter(prefix="/controlnet", tags=["a1111"])


@controlnet_router.get("/version")
def controlnet_version() -> dict[str, Any]:
    return {"version": 2}


@controlnet_router.get("/model_list")
def controlnet_models(request: Request) -> dict[str, Any]:
    """The ControlNet models of the server's controlnets folder, then its IP-Adapters, by name (never a path)."""
    settings = request.app.state.runner.settings
    return {"model_list": model_folders(settings.controlnets_folder, CONTROLNET_MARKER)
            + model_folders(settings.ip_adapters_folder, IP_ADAPTER_MARKER)}


@controlnet_router.get("/module_list")
def controlnet_modules() -> dict[str, Any]:
    image_prompts = ["ip-adapter_clip_sd15", "ip-adapter_clip_sdxl"]
    return {"module_list": [*CONTROL_MODULES, *image_prompts], "module_detail": {
        **{name: {"model_free": False, "sliders": [], "description": PREPROCESSORS[easel]}
           for name, easel in CONTROL_MODULES.items()},
        **{name: {"model_free": False, "sliders": [], "description": "an image prompt through an IP-Adapter model"}
           for name in image_prompts}}}


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = []
    controlnet_images: list[str] = []  # the name older clients (webuiapi) send
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = 100
    controlnet_threshold_b: float = 200


@controlnet_router.post("/detect")
async def controlnet_detect(body: DetectRequest) -> dict[str, Any]:
    """Each image through a preprocessor: the maps a ControlNet would receive, as base64 PNG."""
    if body.controlnet_module not in CONTROL_MODULES:
        raise InvalidRequestError(f"`controlnet_module` must be one of {', '.join(CONTROL_MODULES)} but is "
                                  f"{body.controlnet_module!r}.", param="controlnet_module")
    images = body.controlnet_input_images or body.controlnet_images
    if not images:
        raise InvalidRequestError("`controlnet_input_images` needs at least one image.",
                                  param="controlnet_input_images")
    out = []
    for i, value in enumerate(images):
        unit = ControlUnit(model="-", image=decode(value, f"controlnet_input_images[{i}]"),
                           preprocessor=CONTROL_MODULES[body.controlnet_module],
                           low_threshold=max(1, min(255, int(body.controlnet_threshold_a))),
                           high_threshold=max(1, min(255, int(body.controlnet_threshold_b))))
        out.append(await run_in_threadpool(lambda u: png_base64(preprocess(u)), unit))
    return {"images": out, "info": "Success"}


