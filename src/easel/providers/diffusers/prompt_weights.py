"""Prompts in A1111's emphasis syntax (`(word:1.3)`, `[word]`, `BREAK`) or longer than the text encoder's 77
tokens, as embeddings for the pipeline call."""

from __future__ import annotations

from typing import Any


def weigh_prompts(pipe, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Prompts in A1111's emphasis syntax (`(word:1.3)`, `[word]`, `BREAK`) or longer than the text encoder's 77
    tokens, as embeddings: compel encodes each chunk of 75 tokens and weighs its words; A1111's syntax is read by
    `prompt_weights` and handed to compel as compel's own prompt objects (compel's text syntax is another).
    Prompts that need neither go to the pipeline as text, as before."""
    from ...prompts import prompt_weights

    prompts, negatives = kwargs["prompt"], kwargs.get("negative_prompt")
    xl = getattr(pipe, "text_encoder_2", None) is not None
    zero_negative = negatives is None and xl and pipe.config.force_zeros_for_empty_prompt  # as the pipeline does
    chunked = {text: prompt_weights(text) for text in {*prompts, *(negatives or [])}}
    limit = pipe.tokenizer.model_max_length
    if all(chunks == [[(text, 1.0)]] and len(pipe.tokenizer(text).input_ids) <= limit
           for text, chunks in chunked.items()):
        return kwargs
    import torch
    from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType
    from compel.prompt_parser import Conjunction, FlattenedPrompt

    negatives = negatives or [""] * len(prompts)
    chunked.setdefault("", [[("", 1.0)]])
    manager = DiffusersTextualInversionManager(pipe)
    device = getattr(pipe, "_execution_device", pipe.device)
    hidden = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if xl
              else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    encoders = [Compel(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, returned_embeddings_type=hidden,
                       textual_inversion_manager=manager, truncate_long_prompts=False, device=device)]
    if xl:
        encoders.append(Compel(tokenizer=pipe.tokenizer_2, text_encoder=pipe.text_encoder_2, requires_pooled=True,
                               returned_embeddings_type=hidden, textual_inversion_manager=manager,
                               truncate_long_prompts=False, device=device))

    def encode(text: str):
        chunks = chunked[text]
        prompt = Conjunction([FlattenedPrompt([(t, w) for t, w in chunk if t] or [("", 1.0)]) for chunk in chunks])
        per_encoder = [c.build_conditioning_tensor_for_conjunction(prompt)[0] for c in encoders]
        plain = " ".join("".join(t for t, _ in chunk) for chunk in chunks)
        return per_encoder, encoders[-1].conditioning_provider.get_pooled_embeddings([plain]) if xl else None

    texts = [*prompts, *negatives]
    with torch.no_grad():
        encoded = {text: encode(text) for text in set(texts)}
        # as long as the longest (padded with the empty prompt's chunk), per encoder; then the encoders side by side
        columns = [encoders[i].pad_conditioning_tensors_to_same_length([encoded[t][0][i] for t in texts])
                   for i in range(len(encoders))]
    embeds = torch.cat([torch.cat(row, dim=-1) for row in zip(*columns)])
    out = {k: v for k, v in kwargs.items() if k not in ("prompt", "negative_prompt")}
    out["prompt_embeds"], out["negative_prompt_embeds"] = embeds[:len(prompts)], embeds[len(prompts):]
    if xl:
        out["pooled_prompt_embeds"] = torch.cat([encoded[t][1] for t in prompts])
        out["negative_pooled_prompt_embeds"] = torch.cat([encoded[t][1] for t in negatives])
    if zero_negative:
        out["negative_prompt_embeds"] = torch.zeros_like(out["negative_prompt_embeds"])
        out["negative_pooled_prompt_embeds"] = torch.zeros_like(out["negative_pooled_prompt_embeds"])
    return out
