"""Whether an add-on was made for a model's family, read from files alone (configs and safetensors headers, no
weights): a ControlNet, a LoRA or an IP-Adapter made for another family is refused before its job is queued,
naming both families, instead of failing inside the pipeline with a shape error. Where the files cannot tell (a
layout this module does not read, a model not downloaded yet), nothing is refused: the pipeline is the judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# a ControlNet's class -> the denoiser class it steers
CONTROLNET_FOR = {"ControlNetModel": "UNet2DConditionModel", "SD3ControlNetModel": "SD3Transformer2DModel",
                  "FluxControlNetModel": "FluxTransformer2DModel"}
UNET_FAMILIES = {768: "SD 1.5", 1024: "SD 2"}  # by cross-attention width, for UNets without SDXL's time embedding


def read_config(folder: Path | None) -> dict[str, Any] | None:
    """A model folder's `config.json`, or None where there is none to read."""
    try:
        return json.loads((folder / "config.json").read_text()) if folder is not None else None
    except (OSError, ValueError):
        return None


def denoiser_config(pipeline_folder: Path | None) -> dict[str, Any] | None:
    """The config of a pipeline folder's denoiser (its UNet or transformer)."""
    if pipeline_folder is None:
        return None
    return read_config(pipeline_folder / "unet") or read_config(pipeline_folder / "transformer")


def describe(config: dict[str, Any]) -> str:
    """A denoiser's or a ControlNet's family, as a user knows it, with the width that tells families apart."""
    cls = config.get("_class_name", "")
    if cls.startswith(("Flux", "SD3")):
        width = config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0)
        return f"{'FLUX' if cls.startswith('Flux') else 'SD 3'} (width {width})"
    dim = config.get("cross_attention_dim")
    family = "SDXL" if config.get("addition_embed_type") == "text_time" else UNET_FAMILIES.get(dim, "SD 1.5/2-type")
    return f"{family} (cross-attention {dim})"


def _signature(config: dict[str, Any]) -> tuple:
    cls = config.get("_class_name", "")
    if cls.startswith(("Flux", "SD3")):
        return (config.get("num_attention_heads"), config.get("attention_head_dim"),
                config.get("joint_attention_dim"), config.get("in_channels"))
    return config.get("cross_attention_dim"), config.get("addition_embed_type")


def controlnet_misfit(name: str, controlnet: dict[str, Any] | None, denoiser: dict[str, Any] | None,
                      model: str) -> str | None:
    """Why the ControlNet `name` cannot steer `model`, or None where it can (or the files cannot tell)."""
    if controlnet is None or denoiser is None:
        return None
    steers = CONTROLNET_FOR.get(controlnet.get("_class_name", ""))
    if steers is None or denoiser.get("_class_name") not in CONTROLNET_FOR.values():
        return None  # a kind this check does not know: the pipeline is the judge
    if steers == denoiser["_class_name"] and _signature(controlnet) == _signature(denoiser):
        return None
    return f"The ControlNet {name!r} was made for {describe(controlnet)}, and {model} is {describe(denoiser)}."


def _header(path: Path) -> dict[str, list[int]] | None:
    """A safetensors file's tensor names and shapes, read from its header alone; None for another kind of file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            return {key: f.get_slice(key).get_shape() for key in f.keys()}
    except Exception:  # noqa: BLE001 - not a safetensors file: loading it says so
        return None


def _made_for_width(widths: set[int]) -> str:
    width = ", ".join(str(w) for w in sorted(widths))
    family = {2048: "SDXL", **UNET_FAMILIES}.get(next(iter(widths))) if len(widths) == 1 else None
    return f"{family} (cross-attention {width})" if family else f"a model with cross-attention {width}"


def lora_misfit(name: str, path: Path, denoiser: dict[str, Any] | None, model: str,
                second_encoder: bool) -> str | None:
    """Why the LoRA file `path` cannot change `model`, or None where it can (or its header cannot tell): its
    cross-attention keys take another width than the model's UNet, it has weights for a second text encoder the
    model lacks, or it is for a UNet and the model has a transformer (or the other way round)."""
    shapes = _header(path) if denoiser is not None else None
    if shapes is None:
        return None
    widths = {shape[-1] for k, shape in shapes.items()
              if "attn2" in k and "to_k" in k and ("lora_A" in k or "lora_down" in k)}
    made_for = None
    if denoiser.get("_class_name") == "UNet2DConditionModel":
        if any(k.startswith(("transformer.", "lora_transformer_")) for k in shapes):
            made_for = "a transformer model (FLUX, SD 3 and the like)"
        elif widths and widths != {denoiser.get("cross_attention_dim")}:
            made_for = _made_for_width(widths)
        elif not second_encoder and any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in shapes):
            made_for = "a model with two text encoders (SDXL)"
    elif any(k.startswith("unet.") for k in shapes):  # not kohya's `lora_unet_`: its FLUX LoRAs use it too
        made_for = "a UNet model (SD 1.5, SDXL and the like)"
    if made_for is None:
        return None
    return f"The LoRA {name!r} was made for {made_for}, and {model} is {describe(denoiser)}."


def ip_adapter_misfit(name: str, folder: Path | None, denoiser: dict[str, Any] | None, model: str) -> str | None:
    """Why the IP-Adapter in `folder` cannot prompt `model`, or None where it can (or its files cannot tell): the
    key and value projections of its image tokens take another width than the UNet's cross-attention."""
    weights = sorted(folder.glob("*.safetensors")) if folder is not None and denoiser is not None else []
    shapes = _header(weights[0]) if len(weights) == 1 else None
    if shapes is None or denoiser.get("_class_name") != "UNet2DConditionModel":
        return None
    widths = {shape[-1] for k, shape in shapes.items() if k.endswith("to_k_ip.weight")}
    if not widths or widths == {denoiser.get("cross_attention_dim")}:
        return None
    return f"The IP-Adapter {name!r} was made for {_made_for_width(widths)}, and {model} is {describe(denoiser)}."
