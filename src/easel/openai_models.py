"""OpenAI's image models and the limits OpenAI enforces for each: used by the server (to answer as OpenAI would)
and by the OpenAI provider (to refuse early what OpenAI would refuse)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequestError
from .types import parse_size


@dataclass(frozen=True)
class OpenAIModelRules:
    """The limits OpenAI enforces for one of its model names."""

    max_prompt: int
    max_n: int
    sizes: frozenset[str] | None  # None: any WxH with sides divisible by 16 and aspect 1:3..3:1 (and auto)
    qualities: frozenset[str]
    styles: frozenset[str] | None


RULES = {
    "dall-e-2": OpenAIModelRules(1000, 10, frozenset({"256x256", "512x512", "1024x1024"}), frozenset({"standard"}),
                                 None),
    "dall-e-3": OpenAIModelRules(4000, 1, frozenset({"1024x1024", "1792x1024", "1024x1792"}),
                                 frozenset({"standard", "hd"}), frozenset({"vivid", "natural"})),
    "gpt-image": OpenAIModelRules(32000, 10, None, frozenset({"low", "medium", "high", "auto"}), None),
}
OPENAI_MODEL_NAMES = ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"]


def rules_for(model: str | None) -> tuple[str, OpenAIModelRules] | None:
    if not model:
        return None
    if model in RULES:
        return model, RULES[model]
    if model.startswith("gpt-image"):
        return "gpt-image", RULES["gpt-image"]
    return None


def check_openai_rules(name: str, rules: OpenAIModelRules, req) -> None:
    prompt = getattr(req, "prompt", None)
    if prompt is not None and len(prompt) > rules.max_prompt:
        raise InvalidRequestError(
            f"`prompt` is {len(prompt)} characters, over the {rules.max_prompt} that {name} takes.", param="prompt")
    if req.n is not None and not 1 <= req.n <= rules.max_n:
        raise InvalidRequestError(f"`n` must be between 1 and {rules.max_n} for {name} but is {req.n}.", param="n")
    if req.size is not None:
        if rules.sizes is not None and req.size not in rules.sizes:
            raise InvalidRequestError(
                f"`size` must be one of {', '.join(sorted(rules.sizes))} for {name} but is {req.size!r}.",
                param="size")
        if rules.sizes is None and req.size != "auto":
            w, h = parse_size(req.size)
            if w % 16 or h % 16 or not 1 / 3 <= w / h <= 3:
                raise InvalidRequestError(
                    f"`size` for {name} must have sides divisible by 16 and an aspect between 1:3 and 3:1 "
                    f"but is {req.size!r}.", param="size")
    quality = getattr(req, "quality", None)
    if quality is not None and quality not in rules.qualities:
        raise InvalidRequestError(
            f"`quality` must be one of {', '.join(sorted(rules.qualities))} for {name} but is {quality!r}.",
            param="quality")
    style = getattr(req, "style", None)
    if style is not None and rules.styles is None:
        raise InvalidRequestError(f"`style` is not supported by {name}.", param="style")
