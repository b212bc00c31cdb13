"""A CPU pipeline's convolutions and float32 linear layers, called on oneDNN directly.

Convolutions run on weights packed once. PyTorch's eager convolution hands oneDNN its weight in the plain layout,
and oneDNN copies it into its blocked layout on every call: for the 1280-channel convolutions of SD 1.5's 16x16
and 8x8 levels that copy is most of the call (31 ms eager, 8 ms on a packed weight, for one at 8x8). A packed
convolution makes the copy on its first call and keeps it for every input size (a copy made at 64x64 latents runs
96x96 ones as fast as their own), made again only when the weight changes. It is what inductor's freezing does for
a compiled model, without the compile. The copies take memory as large as the convolutions' weights (2.4 GB for
SD 1.5's UNet in float32): a layer packs only while the RAM left free after its copy stays above `FLOOR`, and runs
as before otherwise.

Linear layers in float32 go to oneDNN's matmul in place of the BLAS's (MKL's): about 1.1x faster on the AMD
CPU measured, on the same weight (no copy). In bfloat16 PyTorch already calls oneDNN.

The arithmetic is float32's (or bfloat16's) either way, summed in another order: a full-size SD 1.5 UNet's output
moves by about 1e-6, and its step takes 0.80x of the time on a 2-core AVX-512 CPU.

`Bfloat16Layers` runs layers in bfloat16 between float32 tensors: the tiny decoder's, on a CPU that computes
bfloat16 in hardware (`native_bfloat16`)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

import torch

from .memory import GB, free_memory

FLOOR = 2 * GB  # RAM that stays free after a copy: below it a convolution runs eager, as PyTorch's would
DTYPES = (torch.float32, torch.bfloat16)


class PackedConv2d(torch.nn.Conv2d):
    """A `Conv2d` (the same module, its class swapped) that runs on a packed copy of its weight where it can."""

    _packed: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if not _plain_call(self, x) or self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4:
            return super().forward(x)
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if self._packed is None or self._packed[0] != key:
            self._packed = None  # the stale copy goes before a new one is made
            if free_memory("cpu")[1] - weight.numel() * weight.element_size() < FLOOR:
                return super().forward(x)
            self._packed = (key, torch.ops.mkldnn._reorder_convolution_weight(
                weight.detach(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape)))
        return torch.ops.mkldnn._convolution_pointwise(x, self._packed[1], self.bias, list(self.padding),
                                                       list(self.stride), list(self.dilation), self.groups,
                                                       "none", [], "")

    def packed_bytes(self) -> int:
        return 0 if self._packed is None else self._packed[1].numel() * self._packed[1].element_size()


class OneDNNLinear(torch.nn.Linear):
    """A `Linear` (its class swapped) whose float32 calls go to oneDNN's matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _plain_call(self, x) or x.dtype != torch.float32 or x.dim() < 2:
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def _plain_call(layer: torch.nn.Module, x: torch.Tensor) -> bool:
    """oneDNN computes this call as the eager one would: a CPU tensor of the weight's dtype, a plain weight (not a
    quantized or GGUF one), and no gradient to keep."""
    weight = layer.weight
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == weight.dtype
            and weight.dtype in DTYPES and type(weight.data) is torch.Tensor
            and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)))


def available() -> bool:
    """Whether this machine calls oneDNN this way: an x86-64 CPU (on ARM oneDNN's convolutions are another
    library's, not measured)."""
    return platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()


def use_onednn(components: Iterable[Any]) -> int:
    """Make every plain `Conv2d` of the modules among `components` (a pipeline's) a `PackedConv2d` and every plain
    `Linear` a `OneDNNLinear` (subclasses, with their own forward, are left as they are); how many. Nothing on a
    machine where `available()` is False."""
    if not available():
        return 0
    swapped = {torch.nn.Conv2d: PackedConv2d, torch.nn.Linear: OneDNNLinear}
    count = 0
    for module in components:
        for layer in module.modules() if isinstance(module, torch.nn.Module) else ():
            if type(layer) in swapped:
                layer.__class__ = swapped[type(layer)]
                count += 1
    return count


def use_onednn_like(modules: Iterable[Any], reference: torch.nn.Module) -> int:
    """`use_onednn` on an add-on's modules (a ControlNet) where the pipeline's `reference` module (its denoiser)
    calls oneDNN: the add-on runs as the pipeline does, eager beside a compiled or a GPU pipeline."""
    if not any(isinstance(layer, (PackedConv2d, OneDNNLinear)) for layer in reference.modules()):
        return 0
    return use_onednn(modules)


def packed_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """The bytes the packed copies of the convolutions in `modules` hold now (a layer that several share, once)."""
    layers = {id(layer): layer for module in modules for layer in module.modules() if isinstance(layer, PackedConv2d)}
    return sum(layer.packed_bytes() for layer in layers.values())


class Bfloat16Layers(torch.nn.Module):
    """Layers run in bfloat16 between a float32 input and a float32 output."""

    dtype_name = "bfloat16"

    def __init__(self, layers: torch.nn.Module):
        super().__init__()
        self.layers = layers.to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.to(torch.bfloat16)).float()


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated, slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
