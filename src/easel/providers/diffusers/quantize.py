"""Quantizing a pipeline's denoiser: which modes fit this model on this device (`check_quantize`, before the job is
queued), nf4 as it loads (`at_load`), fp8, int8 and int8_dynamic after (`quantize_denoiser`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import InvalidRequestError

if TYPE_CHECKING:
    from ...catalog import ModelSpec

QUANTIZE_MODES = ("none", "fp8", "int8", "int8_dynamic", "nf4")


def check_quantize(spec: ModelSpec, quantize: Any, asked: bool, device: str, dtype: Callable[[], Any]) -> None:
    """A quantization this model can take here (`dtype`: the pipeline's, where a mode needs it). A server's default
    does not apply to models that cannot take it (a GGUF file, quantized already): only a request's own `quantize`
    is refused for them."""
    if quantize not in QUANTIZE_MODES:
        raise InvalidRequestError(f"`quantize` must be one of {', '.join(QUANTIZE_MODES)} but is {quantize!r}.",
                                  param="quantize")
    if quantize == "none" or not asked and spec.gguf:
        return
    if spec.gguf:
        raise InvalidRequestError(f"{spec.name} is a GGUF file, quantized already: `quantize` does not apply.",
                                  param="quantize")
    if quantize == "nf4" and device != "cuda":
        raise InvalidRequestError(f"`quantize=nf4` needs a CUDA GPU (bitsandbytes' 4-bit kernels), and this runs "
                                  f"on {device}: use int8 or fp8, or a GGUF file (flux-dev:Q4_0).",
                                  param="quantize")
    if quantize == "nf4" and spec.checkpoint:
        raise InvalidRequestError("`quantize=nf4` loads pipeline folders and hub models, not single-file "
                                  "checkpoints: use int8 or fp8.", param="quantize")
    if quantize == "int8_dynamic":
        _check_dynamic(device, dtype())
    if quantize == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidRequestError("`quantize=nf4` needs bitsandbytes: pip install 'easel[nf4]'.",
                                  param="quantize")


def _check_dynamic(device: str, dtype) -> None:
    """`quantize=int8_dynamic` runs on a CPU's int8 matrix kernels (fbgemm), on float32 weights."""
    import torch

    if device != "cpu" or dtype != torch.float32:
        raise InvalidRequestError(f"`quantize=int8_dynamic` computes with a CPU's int8 kernels on float32 "
                                  f"weights, and this runs on {device} in {str(dtype).removeprefix('torch.')}: "
                                  "use int8 or fp8.", param="quantize")
    if not hasattr(torch.ao.quantization, "quantize_dynamic"):
        raise InvalidRequestError("`quantize=int8_dynamic` needs PyTorch's dynamic quantization, which this "
                                  f"PyTorch ({torch.__version__}) no longer has: use int8.", param="quantize")


def at_load(spec: ModelSpec, mode: str, dtype) -> dict[str, Any]:
    """nf4: the denoiser quantized by bitsandbytes as it loads (diffusers' PipelineQuantizationConfig)."""
    if mode != "nf4":
        return {}
    from diffusers.quantizers import PipelineQuantizationConfig

    denoiser = "transformer" if spec.family.denoiser else "unet"
    return {"quantization_config": PipelineQuantizationConfig(
        quant_backend="bitsandbytes_4bit", components_to_quantize=[denoiser],
        quant_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype})}


def quantize_denoiser(pipe, mode: str) -> None:
    """After loading: fp8, the denoiser's weights stored as float8 (e4m3) and cast to the pipeline's dtype layer by
    layer as each runs (diffusers' layerwise casting; its norms and embeddings, which quality depends on, stay as
    they are); int8, its Linear layers' weights as 8-bit integers with a scale per row (torchao, weight-only)."""
    import torch

    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if mode == "int8_dynamic":
        _quantize_dynamic(denoiser)
    if mode == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(denoiser, Int8WeightOnlyConfig())
    if mode == "fp8":
        denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=denoiser.dtype)
    if mode in ("fp8", "int8", "int8_dynamic"):  # what stays as it was (norms, embeddings; convolutions) leaves the
        for tensor in [*denoiser.parameters(), *denoiser.buffers()]:  # weights file, whose mapping can then close
            plain = type(tensor.data) is torch.Tensor and tensor.dtype != torch.float8_e4m3fn
            if plain and tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def _quantize_dynamic(denoiser) -> None:
    """`int8_dynamic`: the denoiser's Linear layers hold their weights as 8-bit integers (a scale per tensor) and
    quantize their inputs on the fly, so that their matrix products run in int8 (fbgemm): on a 2-core AVX2 CPU a
    full-size SD 1.5 step 27% faster (6.9 -> 5.0 s), where torchao's int8 activations run 6.5x slower than float32.
    PyTorch marks this API deprecated; `_check_dynamic` refuses the mode where it is gone."""
    import warnings

    import torch

    with warnings.catch_warnings():  # the deprecation of quantized tensors, said once in the docs instead
        warnings.simplefilter("ignore", UserWarning)
        torch.ao.quantization.quantize_dynamic(denoiser, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
