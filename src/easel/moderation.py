"""The content policy for prompts, applied in the core so that every front (library, CLI, server, UI) enforces it.

Word and pattern lists per category; `moderation="auto"` applies all of them, `"low"` (as OpenAI defines it: less
restrictive) only the categories that are never allowed. A refusal names its category, never a silent black image.
"""

from __future__ import annotations

import re

from .errors import ContentPolicyError, InvalidRequestError

LEVELS = ("auto", "low")

# category -> patterns; matched case-insensitively on word boundaries
_ALWAYS = {
    "sexual content involving minors": [
        r"(child|kid|minor|underage|preteen|schoolgirl|schoolboy|toddler|infant|teen)\w*\W+(\w+\W+){0,3}"
        r"(nude|naked|sexual|sexy|porn|erotic|lewd|nsfw)",
        r"(nude|naked|sexual|sexy|porn|erotic|lewd|nsfw)\w*\W+(\w+\W+){0,3}"
        r"(child|kid|minor|underage|preteen|schoolgirl|schoolboy|toddler|infant)",
        r"loli\w*", r"shota\w*", r"cp\s+porn",
    ],
}
_AUTO = {
    "sexual content": [r"porn\w*", r"nude", r"naked", r"nsfw", r"hentai", r"explicit sex", r"sex act\w*",
                       r"genital\w*", r"erotic\w*", r"topless", r"xxx"],
    "graphic violence": [r"gore", r"gory", r"decapitat\w*", r"dismember\w*", r"disembowel\w*", r"mutilat\w*",
                         r"beheading", r"torture\w*", r"massacre", r"mass shooting", r"blood\s*bath"],
    "self-harm": [r"self[- ]harm\w*", r"suicid\w*", r"cutting (my|her|his|their) wrists?", r"slit(ting)? wrists?",
                  r"hang(ing)? (my|him|her|them)sel(f|ves)"],
    "real public figures": [r"donald trump", r"joe biden", r"barack obama", r"kamala harris", r"vladimir putin",
                            r"xi jinping", r"elon musk", r"taylor swift", r"pope francis", r"king charles",
                            r"emmanuel macron", r"narendra modi", r"volodymyr zelensky"],
    "protected characters": [r"mickey mouse", r"pikachu", r"spider[- ]?man", r"darth vader", r"harry potter",
                             r"super mario", r"batman", r"superman", r"elsa from frozen", r"hello kitty"],
}


def _compile(table: dict[str, list[str]]) -> list[tuple[str, re.Pattern]]:
    return [(cat, re.compile(r"\b(" + "|".join(pats) + r")\b", re.IGNORECASE)) for cat, pats in table.items()]


_ALWAYS_RE = _compile(_ALWAYS)
_AUTO_RE = _compile(_AUTO)


def check_prompt(prompt: str, level: str = "auto", *, param: str = "prompt") -> None:
    """Raise ContentPolicyError naming the category when `prompt` breaks the policy at `level`."""
    if level not in LEVELS:
        raise InvalidRequestError(f"`moderation` must be one of {', '.join(LEVELS)} but is {level!r}.",
                                  param="moderation")
    rules = _ALWAYS_RE + (_AUTO_RE if level == "auto" else [])
    for category, pattern in rules:
        if pattern.search(prompt or ""):
            raise ContentPolicyError(
                f"The {param} was refused by the content policy (category: {category}).", param=param
            )
