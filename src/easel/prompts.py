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
STYLE_ALIASES = {"watercolor": "watercolour", "oil": "oil painting", "3d": "3d render", "pixel": "pixel art",
                 "photograph": "photo", "pencil": "sketch"}  # other spellings people type


def style_preset(name: str) -> str | None:
    """A style preset's name from what someone typed (any case, US spelling, a short form); None: no preset."""
    key = (name or "").strip().lower()
    key = STYLE_ALIASES.get(key, key)
    return key if key in STYLE_PRESETS else None


# DALL-E 3's `style`, for the OpenAI API's clients
OPENAI_STYLES = {"vivid": "vivid colors, dramatic lighting", "natural": "natural colors, realistic lighting"}
_CJK = re.compile(r"[\u3400-\u9fff]")


def compose_prompt(subject: str, action: str, style: str, environment: str, details: str, quality: str) -> str:
    """The prompt formula: subject, action, environment, details, style words, quality words; empty parts left
    out. `style` is a preset's name (its words are used) or words of one's own."""
    preset = style_preset(style)
    parts = [subject, action, environment, details, STYLE_PRESETS[preset] if preset else style, quality]
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


# A1111's emphasis: `(words)` x1.1, `[words]` /1.1, `(words:1.3)` x1.3, nested brackets multiply, `\(` `\)` `\[` `\]`
# `\\` literal, an unclosed bracket weighs to the end, `BREAK` starts a new 75-token chunk
_EMPHASIS = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def prompt_weights(prompt: str) -> list[list[tuple[str, float]]]:
    """A prompt in A1111's emphasis syntax as its chunks (split at `BREAK`), each a list of (text, weight) with runs
    of equal weight merged, as A1111's own parser gives them: `a (red:1.3) [cat]` -> [[('a ', 1.0), ('red', 1.3),
    (' ', 1.0), ('cat', 0.909...)]]."""
    parts: list[list] = []  # [text, weight]; a BREAK is [None, 0]
    opened_round: list[int] = []
    opened_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            if part[0] is not None:
                part[1] *= factor

    for match in _EMPHASIS.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\") and len(text) == 2:
            parts.append([text[1], 1.0])
        elif text == "(":
            opened_round.append(len(parts))
        elif text == "[":
            opened_square.append(len(parts))
        elif weight is not None and opened_round:
            try:
                scale(opened_round.pop(), float(weight))
            except ValueError:  # `(x:1.2.3)`: A1111 reads it as text, too
                parts.append([text, 1.0])
        elif text == ")" and opened_round:
            scale(opened_round.pop(), 1.1)
        elif text == "]" and opened_square:
            scale(opened_square.pop(), 1 / 1.1)
        else:
            for i, piece in enumerate(_BREAK.split(text)):
                if i:
                    parts.append([None, 0.0])
                parts.append([piece, 1.0])
    for start in opened_round:
        scale(start, 1.1)
    for start in opened_square:
        scale(start, 1 / 1.1)
    chunks: list[list[tuple[str, float]]] = [[]]
    for text, weight in parts:
        if text is None:
            chunks.append([])
        elif chunks[-1] and chunks[-1][-1][1] == weight:
            chunks[-1][-1] = (chunks[-1][-1][0] + text, weight)
        elif text or not chunks[-1]:
            chunks[-1].append((text, weight))
    return [chunk or [("", 1.0)] for chunk in chunks]


def is_weighted(prompt: str) -> bool:
    """The prompt uses A1111's emphasis (a weight other than 1, an escape or `BREAK`): its plain text is not
    itself."""
    chunks = prompt_weights(prompt)
    return len(chunks) > 1 or chunks[0] != [(prompt, 1.0)]


def unweighted(prompt: str) -> str:
    """The words of a prompt in A1111's emphasis syntax without the syntax (for a model that weighs no words)."""
    return " ".join("".join(text for text, _ in chunk).strip() for chunk in prompt_weights(prompt)).strip()
