"""Prompt enhancement: a chat model (any OpenAI-compatible endpoint) rewrites a short prompt into a detailed one in
the style its model family reads, the way DALL-E 3 rewrites every prompt. Off unless a chat model is configured;
a failure or a timeout of the chat model leaves the prompt as it was, with a warning, and never fails the image."""

from __future__ import annotations

import logging

from .catalog import ModelSpec
from .prompts import is_weighted

log = logging.getLogger("easel.enhance")
SHORT_WORDS = 25  # a prompt of fewer words is "short" (EASEL_ENHANCE_PROMPTS=short)

_INSTRUCTIONS = {
    "tags": ("You rewrite image prompts for Stable Diffusion (SD 1.5, SDXL), which reads comma-separated visual "
             "phrases: the subject first, then its setting, lighting, composition, medium and style. At most 60 "
             "words."),
    "prose": ("You rewrite image prompts for a model that reads natural language (FLUX, Stable Diffusion 3, "
              "Qwen-Image): one to three concrete sentences on the subject, its setting, lighting, composition "
              "and style. At most 90 words."),
}
_RULES = ("Keep every element of the original and what it means (subjects, counts, colours, positions, any text "
          "to be drawn, in its own words); add detail, not new subjects. Answer with the prompt alone: no preface, "
          "no quotes, no notes.")


class PromptEnhancer:
    """One chat model behind an OpenAI-compatible API (`base_url`, `model`), asked with a bounded timeout and no
    retries."""

    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, timeout_s: float = 15.0,
                 mode: str = "short"):
        import openai

        self.model, self.mode, self.timeout_s = model, mode, timeout_s
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0)

    @classmethod
    def from_settings(cls, settings) -> PromptEnhancer | None:
        if not settings.prompt_enhancer_model or settings.enhance_prompts == "off":
            return None
        from .keys import get_key

        key = settings.prompt_enhancer_key or get_key(settings.keys_path, "enhancer")
        return cls(settings.prompt_enhancer_url, settings.prompt_enhancer_model, key,
                   settings.prompt_enhancer_timeout_s, settings.enhance_prompts)

    def wants(self, spec: ModelSpec, prompt: str, asked: bool | None) -> bool:
        """Whether to rewrite: asked for (true) or not (false) by the request; else, by the server's mode, a short
        prompt without A1111's weights (whose writer chose every word). Never for a family with no prompt style
        (the built-in model reads its own vocabulary only; OpenAI's models rewrite prompts themselves)."""
        if asked is False or not spec.family.prompt_style or not prompt.strip():
            return False
        if asked:
            return True
        return self.mode == "all" or (len(prompt.split()) < SHORT_WORDS and not is_weighted(prompt))

    def rewrite(self, spec: ModelSpec, prompt: str) -> str:
        """The detailed prompt; raises on any failure of the chat model (its caller falls back)."""
        answer = self.client.chat.completions.create(
            model=self.model, temperature=0.7, max_tokens=200,
            messages=[{"role": "system", "content": f"{_INSTRUCTIONS[spec.family.prompt_style]} {_RULES}"},
                      {"role": "user", "content": prompt}])
        text = (answer.choices[0].message.content or "").strip().split("\n\n")[0].strip().strip('"').strip()
        if not text:
            raise ValueError("the chat model answered with no text")
        return text[:spec.family.max_prompt_chars]
