"""The memory plan: before a model loads, what it needs (its components' sizes, read from its files' headers, in
the dtype or quantization it will load in, and an allowance for the work at the size asked) against the memory free
on its device and in RAM; from that, where it goes (all on the device, model offload, group offload, sequential
offload), or a refusal with the numbers when it cannot fit even offloaded."""

from __future__ import annotations

import dataclasses
import json
import struct
from functools import lru_cache
from pathlib import Path

from ...errors import InvalidRequestError

GB = 1e9
# bytes a parameter takes in each dtype a pipeline loads in, and after each quantization of the denoiser
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
QUANTIZED_BYTES = {"fp8": 1, "int8": 1, "int8_dynamic": 1, "nf4": 0.5}
DENOISERS = ("unet", "transformer")
HEADROOM = 0.9  # of the free memory a plan fills: the allocator's own overhead and what other processes take
# the placements a plan chooses from, fastest first (the `offload` option's values)
PLACEMENTS = ("none", "model", "group", "sequential")


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a model needs: bytes per component in the dtype it loads in, and the working memory of one call."""

    components: dict[str, int]
    work: int

    @property
    def weights(self) -> int:
        return sum(self.components.values())

    @property
    def largest(self) -> int:
        return max(self.components.values(), default=0)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a model goes and why, in words a user reads in a result's warnings."""

    offload: str
    why: str


def parameters(path: Path) -> int:
    """How many parameters a safetensors file holds (from its header; no weights read)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for n in info["shape"]:
                count *= int(n)
            total += count
    return total


def component_params(folder: Path) -> dict[str, int]:
    """Parameters per component of a pipeline folder (each one's safetensors headers; a `.bin` file by its size at
    four bytes a parameter), read once per version of its `model_index.json`."""
    return dict(_component_params(str(folder), (folder / "model_index.json").stat().st_mtime_ns))


@lru_cache(maxsize=64)
def _component_params(folder: str, stamp: int) -> tuple[tuple[str, int], ...]:
    folder = Path(folder)
    out: dict[str, int] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = list(sub.glob("*.safetensors"))
        count = sum(parameters(f) for f in files) if files else sum(f.stat().st_size // 4 for f in sub.glob("*.bin"))
        if count:
            out[sub.name] = count
    return tuple(out.items())


def needs(folder: Path | None, dtype: str, quantize: str, pixels: int, batch: int, gguf: Path | None = None,
          borrowed: dict[str, Path] | None = None) -> Needs:
    """A pipeline's needs: its folder's components in `dtype` (the denoiser quantized, or a GGUF file's bytes as
    they stay), those it borrows from other repositories (`borrowed`: name -> folder), and the working memory of a
    call making `batch` images of `pixels` each."""
    per = DTYPE_BYTES.get(dtype, 4)
    params = component_params(folder) if folder is not None else {}
    for name, where in (borrowed or {}).items():
        params[name] = sum(parameters(f) for f in where.glob("*.safetensors"))
    sizes = {name: int(count * per) for name, count in params.items()}
    for name in DENOISERS:
        if name in sizes and gguf is not None:
            sizes[name] = gguf.stat().st_size
        elif name in sizes and quantize in QUANTIZED_BYTES:
            sizes[name] = int(params[name] * QUANTIZED_BYTES[quantize])
    return Needs(sizes, work_bytes(pixels, batch, per))


def work_bytes(pixels: int, batch: int, per: float) -> int:
    """An allowance for one call's activations and the VAE's decode: 2.5 GB a megapixel an image in half precision
    (FLUX.1-dev peaks 2.6 GB above its weights at 1024x1024 on an H200), never under 0.5 GB."""
    return int(max(0.5 * GB, 2.5 * GB * pixels / 1e6 * batch * per / 2))


def choose(need: Needs, device: str, device_free: int | None, ram_free: int, offload: str | None = None) -> Plan:
    """The placement: `offload` where the request or the server set one; else the fastest that fits, as the table
    in the README says. Raises when nothing fits, with the numbers."""
    if offload not in (None, "auto"):
        return Plan(offload, f"offload={offload} as asked")
    gb = lambda n: f"{n / GB:.1f} GB"  # noqa: E731
    if device == "cpu" or device_free is None:
        total = need.weights + need.work
        if total <= ram_free * HEADROOM or ram_free <= 0:
            return Plan("none", f"needs about {gb(total)}, {gb(ram_free)} of RAM free")
        raise _too_big(total, ram_free, "of RAM")
    room, ram = device_free * HEADROOM, ram_free * HEADROOM
    if need.weights + need.work <= room:
        return Plan("none", f"needs about {gb(need.weights + need.work)}, {gb(device_free)} free on {device}")
    if need.weights > ram:
        raise _too_big(need.weights, ram_free, "of RAM to hold it offloaded")
    if need.largest + need.work <= room:
        return Plan("model", f"needs about {gb(need.weights + need.work)} and {device} has {gb(device_free)} free: "
                             f"model offload (its largest part, {gb(need.largest)}, on {device} at a time)")
    if need.work + 1 * GB <= room:
        return Plan("group", f"its largest part ({gb(need.largest)}) does not fit the {gb(device_free)} free on "
                             f"{device}: group offload (its layers moved to {device} as they run)")
    if need.work <= room:
        return Plan("sequential", f"{device} has {gb(device_free)} free: sequential offload (slow: every layer "
                                  f"moved at every step)")
    raise _too_big(need.work, device_free, f"on {device} for the work at this size")


def _too_big(need: int, free: int, where: str) -> InvalidRequestError:
    return InvalidRequestError(f"The model does not fit: it needs about {need / GB:.1f} GB, and {free / GB:.1f} GB "
                               f"is free {where}. Use a GGUF file (flux-dev:Q4_0), quantize=int8 or nf4, a smaller "
                               f"size, or a machine with more memory.", param="model", code="model_too_large")


def free_memory(device: str) -> tuple[int | None, int]:
    """(free bytes on the device, None for the CPU; free bytes of RAM: MemAvailable)."""
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            ram = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):  # not Linux: no bound known
        ram = 0
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0], ram
    return None, ram


def rss() -> int:
    """This process's resident memory in bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
