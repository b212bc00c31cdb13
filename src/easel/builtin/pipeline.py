"""The built-in model's pipeline: a small text-to-image diffusion model, with image-to-image and inpainting, loaded
with `ShapesPipeline.from_pretrained(folder)` like any diffusers pipeline. Version 1 denoises pixels; a folder with a
`vae` (version 2) denoises that autoencoder's latents and decodes them, as Stable Diffusion does."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from .captions import (LINKS, PLACES, SHAPES, WORD, ignored_warning, named_backgrounds, parse_layout,
                       read_caption, split_known_words)


def layout_maps(texts: list[str], size: int, channels: int = 2) -> torch.Tensor:
    """(len(texts), channels, size, size): 1 inside each placed shape's region, 0 elsewhere."""
    maps = torch.zeros(len(texts), channels, size, size)
    centres = (torch.arange(size) + 0.5) / size
    for i, text in enumerate(texts):
        for c, box in enumerate(parse_layout(text)[:channels]):
            if box is None:
                continue
            x0, y0, x1, y1 = box
            inside_x = (centres >= x0) & (centres <= x1)
            inside_y = (centres >= y0) & (centres <= y1)
            maps[i, c] = (inside_y[:, None] & inside_x[None, :]).float()
    return maps


_SHARED_WORDS = {"a", "an", "the", "on", "at", "in", "of", "to", "with", "background", "above", "below", "left",
                 "right", "top", "bottom", "center"}


def phrase_tokens(texts: list[str], length: int) -> torch.Tensor:
    """(len(texts), 2, length): 1 at the token positions of the first and of the second shape's own words (colour,
    kind, size) in a two-shape caption, after <bos>; 0 elsewhere, and everywhere for a caption of one shape. The
    background's colour (the word before "background") and the layout words are shared."""
    out = torch.zeros(len(texts), 2, length)
    for i, text in enumerate(texts):
        words = WORD.findall(text.lower())
        relation = next((j for j, w in enumerate(words) if w in ("above", "below")), None)
        if relation is None and "of" in words:
            relation = next((j for j, w in enumerate(words) if w == "to" and words[j + 1:j + 4][-1:] == ["of"]),
                            None)
        if relation is None:
            continue
        background = {j - 1 for j, w in enumerate(words) if w == "background"}
        for j, word in enumerate(words):
            if word not in _SHARED_WORDS and j not in background and j != relation and j + 1 < length:
                out[i, 0 if j < relation else 1, j + 1] = 1
    return out


