"""Single-file checkpoints for the tests: a tiny pipeline's weights written in the original (LDM) layout that
A1111 and ComfyUI read, one `.safetensors` file, as the checkpoints people download are. The fixed names come
from diffusers' own table (`DIFFUSERS_TO_LDM_MAPPING`); the numbered blocks follow the LDM UNet's layout for any
number of layers per block (a resnet per layer plus a down- or up-sampler per level)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def _unet(unet) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    table = DIFFUSERS_TO_LDM_MAPPING["unet"]
    fixed = {**table["layers"], **table["addition_embed_type"]}
    per = unet.config.layers_per_block
    attends = [t.startswith("CrossAttn") for t in unet.config.up_block_types]
    out = {}
    for key, value in unet.state_dict().items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"input_blocks.{1 + i * (per + 1) + j}." + (f"0.{_rename(rest, RESNET)}" if kind == "resnets"
                                                               else f"1.{rest}")
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (per + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"output_blocks.{i * (per + 1) + j}." + (f"0.{_rename(rest, RESNET)}" if kind == "resnets"
                                                           else f"1.{rest}")
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            i = int(m[1])
            new = f"output_blocks.{i * (per + 1) + per}.{2 if attends[i] else 1}.{m[2]}"
        else:
            raise KeyError(f"no LDM name for the UNet's {key}")
        out[new] = value
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def _vae(vae) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    levels = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"
            if value.ndim == 2:  # the LDM VAE's attention projections are 1x1 convolutions
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no LDM name for the VAE's {key}")
        out[new.replace("conv_shortcut", "nin_shortcut")] = value
    return {f"first_stage_model.{k}": v for k, v in out.items()}


def _clip(encoder) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's weights named as in the hub's files (`text_model.…`; transformers 5 leaves the prefix
    out of a CLIPTextModel's own names)."""
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
            for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}


def _open_clip(encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in OpenCLIP's layout (SDXL's second encoder): q, k and v in one matrix."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    table = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    state = _clip(encoder)
    out = {}
    for key, value in state.items():
        if key in table["layers"]:
            out[table["layers"][key]] = value.T.contiguous() if key == "text_projection.weight" else value
            continue
        if m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            if m[2] == "q":
                parts = [state[key.replace(".q_proj.", f".{c}_proj.")] for c in "qkv"]
                out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}"] = torch.cat(parts)
            continue
        new = key
        for old, ldm in table["transformer"].items():
            new = new.replace(old, ldm)
        out[f"transformer.{new}"] = value
    return out


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """An SD 1.5 or SDXL pipeline's weights with the names of the original checkpoints."""
    state = {**_unet(pipe.unet), **_vae(pipe.vae)}
    clip = _clip(pipe.text_encoder)
    if getattr(pipe, "text_encoder_2", None) is None:
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip.items()})
    else:
        state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in clip.items()})
        state.update({f"conditioner.embedders.1.model.{k}": v for k, v in _open_clip(pipe.text_encoder_2).items()})
    return state


def save_checkpoint(pipe, path: Path) -> Path:
    """The pipeline as one `.safetensors` checkpoint in the original layout."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ldm_state_dict(pipe).items()}, str(path))
    return path
