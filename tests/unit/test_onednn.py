"""A CPU pipeline's layers on oneDNN: convolutions on packed weights give the eager convolution's output, packed
once (for every input size) and again when the weight changes, eager where a gradient is wanted or RAM is short;
linear layers give the eager ones' output."""

import pytest
import torch

from easel.providers.diffusers import onednn
from easel.providers.diffusers.onednn import OneDNNLinear, PackedConv2d, packed_bytes, use_onednn

pytestmark = pytest.mark.skipif(not onednn.available(), reason="Easel calls oneDNN this way on x86-64 only")

LAYERS = {
    "3x3": dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    "strided, uneven padding": dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=(0, 1)),
    "1x1, no bias": dict(in_channels=8, out_channels=4, kernel_size=1, bias=False),
    "grouped, dilated": dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=4),
}


def packed_pair(**layer) -> tuple[torch.nn.Conv2d, torch.nn.Conv2d]:
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(**layer).eval()
    packed = torch.nn.Conv2d(**layer).eval()
    packed.load_state_dict(plain.state_dict())
    assert use_onednn([packed]) == 1 and type(packed) is PackedConv2d
    return plain, packed


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_packed_convolution_gives_the_eager_ones_output(name, layout):
    plain, packed = packed_pair(**LAYERS[name])
    x = torch.randn(2, 8, 13, 11).contiguous(memory_format=layout)
    with torch.inference_mode():
        assert torch.allclose(packed(x), plain(x), atol=1e-5)
        assert packed.packed_bytes() == packed.weight.numel() * 4  # packed on its first call, then kept
        kept = packed._packed[1]
        assert torch.allclose(packed(x), plain(x), atol=1e-5) and packed._packed[1] is kept
        y = torch.randn(1, 8, 20, 24).contiguous(memory_format=layout)  # another size: the same copy
        assert torch.allclose(packed(y), plain(y), atol=1e-5) and packed._packed[1] is kept


def test_a_changed_weight_is_packed_again():
    plain, packed = packed_pair(**LAYERS["3x3"])
    x = torch.randn(1, 8, 16, 16)
    with torch.inference_mode():
        packed(x)
    with torch.no_grad():  # in place (its version moves), then a new tensor (its address moves)
        plain.weight.mul_(2)
        packed.weight.mul_(2)
    with torch.inference_mode():
        assert torch.allclose(packed(x), plain(x), atol=1e-5)
    packed.weight = torch.nn.Parameter(plain.weight.detach() + 1)
    with torch.inference_mode():
        assert torch.allclose(packed(x), torch.nn.functional.conv2d(x, plain.weight + 1, plain.bias, padding=1),
                              atol=1e-5)


def test_with_a_gradient_wanted_it_is_the_eager_convolution():
    plain, packed = packed_pair(**LAYERS["3x3"])
    x = torch.randn(1, 8, 16, 16)
    packed(x).sum().backward()
    plain(x).sum().backward()
    assert packed.packed_bytes() == 0 and torch.allclose(packed.weight.grad, plain.weight.grad, atol=1e-4)


def test_short_of_ram_a_layer_runs_eager(monkeypatch):
    monkeypatch.setattr(onednn, "FLOOR", 1 << 60)
    plain, packed = packed_pair(**LAYERS["3x3"])
    x = torch.randn(1, 8, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(packed(x), plain(x)) and packed_bytes([packed]) == 0


def test_bfloat16_and_subclasses():
    """bfloat16 packs too; a `Conv2d` subclass (its own forward) is left as it is."""

    class Scaled(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    plain, packed = packed_pair(**LAYERS["3x3"])
    plain, packed = plain.to(torch.bfloat16), packed.to(torch.bfloat16)
    x = torch.randn(1, 8, 16, 16, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.allclose(packed(x).float(), plain(x).float(), atol=0.05)
    assert use_onednn([Scaled(8, 8, 3)]) == 0


def test_channels_last_weights():
    plain, packed = packed_pair(**LAYERS["3x3"])
    packed.to(memory_format=torch.channels_last)
    x = torch.randn(1, 8, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(packed(x), plain(x), atol=1e-5) and packed.packed_bytes() > 0


@pytest.mark.parametrize("shape", [(5, 8), (2, 7, 8), (2, 3, 4, 8)])
def test_a_linear_layer_on_onednn_gives_the_eager_ones_output(shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 6).eval()
    layer = torch.nn.Linear(8, 6).eval()
    layer.load_state_dict(plain.state_dict())
    assert use_onednn([layer]) == 1 and type(layer) is OneDNNLinear
    x = torch.randn(*shape)
    with torch.inference_mode():
        assert torch.allclose(layer(x), plain(x), atol=1e-5)
        assert torch.allclose(layer(x.transpose(0, -2)), plain(x.transpose(0, -2)), atol=1e-5)
    layer(x).sum().backward()  # a gradient wanted: PyTorch's own
    assert layer.weight.grad is not None
    no_bias = torch.nn.Linear(8, 6, bias=False)
    use_onednn([no_bias])
    with torch.inference_mode():
        assert torch.allclose(no_bias(x), x @ no_bias.weight.T, atol=1e-5)
