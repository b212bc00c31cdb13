"""Every mask format Easel reads or writes, to and from its own: an "L" image, white where the image is repainted.

    OpenAI      the image (or a mask image) with alpha 0 where it is repainted   from_alpha / from_openai / to_openai
    A1111       white = repaint (or its alpha), `inpainting_mask_invert`          from_a1111
    web UI      the editor's brush layers: painted = repaint                      from_layers
    diffusers   white = repaint, the image's size                                  (Easel's own)

`edit_area` is the area an edit with no mask repaints (the transparent pixels, or none); `InpaintFrame` is what every
provider's edit goes through: the mask feathered over `mask_blur` pixels, optionally only the masked area shown to
the model at full resolution, and the answer pasted back with every pixel beyond the band kept exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InvalidRequestError

if TYPE_CHECKING:
    import PIL.Image


def from_alpha(image: PIL.Image.Image, param: str = "mask") -> PIL.Image.Image:
    """White (repaint) where `image` is fully transparent, black elsewhere: OpenAI's mask convention."""
    if "A" not in image.getbands():
        raise InvalidRequestError(
            f"`{param}` needs transparent pixels to mark the area to repaint, but the image has no alpha channel.",
            param=param)
    return image.getchannel("A").point(lambda a: 255 if a == 0 else 0)


def has_transparency(image: PIL.Image.Image) -> bool:
    """Whether any pixel of `image` is fully transparent (an area that an edit with no mask repaints)."""
    return "A" in image.getbands() and image.getchannel("A").getextrema()[0] == 0


WHOLE_PICTURE_STRENGTH = 0.8  # an edit of the whole picture: the prompt shows, the picture's layout stays


def edit_area(image: PIL.Image.Image) -> PIL.Image.Image | None:
    """The area an edit with no mask repaints: the image's fully transparent pixels, or None (an opaque picture):
    then the edit follows the prompt on a model that edits by instruction, and elsewhere changes the whole picture
    (image-to-image at WHOLE_PICTURE_STRENGTH, as gpt-image models do; see `checks`)."""
    return from_alpha(image) if has_transparency(image) else None


def with_markup(image: PIL.Image.Image, markup: PIL.Image.Image) -> PIL.Image.Image:
    """OpenAI's `markup`: a transparent PNG of marks drawn over `image` (its size) to guide an edit, laid on it. It
    must have transparent pixels (else it would hide the whole picture)."""
    if not has_transparency(markup):
        raise InvalidRequestError("`markup` must be a PNG with transparent pixels (the marks opaque, the rest clear).",
                                  param="markup")
    base = image.convert("RGBA")
    base.alpha_composite(markup.convert("RGBA"))
    return base.convert(image.mode if image.mode in ("RGB", "RGBA", "L") else "RGB")


def binary(mask: PIL.Image.Image) -> PIL.Image.Image:
    """Any grey mask as black and white (over half = repaint)."""
    return mask.convert("L").point(lambda v: 255 if v > 127 else 0)


def from_openai(mask: PIL.Image.Image | None, image: PIL.Image.Image) -> PIL.Image.Image:
    """OpenAI's `mask` (alpha 0 = repaint), or with no mask the image's own transparent pixels. A mask with no alpha
    is read the diffusers way (white = repaint)."""
    if mask is None or "A" in mask.getbands():
        return from_alpha(mask if mask is not None else image)
    return binary(mask)


def from_a1111(mask: PIL.Image.Image, invert: bool = False) -> PIL.Image.Image:
    """A1111's `mask` (white = repaint; a mask with alpha marks the area by transparency), inverted on request."""
    grey = from_alpha(mask) if "A" in mask.getbands() else mask.convert("L")
    return grey.point(lambda v: 255 - v) if invert else grey


def from_layers(layers: list[PIL.Image.Image], size: tuple[int, int]) -> PIL.Image.Image | None:
    """The web UI editor's brush layers: whatever was painted, on any layer, is repainted; None if nothing was."""
    from PIL import ImageChops

    mask = None
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        if alpha.size != size:
            alpha = alpha.resize(size)
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    return mask if mask is not None and mask.getbbox() else None


