"""The request options of model families that Easel's own back end gives them (memory and speed, the tiny decoder,
step caching, token downsampling, clip skip, a GGUF denoiser's base), and the shape of one option."""

from __future__ import annotations

import dataclasses

# the pipelines whose denoiser is a UNet (SD 1.5, SDXL and their turbos): DeepCache and token downsampling fit them
UNET_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of a model family, accepted in `ImageRequest.extra`."""

    name: str
    type: str
    description: str = ""
    ge: float | None = None
    le: float | None = None


# load options every diffusers family accepts, for memory and for speed (the built-in model needs none of them)
MEMORY_OPTIONS = {
    "offload": OptionSpec("offload", "str", "auto (the memory plan chooses from the model's size and the memory "
                          "free), none, model, group or sequential CPU offload (accelerators only)."),
    "attention_slicing": OptionSpec("attention_slicing", "bool", "Compute attention in slices to save memory."),
    "vae_slicing": OptionSpec("vae_slicing", "bool", "Decode a batch one image at a time."),
    "vae_tiling": OptionSpec("vae_tiling", "bool", "Decode large images in tiles."),
    "compile": OptionSpec("compile", "str", "torch.compile the denoiser and the VAE decoder: none, default, "
                          "reduce-overhead (CUDA graphs) or max-autotune; the first call of each shape compiles."),
    "channels_last": OptionSpec("channels_last", "bool", "The convolutional models in channels-last memory layout."),
    "fuse_qkv": OptionSpec("fuse_qkv", "bool", "Fuse the attention's query, key and value projections."),
    "quantize": OptionSpec("quantize", "str", "none; fp8: the denoiser's weights stored as float8 (a quarter of "
                           "float32's memory, half of bfloat16's), each layer computed in the model's dtype; int8: "
                           "as 8-bit integers (torchao, weight-only); int8_dynamic (CPU): the Linear layers compute in "
                           "8-bit integers, weights and inputs (a quarter off an SD 1.5 step on a CPU); nf4: 4-bit "
                           "NormalFloat (bitsandbytes, CUDA)."),
}
DECODER_OPTION = OptionSpec("decoder", "str", "full (the model's VAE) or tiny: the family's tiny autoencoder "
                            "(TAESD and its successors) decodes the images, in a fraction of the time, with a little "
                            "less fine detail.")
CACHE_OPTION = OptionSpec("cache", "str", "Step caching: deepcache (UNet models), first_block or taylorseer "
                          "(transformer models), with its parameter after a colon (deepcache:3 runs the whole UNet "
                          "every 3rd step; first_block:0.08; taylorseer:4); off by default.")
TOKENS_OPTION = OptionSpec("tokens", "str", "Token downsampling (ToDo) on UNet models: todo, or todo:F:L, the "
                           "self-attention of the L (1 or 2) highest-resolution levels attends to its tokens "
                           "downsampled F (2 to 4) times each way; off by default.")
CLIP_SKIP_OPTION = OptionSpec("clip_skip", "int", "Text-encoder layers skipped at its end (A1111's clip skip 2 is "
                              "1): what models trained on them want.", ge=1, le=11)
BASE_OPTION = OptionSpec("base", "str", "For a GGUF denoiser: the pipeline of its family whose text encoders, VAE "
                         "and configuration it runs with (a catalog model or hub id; default: its release's).")
