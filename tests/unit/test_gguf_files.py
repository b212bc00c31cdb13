"""What a GGUF file is, read from its header: the family and release from its tensors' names in the release's own
layout (as city96's files hold them) or diffusers', its main quantization, and a clear refusal otherwise."""

import gguf
import numpy as np
import pytest

from easel.checkpoints import gguf_file
from easel.errors import InvalidRequestError


def write(path, tensors: dict, architecture: str = "flux", quantized: dict | None = None):
    """Zero tensors of these shapes (float32), and quantized ones as (rows, columns, type)."""
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    for name, (rows, columns, kind) in (quantized or {}).items():
        qtype = gguf.GGMLQuantizationType[kind]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        data = np.zeros((rows, columns // block * size), dtype=np.uint8)
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def blocks(prefix: str, count: int, suffix: str) -> dict:
    return {f"{prefix}.{i}.{suffix}": (4,) for i in range(count)}


@pytest.mark.parametrize("tensors, family, base, layout", [
    ({**blocks("double_blocks", 2, "img_attn.norm.key_norm.scale"), **blocks("single_blocks", 2, "norm.key_norm.scale"),
      "guidance_in.in_layer.bias": (4,)}, "flux", "flux-dev", "original"),
    ({**blocks("model.diffusion_model.double_blocks", 1, "img_attn.norm.key_norm.scale"),
      **blocks("model.diffusion_model.single_blocks", 1, "norm.key_norm.scale")}, "flux", "flux-schnell", "original"),
    ({**blocks("joint_blocks", 38, "x_block.attn.ln_q.weight")}, "sd3", "sd35-large", "original"),
    ({**blocks("joint_blocks", 24, "x_block.attn.ln_q.weight")}, "sd3", "sd35-medium", "original"),
    ({"pos_embed.proj.bias": (4,), "pos_embed.proj.weight": (4,), "context_embedder.weight": (4,),
      **blocks("transformer_blocks", 2, "attn.norm_q.weight")}, "sd3", "sd35-medium", "diffusers"),
    ({"x_embedder.weight": (4,), **blocks("single_transformer_blocks", 1, "norm.linear.bias"),
      "time_text_embed.guidance_embedder.linear_1.bias": (4,)}, "flux", "flux-dev", "diffusers"),
    ({"img_in.weight": (4,), "txt_in.weight": (4,), **blocks("transformer_blocks", 2, "img_mod.1.bias")},
     "qwen-image", "qwen-image", "diffusers"),
])
def test_the_family_and_release_come_from_the_tensor_names(tmp_path, tensors, family, base, layout):
    info = gguf_file(write(tmp_path / "x.gguf", tensors))
    assert (info.family, info.base_model, info.layout) == (family, base, layout)


def test_the_main_quantization_is_the_weights_most_common_type(tmp_path):
    tensors = {**blocks("double_blocks", 1, "img_attn.norm.key_norm.scale"),
               **blocks("single_blocks", 1, "norm.key_norm.scale")}
    quantized = {f"double_blocks.0.img_attn.qkv.weight{i}": (8, 64, "Q4_K" if i else "Q8_0") for i in range(3)}
    assert gguf_file(write(tmp_path / "x.gguf", tensors, quantized=quantized)).quant == "Q4_K"


def test_a_quantization_diffusers_cannot_read_is_named(tmp_path):
    tensors = {**blocks("double_blocks", 1, "a"), **blocks("single_blocks", 1, "b")}
    path = write(tmp_path / "iq2.gguf", tensors, quantized={"double_blocks.0.w": (4, 256, "IQ2_XXS")})
    with pytest.raises(InvalidRequestError, match=r"'iq2.gguf' is not a usable GGUF denoiser: .*IQ2_XXS.*Q4_0"):
        gguf_file(path)