def to_openai(image: PIL.Image.Image, mask: PIL.Image.Image) -> PIL.Image.Image:
    """Easel's mask as OpenAI's: the image with alpha 0 where it is to be repainted."""
    from PIL import ImageOps

    rgba = image.convert("RGBA")
    rgba.putalpha(ImageOps.invert(mask.convert("L")).resize(rgba.size))
    return rgba


def feather(hard: PIL.Image.Image, blur: int) -> PIL.Image.Image:
    """How much of the model's picture each pixel takes: the painted area whole, fading out over the `2 * blur`
    pixels around it (grown by `blur`, then blurred by half of it), so that even a small painted area is repainted
    in full and its edge has no seam; every pixel further away keeps the picture exactly."""
    from PIL import ImageChops, ImageFilter

    if blur <= 0:
        return hard
    grown = hard.filter(ImageFilter.MaxFilter(2 * blur + 1))
    band = hard.filter(ImageFilter.MaxFilter(4 * blur + 1))
    return ImageChops.multiply(grown.filter(ImageFilter.GaussianBlur(blur / 2)), band)


def crop_box(hard: PIL.Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The painted area's bounding box grown by `padding`, widened to the image's aspect ratio and kept inside it;
    None when nothing is painted."""
    bbox = hard.getbbox()
    if bbox is None:
        return None
    width, height = hard.size
    left, top, right, bottom = bbox[0] - padding, bbox[1] - padding, bbox[2] + padding, bbox[3] + padding
    box_w, box_h = right - left, bottom - top
    if box_w / box_h < width / height:  # too narrow: widen it, about its centre
        box_w = min(width, round(box_h * width / height))
    else:
        box_h = min(height, round(box_w * height / width))
    box_w, box_h = min(width, box_w), min(height, box_h)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(0, round(cx - box_w / 2)), width - box_w))
    top = int(min(max(0, round(cy - box_h / 2)), height - box_h))
    return left, top, left + box_w, top + box_h


class InpaintFrame:
    """An edit's picture around the model's call, the same for every provider: the model sees the whole picture, or
    with `inpaint_full_res` only the painted area (plus `inpaint_full_res_padding`) at the full requested
    resolution; its answer is pasted back and blended in over `mask_blur` pixels, and every pixel outside that band
    stays exactly as it was."""

    def __init__(self, image: PIL.Image.Image, mask: PIL.Image.Image, size: tuple[int, int], blur: int,
                 full_res: bool, padding: int):
        from PIL import Image

        self.base = image.convert("RGB").resize(size, Image.LANCZOS) if image.size != size else image.convert("RGB")
        hard = binary(mask.convert("L").resize(size, Image.NEAREST))
        self.soft = feather(hard, blur)
        repaint = self.soft.point(lambda v: 255 if v > 0 else 0)  # the model repaints the blended band too
        self.box = crop_box(repaint, padding) if full_res else None
        self.repaint = repaint

    def model_inputs(self) -> tuple[PIL.Image.Image, PIL.Image.Image]:
        """The image and the mask the model is given, at the requested size."""
        from PIL import Image

        if self.box is None:
            return self.base, self.repaint
        size = self.base.size
        return (self.base.crop(self.box).resize(size, Image.LANCZOS),
                self.repaint.crop(self.box).resize(size, Image.NEAREST))

    def paste(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """The model's answer back in the picture: inside the painted area, blended over the band around it."""
        from PIL import Image

        full = self.base.copy()
        if self.box is not None:
            left, top, right, bottom = self.box
            full.paste(image.convert("RGB").resize((right - left, bottom - top), Image.LANCZOS), (left, top))
        else:
            full = image.convert("RGB").resize(self.base.size, Image.LANCZOS) if image.size != self.base.size \
                else image.convert("RGB")
        return Image.composite(full, self.base, self.soft)
