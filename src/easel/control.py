"""ControlNet units: a control model, the image that guides composition, the preprocessor that turns it into the
model's map, and how strongly and over which part of the steps the map counts (as A1111's ControlNet extension
and ComfyUI set them)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError

if TYPE_CHECKING:
    import PIL.Image

# preprocessor -> what it does; depth, pose and lineart need controlnet_aux, which needs torchvision (not here)
PREPROCESSORS = {
    "none": "the image is the map as it is (an edge map, a depth map, a pose you drew)",
    "canny": "Canny edges (OpenCV), thresholds low and high (A1111's threshold_a, threshold_b; 100, 200)",
    "invert": "the image with its colours inverted (white lines on black from black lines on white)",
}
MAX_UNITS = 4


@dataclasses.dataclass
class ControlUnit:
    """One ControlNet: `model` is a control model's name (a folder of EASEL_HOME/controlnets, a hub id, or for the
    library a folder's path); `image` guides the composition after `preprocessor`; `weight` scales it; it counts
    from `start` to `end` (fractions of the steps)."""

    model: str
    image: PIL.Image.Image | None = dataclasses.field(default=None, repr=False)
    preprocessor: str = "none"
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low_threshold: int = 100
    high_threshold: int = 200
    map: PIL.Image.Image | None = dataclasses.field(default=None, repr=False)  # set by the check

    def record(self) -> dict[str, Any]:
        """What the image's parameters keep of the unit (the guiding image itself is not kept)."""
        out = {"model": self.model, "preprocessor": self.preprocessor, "weight": self.weight, "start": self.start,
               "end": self.end}
        if self.preprocessor == "canny":
            out.update(low_threshold=self.low_threshold, high_threshold=self.high_threshold)
        return out


@dataclasses.dataclass
class IPAdapter:
    """An image prompt: `image` steers the content and style through the IP-Adapter `model` (a folder of
    EASEL_HOME/ip_adapters holding the adapter's weights and its `image_encoder`, or a hub id), at `scale`."""

    model: str
    image: PIL.Image.Image | None = dataclasses.field(default=None, repr=False)
    scale: float = 0.6

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "scale": self.scale}


def as_ip_adapter(value: Any, load_image) -> IPAdapter | None:
    """An IPAdapter from itself or a dict of its fields (`image` for `load_image`); None stays None."""
    if value is None or isinstance(value, IPAdapter):
        return value
    if not isinstance(value, dict) or "model" not in value or value.get("image") is None:
        raise InvalidRequestError("`ip_adapter` must be an object with a `model`, an `image` and optionally a "
                                  f"`scale` but is {value!r}.", param="ip_adapter")
    unknown = sorted(set(value) - {"model", "image", "scale"})
    if unknown:
        raise InvalidRequestError(f"Unknown `ip_adapter` field {unknown[0]!r} (the fields are: image, model, "
                                  "scale).", param="ip_adapter")
    return IPAdapter(value["model"], load_image(value["image"], "ip_adapter"), value.get("scale", 0.6))


def preprocess(unit: ControlUnit) -> PIL.Image.Image:
    """The unit's map: its image through its preprocessor, as RGB."""
    import numpy as np
    import PIL.Image
    import PIL.ImageOps

    image = unit.image.convert("RGB")
    if unit.preprocessor == "none":
        return image
    if unit.preprocessor == "invert":
        return PIL.ImageOps.invert(image)
    if unit.preprocessor == "canny":
        import cv2

        gray = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
        edges = cv2.Canny(gray, unit.low_threshold, unit.high_threshold)
        return PIL.Image.fromarray(edges).convert("RGB")
    raise InvalidRequestError(f"`control.preprocessor` must be one of {', '.join(PREPROCESSORS)} but is "
                              f"{unit.preprocessor!r}.", param="control")


def as_unit(value: Any, load_image) -> ControlUnit:
    """A unit from a ControlUnit or a dict of its fields (`image` a path, bytes or PIL image for `load_image`)."""
    if isinstance(value, ControlUnit):
        return value
    if not isinstance(value, dict):
        raise InvalidRequestError(f"Each `control` unit must be an object with model and image but one is "
                                  f"{value!r}.", param="control")
    fields = {f.name for f in dataclasses.fields(ControlUnit)} - {"map"}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise InvalidRequestError(f"Unknown `control` field {unknown[0]!r} (the fields are: "
                                  f"{', '.join(sorted(fields))}).", param="control")
    if "model" not in value or value.get("image") is None:
        raise InvalidRequestError("Each `control` unit needs a `model` and an `image`.", param="control")
    return ControlUnit(**{**value, "image": load_image(value["image"], "control")})


def image_from_base64(value: Any, param: str = "control", field: str | None = None) -> PIL.Image.Image:
    """An image sent as base64 text (a data URL too), as JSON APIs carry them; errors name `field` (by default
    `<param>.image`) and `param`."""
    import base64
    import binascii

    from .types import image_from_bytes

    field = field or f"{param}.image"
    if not isinstance(value, str):
        raise InvalidRequestError(f"`{field}` must be base64 text but is {type(value).__name__}.", param=param)
    try:
        data = base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"`{field}` is not base64 text.", param=param) from None
    return image_from_bytes(data, param)


def units_from_json(value: Any) -> list[ControlUnit]:
    """`control` of a JSON API: a list of unit objects whose `image` is base64 text (or JSON text of that list, a
    multipart form's field)."""
    import json

    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequestError("`control` must be a JSON list of ControlNet units.", param="control") from None
    if not isinstance(value, list):
        raise InvalidRequestError(f"`control` must be a list of ControlNet units but is {value!r}.", param="control")
    return [as_unit(unit, image_from_base64) for unit in value]


def ip_adapter_from_json(value: Any) -> IPAdapter | None:
    """`ip_adapter` of a JSON API: {model, image (base64), scale}, or JSON text of it (a multipart form's field)."""
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequestError("`ip_adapter` must be a JSON object.", param="ip_adapter") from None
    return as_ip_adapter(value, image_from_base64)


def png_base64(image) -> str:
    """An image as PNG in base64, as JSON APIs carry images."""
    import base64
    import io

    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode()


def ip_adapter_to_json(prompt: IPAdapter | None) -> dict[str, Any] | None:
    return None if prompt is None else {**prompt.record(), "image": png_base64(prompt.image)}


def units_to_json(units: list[ControlUnit]) -> list[dict[str, Any]]:
    """The units as `units_from_json` reads them (images as PNG in base64)."""
    out = []
    for unit in units:
        fields = {f.name: getattr(unit, f.name) for f in dataclasses.fields(ControlUnit) if f.name not in ("image",
                                                                                                           "map")}
        out.append({**fields, "image": png_base64(unit.image)})
    return out
