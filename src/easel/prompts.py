"""Prompts: the prompt formula and its style presets, and the revision a model family's authors recommend (their
quality words appended), which the request check applies and every image records as `revised_prompt`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .catalog import ModelSpec

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
# DALL-E 3's `style`, for the OpenAI API's clients
OPENAI_STYLES = {"vivid": "vivid colors, dramatic lighting", "natural": "natural colors, realistic lighting"}
_CJK = re.compile(r"[\u3400-\u9fff]")


def compose_prompt(subject: str, action: str, style: str, environment: str, details: str, quality: str) -> str:
    """The prompt formula: subject, action, environment, details, style words, quality words; empty parts left
    out. `style` is a preset's name (its words are used) or words of one's own."""
    parts = [subject, action, environment, details, STYLE_PRESETS.get(style, style), quality]
    return ", ".join(p.strip() for p in parts if p and p.strip())


def with_style(prompt: str, words: str) -> str:
    """`prompt` with a style's words appended (nothing for no words)."""
    return f"{prompt.rstrip()}, {words}" if words and prompt.strip() else prompt


def quality_words_for(spec: ModelSpec, prompt: str) -> str | None:
    """The family's recommended quality words in the prompt's language (Chinese ones for a Chinese prompt)."""
    words = spec.family.quality_words
    if not words:
        return None
    return words.get("zh") if _CJK.search(prompt) and "zh" in words else words.get("en")


def revise_prompt(spec: ModelSpec, prompt: str) -> str | None:
    """The prompt with the family's recommended quality words appended, where the family's authors do so; None
    when it stays as it is."""
    if not spec.family.append_quality_words:
        return None
    words = quality_words_for(spec, prompt)
    if not words or prompt.rstrip().endswith(words):
        return None
    return f"{prompt.rstrip()} {words}"


# A1111's LoRA tags: <lora:name>, <lora:name:weight> (and <lora:name:te:unet>, whose first weight counts here)
_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)


def lora_tags(prompt: str) -> tuple[str, list[tuple[str, str]]]:
    """The prompt without its LoRA tags, and each tag's (name, weight text: "" for the default weight of 1), in the
    order written. The model never sees the tags; the recorded prompt keeps them."""
    tags = [(m.group(1).strip(), (m.group(2) or "").strip()) for m in _LORA_TAG.finditer(prompt)]
    if not tags:
        return prompt, []
    stripped = re.sub(r"\s{2,}", " ", _LORA_TAG.sub(" ", prompt)).strip(" ,")
    return stripped, tags
