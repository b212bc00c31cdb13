"""Token downsampling's hooks on a UNet with two attention levels: which self-attentions get fewer keys, for square,
oblong and odd latents, and that they are gone after the block."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from easel.providers.diffusers.adapters.tokens import attention_levels, downsampled_self_attention


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=8,
                                attention_head_dim=2, norm_num_groups=4).eval()


def keys_seen(unet, height: int, width: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    handles = [module.to_k.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(
        name, args[0].shape[1])) for name, module in unet.named_modules() if name.endswith("attn1")]
    with torch.no_grad():
        unet(torch.randn(2, 4, height, width), 10, torch.randn(2, 3, 8))
    for handle in handles:
        handle.remove()
    return seen


def test_the_levels_of_the_self_attentions(unet):
    levels = {name: attention_levels(unet)[module] for name, module in unet.named_modules() if name.endswith("attn1")}
    assert levels == {"down_blocks.0.attentions.0.transformer_blocks.0.attn1": 0,
                      "down_blocks.1.attentions.0.transformer_blocks.0.attn1": 1,
                      "mid_block.attentions.0.transformer_blocks.0.attn1": 1,
                      "up_blocks.0.attentions.0.transformer_blocks.0.attn1": 1,
                      "up_blocks.0.attentions.1.transformer_blocks.0.attn1": 1,
                      "up_blocks.1.attentions.0.transformer_blocks.0.attn1": 0,
                      "up_blocks.1.attentions.1.transformer_blocks.0.attn1": 0}


@pytest.mark.parametrize("height, width", [(16, 16), (12, 20), (9, 13)])
@pytest.mark.parametrize("factor, levels", [(2, 1), (3, 1), (2, 2)])
def test_fewer_keys_where_asked_and_none_after(unet, height, width, factor, levels):
    whole = keys_seen(unet, height, width)
    level_sizes = [(height, width), (-(-height // 2), -(-width // 2))]  # the downsampling conv rounds up
    with downsampled_self_attention(unet, factor, levels):
        fewer = keys_seen(unet, height, width)
    for name, count in whole.items():
        level = next(i for i, (h, w) in enumerate(level_sizes) if h * w == count)
        h, w = level_sizes[level]
        assert fewer[name] == (max(1, h // factor) * max(1, w // factor) if level < levels else count), name
    assert keys_seen(unet, height, width) == whole  # the hooks are gone
