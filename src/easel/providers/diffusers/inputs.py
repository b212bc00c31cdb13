"""A batch as a pipeline call's arguments: prompts and one seeded generator per image, steps, guidance, size, the
family's own options, the input image (and mask, or the hires fix's latents), and a fresh scheduler; a compiled
pipeline's batch grown to its bucket."""

from __future__ import annotations

from typing import Any

from ..base import Batch, bucket

# Easel scheduler name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "heun": ("HeunDiscreteScheduler", {}),
    "heun_karras": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),  # LCM-LoRA's
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),  # Hyper-SD's few-step LoRAs
}


def make_scheduler(name: str, base_config: dict[str, Any]):
    import diffusers

    cls_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config, **overrides)


def fresh_scheduler(loaded, name: str | None):
    """The request's scheduler, else the model's own, new for every call (timesteps and step state never leak
    between calls)."""
    if name:
        return make_scheduler(name, loaded.scheduler_config)
    return loaded.scheduler_class.from_config(loaded.scheduler_config)


def to_bucket(batch: Batch) -> Batch:
    """`batch` grown to the next power of two of images by copies of its last image, whose results are dropped: a
    compiled pipeline (`dynamic=False`) compiles again for every new batch shape, which would be once for every
    batch size the server forms (and torch stops compiling a function after 8 shapes); with buckets, 1, 2, 4 and 8
    images are four shapes. Each image keeps its own generator, so the images asked for are the same."""
    count = len(batch.all_seeds)
    extra = bucket(count) - count
    if not extra:
        return batch
    last = batch.requests[-1].replace(num_images=1)
    return Batch(batch.spec, [*batch.requests, *[last] * extra], [*batch.seeds, *[[batch.all_seeds[-1]]] * extra],
                 batch.latents)


def for_batch(batch: Batch, options: dict[str, Any]) -> dict[str, Any]:
    """The pipeline arguments of `batch`; `options`: the family's own options the request set (passed as they are)."""
    return {**_text_inputs(batch, options), **_image_inputs(batch)}


def _text_inputs(batch: Batch, options: dict[str, Any]) -> dict[str, Any]:
    """The arguments every mode takes: prompts and seeded generators per image, steps, guidance, size."""
    import torch

    spec, first = batch.spec, batch.first
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt for r, seeds in batch for _ in seeds],
        "num_inference_steps": first.num_inference_steps,
        spec.family.cfg_param: first.guidance_scale,
        "generator": [torch.Generator("cpu").manual_seed(s) for s in batch.all_seeds],
        "output_type": "pil",
        **options,
    }
    if not spec.family.keeps_native_size:
        kwargs.update(width=first.width, height=first.height)
    if spec.family.area_param:
        kwargs[spec.family.area_param] = first.width * first.height
    if any(r.negative_prompt for r in batch.requests):
        kwargs["negative_prompt"] = [r.negative_prompt or "" for r, seeds in batch for _ in seeds]
    return kwargs


def _image_inputs(batch: Batch) -> dict[str, Any]:
    """`image`, `strength` and (for an edit) `mask_image`, at the requested size unless the model keeps its own;
    the hires fix's upscaled latents, where the batch carries them, in place of the image.

    Several images get one copy of the input each: the image-to-image pipelines encode `image[i]` with
    `generator[i]`, and SD3's encodes an empty batch (and fails) when there is one image for several generators."""
    request, count = batch.first, len(batch.all_seeds)
    if request.mode not in ("edit", "vary"):
        return {}
    if pipeline_mode(batch) == "instruction":  # as given: the pipeline sizes its inputs as its model was trained
        images = [image.convert("RGB") for image in (request.image, *request.references)]
        return {"image": images if len(images) > 1 else images[0]}
    strength = request.strength if request.strength is not None else 1.0
    if batch.latents is not None:  # taken as they are
        latents = batch.latents[None]
        return {"image": latents.repeat(count, 1, 1, 1) if count > 1 else latents, "strength": strength}
    image = request.image.convert("RGB")
    if not batch.spec.family.keeps_native_size:
        image = image.resize((request.width, request.height))
    kwargs = {"image": [image] * count if count > 1 else image, "strength": strength}
    if request.mode == "edit" and request.mask is not None:
        kwargs["mask_image"] = request.mask.convert("L").resize(image.size)
    return kwargs


def pipeline_mode(batch: Batch) -> str:
    """The request's mode, or "instruction" for an edit without a mask on a model that edits by instruction."""
    request = batch.first
    if request.mode == "edit" and request.mask is None and batch.spec.family.edits == "instruction":
        return "instruction"
    return request.mode


def total_steps(batch: Batch, kwargs: dict[str, Any]) -> int:
    """The steps the call runs: image-to-image runs the last `strength` share of them."""
    total = batch.first.num_inference_steps
    if "strength" in kwargs and "mask_image" not in kwargs:
        total = max(1, int(round(total * kwargs["strength"])))
    return total
