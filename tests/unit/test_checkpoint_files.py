"""What a single-file checkpoint is, from its header alone: the family of each release's layout, and a clear error
for every file that is not a whole model."""

import pytest
import torch
from safetensors.torch import save_file

from easel.checkpoints import checkpoint_family
from easel.errors import InvalidRequestError

UNET = "model.diffusion_model.input_blocks.0.0.weight"


def write(path, names, first_channels=4):
    tensors = {name: torch.zeros(1) for name in names}
    if UNET in tensors:
        tensors[UNET] = torch.zeros(8, first_channels, 3, 3)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("names, family", [
    ([UNET, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"], "sd15"),
    ([UNET, "cond_stage_model.model.token_embedding.weight"], "sd15"),  # SD 2.x: the same pipeline
    ([UNET, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
      "conditioner.embedders.1.model.ln_final.weight"], "sdxl"),
    (["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"], "sd3"),
    (["joint_blocks.0.x_block.attn.qkv.weight"], "sd3"),
    (["double_blocks.0.img_attn.norm.key_norm.scale"], "flux"),
    (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], "flux"),
])
def test_each_release_layout_names_its_family(tmp_path, names, family):
    assert checkpoint_family(write(tmp_path / "m.safetensors", names)) == family


@pytest.mark.parametrize("names, says", [
    (["lora_unet_down_blocks_0.lora_down.weight"], "a LoRA"),
    (["unet.down_blocks.0.attentions.0.to_q.lora_A.weight"], "a LoRA"),
    (["emb_params"], "textual-inversion embedding"),
    (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "a VAE on its own"),
    (["control_model.input_blocks.0.0.weight"], "a ControlNet"),
    ([UNET, "conditioner.embedders.0.model.ln_final.weight"], "SDXL refiner"),
    (["some.other.network.weight"], "no architecture Easel runs"),
])
def test_other_files_say_what_they_are(tmp_path, names, says):
    with pytest.raises(InvalidRequestError, match=says) as caught:
        checkpoint_family(write(tmp_path / "m.safetensors", names))
    assert caught.value.param == "model"


def test_an_inpainting_unet_is_refused(tmp_path):
    path = write(tmp_path / "m.safetensors", [UNET, "cond_stage_model.transformer.x"], first_channels=9)
    with pytest.raises(InvalidRequestError, match="9 input channels"):
        checkpoint_family(path)


@pytest.mark.parametrize("content, says", [
    (b"", "too short"),
    (b"\xff" * 64, "not a safetensors file"),
    ((20).to_bytes(8, "little") + b"not json at all!!!!!", "not JSON"),
])
def test_damaged_files(tmp_path, content, says):
    (tmp_path / "m.safetensors").write_bytes(content)
    with pytest.raises(InvalidRequestError, match=says):
        checkpoint_family(tmp_path / "m.safetensors")


def test_a_ckpt_that_is_not_an_archive(tmp_path):
    (tmp_path / "m.ckpt").write_bytes(b"\x80\x02}q\x00.")  # a bare pickle, the pre-1.6 format
    with pytest.raises(InvalidRequestError, match="not a PyTorch checkpoint"):
        checkpoint_family(tmp_path / "m.ckpt")


def test_a_ckpt_of_weights_is_read_without_running_anything(tmp_path):
    names = [UNET, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    torch.save({"state_dict": {n: torch.zeros(8, 4, 3, 3) for n in names}, "global_step": 10}, tmp_path / "m.ckpt")
    assert checkpoint_family(tmp_path / "m.ckpt") == "sd15"