class RegionAttnProcessor(AttnProcessor2_0):
    """Cross-attention in which the pixels of each shape's layout region do not see the other shape's words, so
    that "a red circle above a blue square" binds red and circle to the upper half (regional prompting). The words
    still carry colour, kind and size only through the text encoder. `region` = {side: attention bias}, from
    `region_kwargs`, passed as `cross_attention_kwargs`; self-attention and captions without two shapes are
    unchanged."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 region: dict[int, torch.Tensor] | None = None, *args, **kwargs):
        if encoder_hidden_states is not None and region and hidden_states.ndim == 3:
            bias = region[math.isqrt(hidden_states.shape[1])].to(hidden_states.dtype)
            attention_mask = bias if attention_mask is None else attention_mask + bias
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def region_kwargs(texts: list[str], layout: torch.Tensor, length: int) -> dict:
    """The UNet's `cross_attention_kwargs` for region-restricted cross-attention (see RegionAttnProcessor): an
    attention bias (-inf where a region's pixel meets the other shape's words) at each of the UNet's sides, made
    once for all the steps; none where no caption has two shapes."""
    tokens = phrase_tokens(texts, length).to(layout.device, layout.dtype)
    if not tokens.any():
        return {"region": None}
    biases, side = {}, layout.shape[-1]
    while side >= 1:
        maps = torch.nn.functional.adaptive_max_pool2d(layout[:, :2], side).flatten(2)  # (B, 2, HW)
        blocked = maps[:, 0, :, None] * tokens[:, 1, None, :] + maps[:, 1, :, None] * tokens[:, 0, None, :]
        biases[side] = torch.zeros_like(blocked).masked_fill(blocked > 0, float("-inf"))
        side //= 2
    return {"region": biases}


@dataclasses.dataclass
class ShapesPipelineOutput(BaseOutput):
    """Images, the prompt words that the model's vocabulary does not know (ignored, one list per image), the
    words that the model chose where a caption left them out (one list per image; empty for version 1), and the
    caption as the model read it where `read_caption` put its words in another order (one per image; "" where it
    did not)."""

    images: list[PIL.Image.Image] | np.ndarray
    ignored_words: list[list[str]]
    chosen_words: list[list[str]] = dataclasses.field(default_factory=list)
    read_as: list[str] = dataclasses.field(default_factory=list)

    def records(self, split) -> list[tuple[list[str], dict[str, Any], list[dict[str, Any]]]]:
        """Each request's warnings, details and each of its images' own details, as Easel records them (`split`
        turns a list per image into one per request): the words it ignored and the caption as it read it (the
        request's), the words the model chose (each image's own)."""
        n, out = len(self.images), []
        for ignored, chosen, read in zip(split(self.ignored_words or [[]] * n), split(self.chosen_words or [[]] * n),
                                         split(self.read_as or [""] * n)):
            words = list(dict.fromkeys(w for group in ignored for w in group))
            details = {k: v for k, v in {"ignored_words": words, "read_as": read[0] if read else ""}.items() if v}
            own = [{"chosen_words": picked} if picked else {} for picked in chosen]
            out.append((ignored_warning(words), details, own))
        return out


class ShapesPipeline(DiffusionPipeline):
    """Easel's built-in model: coloured shapes from captions, denoised in pixels (version 1) or in its autoencoder's
    latents (version 2); see shared/specs/builtin-model.md."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]
    supports_image_input = True  # one pipeline does text-to-image, image-to-image and inpainting

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerFast,
        scheduler: DPMSolverMultistepScheduler,
        vae: AutoencoderKL | None = None,
        region_attention: bool = False,
        palette: dict[str, list[int]] | None = None,
        guidance_interval: float = 1.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, vae=vae)
        # a model trained with region-restricted cross-attention (version 2) says so in its model_index.json
        self.register_to_config(region_attention=region_attention)
        # a model whose world is drawn in a fixed palette (version 2) names its colours: its pictures keep to them
        self.register_to_config(palette={name: list(map(int, c)) for name, c in palette.items()} if palette else None)
        # the share of a call's steps, the noisiest first, that classifier-free guidance runs in; the later ones
        # follow the caption alone, in one denoiser pass instead of two (version 3: 0.5; guided to the end, the
        # outlines bent: circles drew as rounded diamonds)
        self.register_to_config(guidance_interval=float(guidance_interval))
        if region_attention:
            unet.set_attn_processor(RegionAttnProcessor())
        for module in (unet, vae):  # its small convolutions run 13% (denoiser) to 26% (decoder) faster on a CPU
            if module is not None:
                module.to(memory_format=torch.channels_last)
        self._interrupt = False

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Slicing would replace the region-restricted attention processor: with one, the (small) attention stays
        whole."""
        if not self.config.get("region_attention"):
            super().enable_attention_slicing(slice_size)

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def native_size(self) -> int:
        """The side of the pictures it makes: its latents' times the autoencoder's factor (1 without one)."""
        if self.vae is None:
            return self.latent_size
        return self.latent_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pictures (-1..1) as the latents the UNet denoises (the pictures themselves without an autoencoder)."""
        if self.vae is None:
            return pixels
        return self.vae.encode(pixels).latent_dist.mode() * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as pictures (-1..1). The latents are extended by one (repeated) latent pixel on each side and
        the picture cropped back: the decoder's zero padding otherwise tints the outermost row of pixels."""
        if self.vae is None:
            return latents.clamp(-1, 1)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        padded = torch.nn.functional.pad(latents / self.vae.config.scaling_factor, (1, 1, 1, 1), mode="replicate")
        pixels = self.vae.decode(padded).sample.clamp(-1, 1)
        return pixels[..., factor:-factor, factor:-factor]

    def keep_to_palette(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pictures (0..1) whose every pixel is the nearest palette colour that the picture is drawn in nearby: a
        colour counts where a pixel within 6 lies within 24 of it (the spec's tolerance) and it covers at least
        0.2% of the picture. A flat-colour world's edges then stay hard instead of blending over the decoder's few
        pixels of uncertainty, and an edge between two colours never takes a third's. Without a palette in the
        model's config the pixels stay as they are, and so does a pixel with no such colour nearby."""
        if not self.config.get("palette"):
            return pixels
        palette = torch.tensor(list(self.config.palette.values()), dtype=torch.float32, device=pixels.device) / 255
        b, _, h, w = pixels.shape
        flat = pixels.float().permute(0, 2, 3, 1).reshape(b, h * w, 3)
        dist = torch.cdist(flat, palette.expand(b, -1, -1))  # (b, pixels, colours)
        drawn = dist <= 24 / 255
        drawn &= drawn.sum(1, keepdim=True) >= 0.002 * h * w
        used = drawn.any(1).any(0).nonzero().flatten()  # the colours some picture is drawn in (two or three of eight)
        if used.numel() == 0:
            return pixels
        maps = drawn[..., used].transpose(1, 2).reshape(b, -1, h, w).float()
        pool = torch.nn.functional.max_pool2d  # 13x13, as a row and a column (7x less work)
        nearby = (pool(pool(maps, (1, 13), 1, (0, 6)), (13, 1), 1, (6, 0)) > 0).flatten(2).transpose(1, 2)
        nearest = used[dist[..., used].masked_fill(~nearby, float("inf")).argmin(-1)]  # (b, pixels)
        snapped = torch.where(nearby.any(-1, keepdim=True), palette[nearest], flat)
        return snapped.reshape(b, h, w, 3).permute(0, 3, 1, 2).to(pixels.dtype)

    def named_background(self, words: list[str]) -> str | None:
        """The background colour that a caption's words name, if any."""
        return next(iter(named_backgrounds(words, self.config.palette)), None)

    def choose_left_out(self, text: str, generator: torch.Generator | None) -> tuple[str, list[str]]:
        """A caption with what it leaves out chosen, for a model with a palette (version 2), drawn from the image's
        generator: a single shape's position among the five, or where the first of two shapes lies from the second
        among the four relations ("a red circle and a blue square": "and" gives way to it), then the background
        among the colours the caption does not name. Left to the denoiser, a small shape with neither position nor
        background often dissolved into a plain field, and two shapes with no relation were drawn as such 1 time
        in 32; chosen here, they are drawn like a caption that names them. Returns the caption and the words
        added."""
        if not self.config.get("palette"):
            return text, []
        words = text.split()
        kinds = [j for j, w in enumerate(words) if w in SHAPES]
        placed = parse_layout(text) != (None, None)
        chosen = []
        if len(kinds) == 1 and not placed:
            chosen.append(PLACES[_draw(len(PLACES), generator)])
            ends_on_background = words[-4:-2] == ["on", "a"] and words[-1] == "background"
            at = len(words) - 4 if ends_on_background else len(words)  # before a background named at the end
            words[at:at] = chosen[-1].split()
        elif len(kinds) == 2 and not placed:
            chosen.append(LINKS[_draw(len(LINKS), generator)])
            first, rest = words[:kinds[0] + 1], words[kinds[0] + 1:]
            words = [*first, *chosen[-1].split(), *(rest[1:] if rest[:1] in (["and"], ["with"]) else rest)]
        if self.named_background(words) is None:
            free = [c for c in self.config.palette if c not in words]
            chosen.append(f"on a {free[_draw(len(free), generator)]} background")
            words += chosen[-1].split()
        return (" ".join(words), chosen) if chosen else (text, [])

    def steer_background(self, text: str, negative: str) -> str:
        """The negative prompt for `text`, for a model that names its palette (version 2). Where the caption names
        its background, the negative prompt also names it ("a white background"): guidance then pushes towards
        what the caption adds to its background, the shapes, and a small shape is not lost in it. A caption that
        still names none (from text, `choose_left_out` has named one; starting from an image, nothing is chosen)
        gets a background in each of its colours in the negative prompt, so that guidance steers away from them."""
        if not self.config.get("palette"):
            return negative
        colours = self.config.palette
        words = WORD.findall(text)
        named = self.named_background(words)
        if named:
            steer = f"a {named} background"
        else:
            steer = " ".join(f"on a {w} background" for w in dict.fromkeys(words) if w in colours)
        return f"{negative} {steer}".strip()

    @property
    def layout_channels(self) -> int:
        return int(self.unet.config.in_channels) - int(self.unet.config.out_channels)

    @property
    def vocabulary(self) -> set[str]:
        return {w for w in self.tokenizer.get_vocab() if not w.startswith("<")}

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def check_inputs(self, prompt, negative_prompt, num_inference_steps, guidance_scale, strength, image, mask_image):
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ValueError(f"`prompt` has to be a string or a non-empty list of strings but is {prompt!r}.")
        if negative_prompt is not None and isinstance(prompt, list) and isinstance(negative_prompt, list):
            if len(negative_prompt) != len(prompt):
                raise ValueError(
                    f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {len(prompt)}."
                )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` has to be a positive integer but is {num_inference_steps!r}.")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` has to be >= 0 but is {guidance_scale}.")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`strength` has to be in (0, 1] but is {strength}.")
        if mask_image is not None and image is None:
            raise ValueError("`mask_image` needs an `image` to repaint.")

    def _to_pixels(self, image: Any, n: int) -> torch.Tensor:
        """PIL image(s) -> a (n, 3, S, S) tensor in [-1, 1] at the native size."""
        images = image if isinstance(image, list) else [image]
        size = self.native_size
        arrays = [
            np.asarray(im.convert("RGB").resize((size, size), PIL.Image.BICUBIC), dtype=np.float32) / 127.5 - 1
            for im in images
        ]
        t = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        if t.shape[0] == 1 and n > 1:
            t = t.expand(n, -1, -1, -1)
        elif t.shape[0] != n:
            raise ValueError(f"`image` has {t.shape[0]} images but {n} are being generated.")
        return t.to(self.device, self.unet.dtype)

    def _to_mask(self, mask_image: Any, n: int, size: int) -> torch.Tensor:
        """White (or opaque-marked) pixels = repaint; returns (n, 1, size, size) with 1 where the model may paint."""
        mask = np.asarray(mask_image.convert("L").resize((size, size), PIL.Image.BILINEAR), dtype=np.float32)
        # a pixel (or latent) is repainted if any part of it is marked, so nothing marked stays unpainted
        t = torch.from_numpy((mask > 0).astype(np.float32))[None, None]
        return t.expand(n, -1, -1, -1).to(self.device, self.unet.dtype)

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        image: PIL.Image.Image | list[PIL.Image.Image] | None = None,
        mask_image: PIL.Image.Image | None = None,
        strength: float = 1.0,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        return_dict: bool = True,
    ):
        """Generate images; with `image`, start from it (`strength` < 1 keeps its layout); with `mask_image`
        too, repaint only the white part of the mask and keep the rest of `image`."""
        # 1. check inputs, and read the captions (the words a caption leaves out are chosen after its noise)
        self.check_inputs(prompt, negative_prompt, num_inference_steps, guidance_scale, strength, image, mask_image)
        self._interrupt = False
        texts, negs, ignored = self._captions(prompt, negative_prompt, num_images_per_prompt)
        batch, size = len(texts), self.latent_size
        noise = _randn((batch, self.unet.config.out_channels, size, size), generator, self.device, self.unet.dtype)
        texts, negs, chosen, read_as = self._read(texts, negs, generator if image is None else None, image is None)

        # 2. encode prompt (the unconditional half is the negative prompt, "" when none is given)
        cond, layout, regions = self._conditioning(texts, negs, do_cfg := guidance_scale > 1.0)

        # 3. prepare timesteps (image to image: the last `strength` share of them)
        timesteps = self._timesteps(num_inference_steps, strength if image is not None and mask_image is None else 1)
        # 4. prepare latents (version 1: the latents are the picture)
        original_pixels, original = self._original(image, batch)
        mask = self._to_mask(mask_image, batch, size) if mask_image is not None else None
        if original is not None and mask is None and strength < 1.0:
            latents = self.scheduler.add_noise(original, noise, timesteps[:1].repeat(batch))
        else:
            latents = noise * self.scheduler.init_noise_sigma

        # 5. denoising loop, guided in the model's interval; an edit keeps its unmasked part on the original's noisy
        # trajectory
        guided = math.ceil(len(timesteps) * self.config.get("guidance_interval", 1.0)) if do_cfg else -1
        for i, t in enumerate(timesteps):
            if self.interrupt:
                break
            if i == guided:  # from here on the caption alone: the conditional half of everything
                cond, layout, regions = _conditional_half(cond, layout, regions, batch)
            latents = self._step(latents, t, cond, layout, regions, guidance_scale if i < guided else None)
            if mask is not None:
                latents = self._keep_unmasked(latents, mask, original, noise, timesteps, i)
            if callback_on_step_end is not None:
                tensors = {"latents": latents, "noise": noise}
                out = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                latents = out.pop("latents", latents)
        # 6. decode and post-process
        images = self._pictures(latents, mask, mask_image, original_pixels, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, ignored
        return ShapesPipelineOutput(images=images, ignored_words=ignored, chosen_words=chosen, read_as=read_as)

    def _keep_unmasked(self, latents, mask, original, noise, timesteps, i: int):
        """An edit's latents after step `i`: the masked part denoised, the rest the original's on its noisy
        trajectory (the original itself after the last step)."""
        known = original if i + 1 == len(timesteps) else \
            self.scheduler.add_noise(original, noise, timesteps[i + 1 : i + 2].repeat(len(latents)))
        return mask * latents + (1 - mask) * known

    def _timesteps(self, steps: int, strength: float):
        self.scheduler.set_timesteps(steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if strength < 1.0:
            start = steps - max(1, int(round(steps * strength)))
            timesteps = timesteps[start:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start)
        return timesteps

    def _captions(self, prompt, negative_prompt, per_prompt: int) -> tuple[list[str], list[str], list[list[str]]]:
        """One caption and negative per image, in the model's vocabulary, and the words each left out."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = list(negative_prompt)
        vocabulary = self.vocabulary
        cleaned = [split_known_words(p, vocabulary) for p in prompts]
        ignored = [words for _, words in cleaned for _ in range(per_prompt)]
        texts = [text for text, _ in cleaned for _ in range(per_prompt)]
        negs = [split_known_words(n, vocabulary)[0] for n in negatives for _ in range(per_prompt)]
        return texts, negs, ignored

    def _read(self, texts: list[str], negs: list[str], generator, choose: bool):
        """The captions as the model reads them, with the words they leave out chosen (text to image only), the
        negatives steered away from the background, the chosen words and how each caption was read."""
        chosen = [[] for _ in texts]
        read = [read_caption(text) for text in texts]
        read_as = [new if new != text else "" for new, text in zip(read, texts)]
        texts = read
        if choose:
            gens = generator if isinstance(generator, list) else [generator] * len(texts)
            texts, chosen = map(list, zip(*(self.choose_left_out(t, g) for t, g in zip(texts, gens))))
        negs = [self.steer_background(text, neg) for text, neg in zip(texts, negs)]
        return texts, negs, chosen, read_as

    def _conditioning(self, texts: list[str], negs: list[str], do_cfg: bool):
        """The text encoding, the layout maps and the region attention's arguments (negatives first with CFG)."""
        cond = self.encode_prompt(texts)
        layout = layout_maps(texts, self.latent_size, self.layout_channels).to(self.device, self.unet.dtype)
        if do_cfg:
            cond = torch.cat([self.encode_prompt(negs), cond])
            # the unconditional half has no layout, so guidance pushes towards the caption's layout too
            layout = torch.cat([torch.zeros_like(layout), layout])
        regions = None
        if self.config.get("region_attention") and self.layout_channels >= 2:
            regions = region_kwargs((negs if do_cfg else []) + texts, layout, cond.shape[1])
        return cond, layout, regions

    def _original(self, image, batch: int):
        """The input image as pixels and as latents (latents given as they are), or (None, None)."""
        if isinstance(image, torch.Tensor) and image.shape[1] == self.unet.config.out_channels:
            return None, image.to(self.device, self.unet.dtype)
        if image is None:
            return None, None
        pixels = self._to_pixels(image, batch)
        return pixels, self.encode_image(pixels)

    def _step(self, latents, t, cond, layout, regions, guidance: float | None):
        """One denoising step (`guidance` None: no classifier-free guidance)."""
        model_input = torch.cat([latents] * 2) if guidance is not None else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        if self.layout_channels:
            model_input = torch.cat([model_input, layout], dim=1)
        pred = self.unet(model_input, t, encoder_hidden_states=cond, cross_attention_kwargs=regions).sample
        if guidance is not None:
            uncond, text = pred.chunk(2)
            pred = uncond + guidance * (text - uncond)
        return self.scheduler.step(pred, t, latents).prev_sample

    def _pictures(self, latents, mask, mask_image, original_pixels, output_type: str):
        """The decoded images on the palette; outside an edit's mask, exactly the original's pixels."""
        pixels = self.keep_to_palette((self.decode_latents(latents) + 1) / 2)
        if mask is not None and original_pixels is not None:
            full = mask if self.latent_size == self.native_size else \
                self._to_mask(mask_image, len(latents), self.native_size)
            pixels = full * pixels + (1 - full) * (original_pixels + 1) / 2
        arrays = (pixels.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
        return arrays if output_type == "np" else [PIL.Image.fromarray(a) for a in arrays]


def _conditional_half(cond, layout, regions, batch: int):
    """The text encoding, layout and region biases of the captions alone, from those with the negatives first."""
    if regions is not None and regions.get("region") is not None:
        regions = {"region": {side: bias[batch:] for side, bias in regions["region"].items()}}
    return cond[batch:], layout[batch:], regions


def _draw(n: int, generator: torch.Generator | None) -> int:
    """A whole number below n from the generator (on its device), or from torch's own when there is none."""
    if generator is None:
        return int(torch.randint(n, (1,)))
    return int(torch.randint(n, (1,), generator=generator, device=generator.device))


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Noise drawn per image when given one generator per image, so a batch member equals its solo run; each draw
    on its generator's device (a CPU generator on a CUDA model: drawn on the CPU, then moved), as diffusers does."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"`generator` has {len(generator)} entries but the batch has {shape[0]} images.")
        return torch.cat([_randn((1, *shape[1:]), g, device, dtype) for g in generator])
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)
