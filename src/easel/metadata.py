"""Image encoding with embedded parameters, and reading them back.

PNG gets two text chunks: `parameters` in the A1111 style that other tools read, and `easel` with Easel's own
JSON. JPEG and WebP carry the same A1111 text in the EXIF UserComment, and the JSON in the EXIF ImageDescription.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import PIL.Image

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_IMAGE_DESCRIPTION = 0x010E


def _hires_settings(hires: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not hires:
        return []
    return [("Denoising strength", hires["strength"]), ("Hires upscale", hires["scale"]),
            ("Hires steps", hires["steps"]), ("Hires upscaler", hires["upscaler"])]


def a1111_parameters(p: dict[str, Any]) -> str:
    """The `parameters` text A1111-compatible tools show: prompt, negative prompt, then one settings line."""
    lines = [p.get("prompt", "")]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    settings = [
        ("Steps", p.get("num_inference_steps")),
        ("Sampler", p.get("scheduler")),
        ("CFG scale", p.get("guidance_scale")),
        ("Seed", p.get("seed")),
        ("Size", f"{p.get('width')}x{p.get('height')}"),
        ("Model", p.get("model")),
        ("Lora hashes", '"' + ", ".join(f"{n}: {h}" for n, h in p["lora_hashes"].items()) + '"'
         if p.get("lora_hashes") else None),
        *_hires_settings(p.get("hires")),
        *[(f"ControlNet {i}", '"' + ", ".join(f"{k}: {v}" for k, v in unit.items()) + '"')
          for i, unit in enumerate(p.get("control") or [])],
        ("Version", f"easel {p.get('version', '')}".strip()),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in settings if v is not None))
    return "\n".join(lines)


def encode_image(image: PIL.Image.Image, output_format: str, parameters: dict[str, Any],
                 quality: int | None = None) -> bytes:
    """Encode as png, jpeg or webp with the parameters embedded."""
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    text = a1111_parameters(parameters)
    blob = json.dumps(parameters, ensure_ascii=False, sort_keys=True)
    if output_format == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", text)
        info.add_itxt("easel", blob)
        image.save(buf, format="PNG", pnginfo=info)
    else:
        exif = image.getexif()
        exif[_IMAGE_DESCRIPTION] = blob
        # UserComment: an 8-byte character code, then the text (A1111 writes UNICODE, i.e. UTF-16)
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
        rgb = image.convert("RGB") if output_format == "jpeg" else image
        kwargs = {"quality": quality} if quality is not None else {}
        rgb.save(buf, format=output_format.upper(), exif=exif, **kwargs)
    return buf.getvalue()


def read_parameters(image: PIL.Image.Image) -> dict[str, Any] | None:
    """Easel's parameters from an image it saved, or None when it carries none."""
    blob = image.info.get("easel")
    if blob is None:
        exif = image.getexif()
        blob = exif.get(_IMAGE_DESCRIPTION)
    if not blob:
        return None
    try:
        return json.loads(blob)
    except (TypeError, ValueError):
        return None


def read_a1111_text(image: PIL.Image.Image) -> str | None:
    if "parameters" in image.info:
        return image.info["parameters"]
    raw = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(raw, bytes) and raw.startswith(b"UNICODE\0"):
        return raw[8:].decode("utf-16-be", errors="replace")
    return None


def prompt_of(image: PIL.Image.Image) -> str:
    """The prompt an image was made with, when it carries one (a variation without a prompt reuses it)."""
    return (read_parameters(image) or {}).get("prompt") or ""
