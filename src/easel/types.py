"""The one request type and the one result type that every front, the engine and every provider share."""

from __future__ import annotations

import dataclasses
import io
import re
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError

if TYPE_CHECKING:
    import PIL.Image

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_INPUT_PIXELS = 4096 * 4096
MODES = ("generate", "edit", "vary", "upscale")
_SIZE = re.compile(r"^\s*([0-9]{1,6})\s*[xX×]\s*([0-9]{1,6})\s*$")  # ASCII digits: int() takes any script


def parse_size(size: str, param: str = "size") -> tuple[int, int]:
    """'1024x1792' -> (1024, 1792); anything else is an error naming `param`."""
    m = _SIZE.match(size) if isinstance(size, str) else None
    if not m:
        raise InvalidRequestError(f"`{param}` must look like WIDTHxHEIGHT (e.g. 1024x1024) but is {size!r}.",
                                  param=param)
    return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass
class ImageRequest:
    """What to make. Field names follow diffusers; `None` means "the model's default".

    `size` ("1024x1792") or `aspect` ("16:9", one of the model family's presets) may stand in for `width` and
    `height`; `extra` holds options of one model family (e.g. Qwen-Image's `true_cfg_scale`). `image`, `mask`
    and `strength` are for edits (inpainting) and variations (image-to-image); `mask_blur`, `inpaint_full_res` and
    `inpaint_full_res_padding` shape an edit as A1111's fields of those names do. An edit without a mask follows
    the prompt as an instruction on a model that edits that way (FLUX.1 Kontext, Qwen-Image-Edit, FLUX.2), with
    `references` as its further input images; on any other model it changes the whole picture (image-to-image).
    """

    prompt: str
    negative_prompt: str | None = None
    model: str | None = None
    num_images: int = 1
    width: int | None = None
    height: int | None = None
    size: str | None = None
    aspect: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    output_format: str = "png"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    mode: str = "generate"
    image: PIL.Image.Image | None = dataclasses.field(default=None, repr=False)
    mask: PIL.Image.Image | None = dataclasses.field(default=None, repr=False)
    references: list[PIL.Image.Image] = dataclasses.field(default_factory=list, repr=False)  # more input images
    strength: float | None = None
    mask_blur: int | None = None  # pixels over which an edit blends into the picture (default 4, as in A1111)
    inpaint_full_res: bool = False  # the model sees only the painted area (plus the padding), at full resolution
    inpaint_full_res_padding: int = 32
    moderation: str = "auto"
    loras: dict[str, float] = dataclasses.field(default_factory=dict)  # LoRA name (or file, for the library) -> weight
    enhance_prompt: bool | None = None  # a chat model rewrites the prompt: yes, no, None: as the server says
    control: list = dataclasses.field(default_factory=list)  # ControlNet units (easel.control.ControlUnit)
    ip_adapter: Any = None  # an image prompt (easel.control.IPAdapter)
    # hires fix (A1111's enable_hr): make the image at its size, upscale it by `hires_scale` with `hires_upscaler`,
    # then image-to-image at `hires_strength` for `hires_steps` (None: the request's steps)
    hires_scale: float | None = None
    hires_size: str | None = None  # or an exact final size, "WxH" (A1111's hr_resize_x/y): made to cover it, cropped
    hires_upscaler: str = "lanczos"
    hires_strength: float = 0.55
    hires_steps: int | None = None
    # an upscale (mode "upscale"): `image` `scale` times as large through `upscaler` (an image filter, or an upscaler
    # model working on tiles of `tile` pixels; 0: the whole picture at once)
    upscaler: str = "lanczos"
    scale: float = 2.0
    tile: int = 256
    enhanced_by: str | None = None  # set when a chat model rewrote the prompt (into `revised_prompt`)
    revised_prompt: str | None = None  # set by the check: what the model receives, where it differs from `prompt`
    warnings: list[str] = dataclasses.field(default_factory=list)  # set by the check: what the model will ignore

    def replace(self, **changes: Any) -> ImageRequest:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class GeneratedImage:
    """One image, the seed that made it and every parameter needed to make it again."""

    image: PIL.Image.Image = dataclasses.field(repr=False)
    seed: int | None  # None: the model takes no seed, and the image cannot be made again
    parameters: dict[str, Any]
    output_format: str = "png"
    path: str | None = None
    id: str | None = None
    _encoded: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def to_bytes(self, output_format: str | None = None, quality: int | None = None) -> bytes:
        """The image encoded (with its metadata) as PNG, JPEG or WebP; in its own format, encoded once, so that the
        bytes saved are the bytes served."""
        from .metadata import encode_image

        own = output_format in (None, self.output_format) and quality is None
        if own and self._encoded is not None:
            return self._encoded
        data = encode_image(self.image, output_format or self.output_format, self.parameters, quality=quality)
        if own:
            self._encoded = data
        return data

    def save(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.to_bytes())
        return path


@dataclasses.dataclass
class ImageResult:
    """The images one request made, with what the model changed or ignored of the request."""

    images: list[GeneratedImage]
    model: str
    prompt: str
    revised_prompt: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    control_maps: list = dataclasses.field(default_factory=list, repr=False)  # each ControlNet unit's map (PIL)

    def __iter__(self):
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> GeneratedImage:
        return self.images[i]

    @property
    def paths(self) -> list[str]:
        return [im.path for im in self.images if im.path]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "revised_prompt": self.revised_prompt,
            "warnings": self.warnings,
            "images": [{"path": im.path, "id": im.id, "seed": im.seed, **im.parameters} for im in self.images],
        }


def image_from_bytes(data: bytes, param: str = "image") -> PIL.Image.Image:
    """Decode an uploaded image, refusing what is not one (and decompression bombs) with an error naming `param`."""
    import PIL.Image

    try:
        im = PIL.Image.open(io.BytesIO(data))
    except Exception:
        raise InvalidRequestError(f"`{param}` is not an image that can be read (PNG, JPEG or WebP).",
                                  param=param) from None
    # refuse decompression bombs from the header, before decoding a single pixel
    if im.width * im.height > MAX_INPUT_PIXELS:
        raise InvalidRequestError(
            f"`{param}` is {im.width}x{im.height}, over the {MAX_INPUT_PIXELS} pixels allowed.", param=param)
    try:
        im.load()
    except Exception:
        raise InvalidRequestError(f"`{param}` is a damaged or truncated image.", param=param) from None
    return im
