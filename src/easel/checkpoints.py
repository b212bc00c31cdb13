"""Single-file checkpoints (the `.safetensors` and `.ckpt` files of A1111 and ComfyUI, and the `.gguf` denoisers of
ComfyUI-GGUF): what is inside one, read from its header without loading its weights, and the family it belongs to,
from its tensors' names."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections import Counter
from functools import lru_cache
from pathlib import Path

from .errors import InvalidRequestError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".gguf")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header


def is_checkpoint_name(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES)


def _bad(path: Path, why: str) -> InvalidRequestError:
    what = "GGUF denoiser" if is_gguf(path) else "checkpoint"
    return InvalidRequestError(f"{path.name!r} is not a usable {what}: {why}.", param="model")


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The tensors' names and shapes from the header, checked against the file's size (a truncated download is
    refused here, not half-way through loading)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(path, "the file is empty or too short")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise _bad(path, "it is not a safetensors file (no header where one should be)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            raise _bad(path, "it is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _bad(path, "it is not a safetensors file (its header is not a table of tensors)")
    shapes, end = {}, 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            shapes[key] = tuple(int(n) for n in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise _bad(path, f"the header's entry for {key!r} is malformed") from None
    if 8 + length + end > size:
        raise _bad(path, f"it is truncated ({size} bytes where its header needs {8 + length + end})")
    return shapes


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """A `.ckpt` opened as weights only (tensors and plain containers: a pickle that would run code is refused,
    never run), memory-mapped so that its weights are not read."""
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        raise _bad(path, "it is not a PyTorch checkpoint (not the zip archive torch.save writes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        named = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line][:1]
        raise _bad(path, "it holds more than weights (Easel opens .ckpt files as weights only and never runs code "
                         "from one" + (f"; {named[0][:160]}" if named else "") + ")") from None
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways (zip, storage, EOF)
        raise _bad(path, f"it cannot be read ({type(exc).__name__})") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise _bad(path, "it holds no table of weights")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(k, str) and hasattr(v, "shape")}


@lru_cache(maxsize=64)
def _shapes(path: str, mtime_ns: int, size: int) -> dict[str, tuple[int, ...]]:
    file = Path(path)
    return _safetensors_shapes(file) if file.suffix.lower() == ".safetensors" else _pickle_shapes(file)


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a checkpoint, read once per version of the file."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise _bad(path, f"it cannot be opened ({exc.strerror or type(exc).__name__})") from None
    if not path.is_file():
        raise _bad(path, "it is not a file")
    return _shapes(str(path), stat.st_mtime_ns, stat.st_size)


def _any(keys, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def checkpoint_family(path: Path) -> str:
    """The Easel family of a whole-model checkpoint, from its tensors' names (the layouts of the original
    Stable Diffusion, SDXL, SD3 and FLUX releases, as A1111 and ComfyUI save them). A file of another kind (a LoRA,
    a VAE, an embedding, a ControlNet) or an architecture Easel does not run is an error that says what it is.
    A `.gguf` file is a denoiser on its own (see `gguf_file`)."""
    if is_gguf(path):
        return gguf_file(path).family
    shapes = tensor_shapes(path)
    keys = shapes.keys()
    if not keys:
        raise _bad(path, "it holds no tensors")
    if _any(keys, "lora_unet_", "lora_te", "lora_transformer_") or any(".lora_" in k or "lora_A" in k for k in keys):
        raise _bad(path, "it is a LoRA; put it in the loras folder and use it with `<lora:name:weight>` or `loras`")
    if set(keys) <= {"emb_params", "clip_l", "clip_g", "string_to_param", "string_to_token", "name", "step"} or \
            _any(keys, "string_to_param."):
        raise _bad(path, "it is a textual-inversion embedding; put it in the embeddings folder")
    if _any(keys, "control_model.", "controlnet_"):
        raise _bad(path, "it is a ControlNet, not a whole model")
    if _any(keys, "model.diffusion_model.joint_blocks.", "joint_blocks."):
        return "sd3"
    if _any(keys, "model.diffusion_model.double_blocks.", "double_blocks."):
        return "flux"
    if _any(keys, "model.diffusion_model.input_blocks."):
        first = shapes.get("model.diffusion_model.input_blocks.0.0.weight", (0, 4))
        if len(first) > 1 and first[1] != 4:
            raise _bad(path, f"its UNet takes {first[1]} input channels (an inpainting or instruct model); Easel "
                             "runs text-to-image checkpoints (4 channels)")
        if _any(keys, "conditioner.embedders.1.model."):
            return "sdxl"
        if _any(keys, "conditioner.embedders.0.model."):
            raise _bad(path, "it is an SDXL refiner, which only refines another model's images")
        return "sd15"  # SD 1.x, and SD 2.x (an OpenCLIP text encoder), run by the same pipeline
    if _any(keys, "encoder.down.", "decoder.up.") and not _any(keys, "model.diffusion_model."):
        raise _bad(path, "it is a VAE on its own, not a whole model")
    raise _bad(path, "its tensors match no architecture Easel runs (SD 1.x/2.x, SDXL, SD3, FLUX)")


# the quantization types diffusers dequantizes (besides the plain F32 and F16 tensors a GGUF keeps small layers in)
GGUF_QUANTS = ("BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K", "IQ4_NL",
               "IQ4_XS")
GGUF_FAMILIES = "FLUX.1, SD 3/3.5 and Qwen-Image"  # the denoisers Easel loads from a GGUF file
# general.architecture of the GGUFs of language models and text encoders (llama.cpp's names): not a denoiser
_TEXT_ARCHITECTURES = ("llama", "t5", "t5encoder", "clip", "qwen2", "qwen2vl", "qwen25vl", "qwen3", "gemma", "gemma2",
                       "gemma3", "mistral", "phi3", "bert")


@dataclasses.dataclass(frozen=True)
class GgufFile:
    """What a GGUF denoiser is: its Easel family, the catalog model whose text encoders, VAE and configuration it
    runs with unless told otherwise (the release its tensors' names and count say it is), its weights' main
    quantization type, and its layout ("original": the release's key names; "diffusers": diffusers' own)."""

    family: str
    base_model: str
    quant: str
    layout: str
    tensors: int


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


@lru_cache(maxsize=64)
def _gguf(path: str, mtime_ns: int, size: int) -> tuple[dict[str, str], str | None]:
    """Name -> quantization type of each tensor, and `general.architecture`, from the header (the weights stay on
    disk), checked against the file's size."""
    import gguf

    file = Path(path)
    try:
        reader = gguf.GGUFReader(file)
    except ValueError as exc:
        why = "it is not a GGUF file (no GGUF magic)" if "magic" in str(exc) else \
            f"it is truncated or damaged ({size} bytes; its header promises more)"
        raise _bad(file, why) from None
    except (OSError, IndexError, KeyError, struct.error, EOFError) as exc:
        raise _bad(file, f"its GGUF header cannot be read ({type(exc).__name__})") from None
    end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise _bad(file, f"it is truncated ({size} bytes where its tensors need {end})")
    field = reader.fields.get("general.architecture")
    architecture = str(field.contents()) if field is not None else None
    return {t.name: t.tensor_type.name for t in reader.tensors}, architecture


def gguf_file(path: Path) -> GgufFile:
    """The family, default base and quantization of a GGUF denoiser; a GGUF of another kind (a language model, an SD
    1.5/SDXL checkpoint, an architecture diffusers cannot load this way, a quantization type it cannot dequantize) is
    an error that names the file and says what Easel loads."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise _bad(path, f"it cannot be opened ({exc.strerror or type(exc).__name__})") from None
    types, architecture = _gguf(str(path), stat.st_mtime_ns, stat.st_size)
    if not types:
        raise _bad(path, "it holds no tensors")
    if architecture in _TEXT_ARCHITECTURES:
        raise _bad(path, f"it is a {architecture} language model or text encoder, not a denoiser: Easel loads GGUF "
                         f"denoisers of {GGUF_FAMILIES}, with their text encoders from the base model")
    keys = {k.removeprefix("model.diffusion_model.") for k in types}
    family, base, layout = _gguf_kind(path, keys)
    unsupported = sorted({q for q in types.values() if q not in (*GGUF_QUANTS, "F32", "F16")})
    if unsupported:
        raise _bad(path, f"its weights are quantized as {', '.join(unsupported)}, which diffusers cannot dequantize "
                         f"(it reads {', '.join(GGUF_QUANTS)})")
    quants = Counter(q for q in types.values() if q not in ("F32",))
    return GgufFile(family, base, quants.most_common(1)[0][0] if quants else "F32", layout, len(types))


def _gguf_kind(path: Path, keys: set[str]) -> tuple[str, str, str]:
    """(family, default base model, layout) from the tensors' names, in the release's layout or diffusers'."""
    if _any(keys, "input_blocks.", "first_stage_model.", "cond_stage_model.", "conditioner.", "down_blocks."):
        raise _bad(path, "it is an SD 1.x/SDXL model in GGUF (stable-diffusion.cpp's or ComfyUI's layout), which "
                         f"diffusers does not load: use its .safetensors checkpoint (GGUF works for {GGUF_FAMILIES})")
    if _any(keys, "double_blocks.") and _any(keys, "single_blocks."):
        return "flux", "flux-dev" if _any(keys, "guidance_in.") else "flux-schnell", "original"
    if _any(keys, "single_transformer_blocks.") and "x_embedder.weight" in keys:
        dev = _any(keys, "time_text_embed.guidance_embedder.")
        return "flux", "flux-dev" if dev else "flux-schnell", "diffusers"
    if _any(keys, "joint_blocks."):
        blocks = {k.split(".")[1] for k in keys if k.startswith("joint_blocks.")}
        return "sd3", "sd35-large" if len(blocks) >= 38 else "sd35-medium", "original"
    if "pos_embed.proj.weight" in keys and "context_embedder.weight" in keys and _any(keys, "transformer_blocks."):
        blocks = {k.split(".")[1] for k in keys if k.startswith("transformer_blocks.")}
        return "sd3", "sd35-large" if len(blocks) >= 38 else "sd35-medium", "diffusers"
    if {"img_in.weight", "txt_in.weight"} <= keys and _any(keys, "transformer_blocks."):
        return "qwen-image", "qwen-image", "diffusers"
    raise _bad(path, f"its tensors match no denoiser Easel loads from GGUF ({GGUF_FAMILIES})")
