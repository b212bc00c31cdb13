"""The family check of add-ons reads real layouts right: kohya's and diffusers' LoRA keys for SD 1.5 and SDXL,
and it refuses nothing it cannot tell (kohya's FLUX LoRAs, LyCORIS, old attention-processor LoRAs, a file that is
not safetensors)."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from easel.providers.diffusers import fit

SD15 = {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768, "addition_embed_type": None}
SDXL = {"_class_name": "UNet2DConditionModel", "cross_attention_dim": 2048, "addition_embed_type": "text_time"}
FLUX = {"_class_name": "FluxTransformer2DModel", "num_attention_heads": 24, "attention_head_dim": 128,
        "joint_attention_dim": 4096, "in_channels": 64}


def lora(tmp_path, shapes: dict[str, tuple]) -> str:
    path = tmp_path / "x.safetensors"
    save_file({k: np.zeros(shape, dtype=np.float16) for k, shape in shapes.items()}, str(path))
    return path


KOHYA_SD15 = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 768),
              "lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 768)}
KOHYA_SDXL = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
              "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 1280)}
PEFT_SDXL = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 2048)}
KOHYA_FLUX = {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": (4, 3072)}
DIFFUSERS_FLUX = {"transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight": (4, 3072)}
LYCORIS = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_a": (768, 4)}
OLD_PROCESSORS = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.down.weight":
                  (4, 2048)}


@pytest.mark.parametrize("shapes, denoiser, second, refused", [
    (KOHYA_SD15, SD15, False, None),
    (KOHYA_SD15, SDXL, True, "SD 1.5 (cross-attention 768), and m is SDXL (cross-attention 2048)"),
    (KOHYA_SDXL, SDXL, True, None),
    (KOHYA_SDXL, SD15, False, "SDXL (cross-attention 2048), and m is SD 1.5 (cross-attention 768)"),
    (PEFT_SDXL, SD15, False, "SDXL (cross-attention 2048)"),
    ({"lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": (4, 1280)}, SD15, False,
     "two text encoders (SDXL)"),
    (DIFFUSERS_FLUX, SDXL, True, "a transformer model"),
    (PEFT_SDXL, FLUX, False, "a UNet model"),
    (KOHYA_FLUX, FLUX, False, None),  # kohya writes lora_unet_ for FLUX too
    (DIFFUSERS_FLUX, FLUX, False, None),
    (LYCORIS, SDXL, True, None),  # a layout the check does not read: the pipeline judges
    (OLD_PROCESSORS, SD15, False, None),
])
def test_lora_layouts(tmp_path, shapes, denoiser, second, refused):
    said = fit.lora_misfit("x", lora(tmp_path, shapes), denoiser, "m", second)
    assert said is None if refused is None else refused in said


def test_what_the_files_cannot_tell_is_not_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    assert fit.lora_misfit("x", junk, SD15, "m", False) is None
    assert fit.lora_misfit("x", lora(tmp_path, KOHYA_SDXL), None, "m", False) is None  # model not downloaded
    assert fit.controlnet_misfit("c", None, SD15, "m") is None
    qwen = {"_class_name": "QwenImageTransformer2DModel"}
    assert fit.controlnet_misfit("c", {"_class_name": "QwenImageControlNetModel"}, qwen, "m") is None


def test_controlnet_families():
    cn15 = {"_class_name": "ControlNetModel", "cross_attention_dim": 768, "addition_embed_type": None}
    cnxl = {"_class_name": "ControlNetModel", "cross_attention_dim": 2048, "addition_embed_type": "text_time"}
    assert fit.controlnet_misfit("c", cn15, SD15, "m") is None and fit.controlnet_misfit("c", cnxl, SDXL, "m") is None
    assert fit.controlnet_misfit("c", cn15, SDXL, "m") == ("The ControlNet 'c' was made for SD 1.5 (cross-attention "
                                                           "768), and m is SDXL (cross-attention 2048).")
    flux_cn = {**FLUX, "_class_name": "FluxControlNetModel"}
    assert fit.controlnet_misfit("c", flux_cn, FLUX, "m") is None
    assert "was made for FLUX (width 3072), and m is SDXL" in fit.controlnet_misfit("c", flux_cn, SDXL, "m")
