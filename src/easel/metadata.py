"""Image encoding with embedded parameters, and reading them back.

PNG gets two text chunks: `parameters` in the A1111 style that other tools read, and `easel` with Easel's own
JSON. JPEG and WebP carry the same A1111 text in the EXIF UserComment, and the JSON in the EXIF ImageDescription.
"""

from __future__ import annotations

import io
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import PIL.Image

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_IMAGE_DESCRIPTION = 0x010E


# Easel's schedulers as A1111 names them: its sampler, and its schedule type where it is not the sampler's own
A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "euler_a": ("Euler a", None), "euler": ("Euler", None), "euler_karras": ("Euler", "Karras"),
    "dpm++": ("DPM++ 2M", None), "dpm++_karras": ("DPM++ 2M", "Karras"), "ddim": ("DDIM", None),
    "unipc": ("UniPC", None), "pndm": ("PLMS", None), "lms": ("LMS", None), "lms_karras": ("LMS", "Karras"),
    "heun": ("Heun", None), "heun_karras": ("Heun", "Karras"), "lcm": ("LCM", None)}
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>", re.IGNORECASE)
_SETTING = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _hires_settings(hires: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not hires:
        return []
    return [("Denoising strength", hires["strength"]), ("Hires upscale", hires["scale"]),
            ("Hires resize", hires.get("size")), ("Hires steps", hires["steps"]), ("Hires upscaler", hires["upscaler"])]


def _quoted(pairs: dict[str, Any] | None) -> str | None:
    return '"' + ", ".join(f"{k}: {v}" for k, v in pairs.items()) + '"' if pairs else None


def a1111_parameters(p: dict[str, Any]) -> str:
    """The `parameters` text as A1111 writes it, which A1111-compatible tools (and civitai) read: the prompt with
    its LoRAs as `<lora:name:weight>` tags, the negative prompt, then one settings line with A1111's sampler and
    schedule type names, clip skip, and the hashes of the LoRAs and embeddings."""
    prompt = p.get("prompt", "")
    tagged = {m.group(1) for m in _LORA_TAG.finditer(prompt)}
    prompt = " ".join([prompt, *(f"<lora:{n}:{w}>" for n, w in (p.get("loras") or {}).items() if n not in tagged)])
    lines = [prompt.strip()]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    sampler, schedule = A1111_SAMPLERS.get(p.get("scheduler") or "", (p.get("scheduler"), None))
    skip = (p.get("extra") or {}).get("clip_skip")
    settings = [
        ("Steps", p.get("num_inference_steps")),
        ("Sampler", sampler),
        ("Schedule type", schedule),
        ("CFG scale", p.get("guidance_scale")),
        ("Seed", p.get("seed")),
        ("Size", f"{p.get('width')}x{p.get('height')}"),
        ("Model", p.get("model")),
        ("Clip skip", skip + 1 if isinstance(skip, int) else None),
        ("Lora hashes", _quoted(p.get("lora_hashes"))),
        ("TI hashes", _quoted(p.get("embedding_hashes"))),
        *_hires_settings(p.get("hires")),
        *[(f"ControlNet {i}", _quoted(unit)) for i, unit in enumerate(p.get("control") or [])],
        ("Version", f"easel {p.get('version', '')}".strip()),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in settings if v is not None))
    return "\n".join(lines)


def from_a1111_text(text: str) -> dict[str, Any] | None:
    """An image's parameters (Easel's record shape, as `request_json.from_record` reads it) from the `parameters`
    text A1111 writes; None where the text is not A1111's (no settings line with its steps and seed). LoRA tags stay
    in the prompt, where Easel reads them; settings Easel has no use for are left out."""
    from .upscalers import A1111_UPSCALERS

    lines = text.strip().split("\n")
    settings_line = lines[-1] if lines else ""
    settings = {k.strip(): v.strip().strip('"') for k, v in _SETTING.findall(settings_line)}
    if "Steps" not in settings or "Seed" not in settings:
        return None
    body = lines[:-1]
    negative_at = next((i for i, line in enumerate(body) if line.startswith("Negative prompt:")), len(body))
    negative = "\n".join(body[negative_at:])[len("Negative prompt:"):].strip() if negative_at < len(body) else None
    width, _, height = settings.get("Size", "512x512").partition("x")
    by_name = {v: k for k, v in A1111_SAMPLERS.items()}
    sampler = (settings.get("Sampler", ""), settings.get("Schedule type") if settings.get("Schedule type") not in
               (None, "Automatic") else None)
    if sampler[0].endswith(" Karras"):  # the names before A1111 1.9 ("DPM++ 2M Karras")
        sampler = (sampler[0][:-len(" Karras")], "Karras")
    try:
        params: dict[str, Any] = {
            "prompt": "\n".join(body[:negative_at]).strip(), "negative_prompt": negative,
            "num_inference_steps": int(settings["Steps"]), "seed": int(settings["Seed"]),
            "guidance_scale": float(settings.get("CFG scale", 7.0)), "width": int(width), "height": int(height),
            "model": settings.get("Model"), "scheduler": by_name.get(sampler), "extra": {}, "source": "a1111"}
        if int(settings.get("Clip skip", 1)) > 1:
            params["extra"]["clip_skip"] = int(settings["Clip skip"]) - 1
        if "Hires upscale" in settings:
            upscaler = settings.get("Hires upscaler", "Latent")
            params["hires"] = {"scale": float(settings["Hires upscale"]),
                               "upscaler": A1111_UPSCALERS.get(upscaler.lower(), upscaler),
                               "strength": float(settings.get("Denoising strength", 0.7)),
                               "steps": int(settings["Hires steps"]) if settings.get("Hires steps", "0") != "0"
                               else None, **({"size": settings["Hires resize"]} if "Hires resize" in settings else {})}
    except ValueError:
        return None
    return params


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
    """Easel's parameters from an image it saved, or those A1111 wrote into one it made (`from_a1111_text`), or
    None when it carries neither."""
    blob = image.info.get("easel")
    if blob is None:
        exif = image.getexif()
        blob = exif.get(_IMAGE_DESCRIPTION)
    if not blob:
        text = read_a1111_text(image)
        return from_a1111_text(text) if text else None
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
