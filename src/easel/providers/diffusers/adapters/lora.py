"""LoRA adapters (diffusers' `load_lora_weights`, through peft): each file loaded once per pipeline under a name
never reused, the batch's LoRAs set at their weights and every other one off, each recorded by A1111's short hash."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ....catalog import lora_files, names_a_file
from ....errors import InvalidRequestError
from .. import fit
from ..errors import does_not_fit, refuse
from .base import Adapter, Call, ModelFiles, ShortHashes


@dataclasses.dataclass
class _Loaded:
    """The LoRAs a pipeline holds: (file, mtime) -> adapter name, and how many were loaded (for names)."""

    names: dict[tuple, str] = dataclasses.field(default_factory=dict)
    serial: int = 0


class Lora(Adapter):
    kind = param = "loras"

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.hashes = ShortHashes()

    def fits(self, family) -> bool:
        return family.loras

    def uses(self, requests) -> dict[str, float]:
        return requests[0].loras

    def file(self, name: str) -> Path:
        """A LoRA's file: `<name>.safetensors` in the loras folder, a path (which the request check allows only
        where the caller is the machine's user), or `hub:org/repo/file` (a `speed` preset's: the hub cache, or
        downloaded where models may be). Unknown: an error listing the LoRAs there are."""
        if name.startswith("hub:"):
            return _from_hub(name.removeprefix("hub:"))
        if names_a_file(name):
            path = Path(name).expanduser()
        else:  # in the loras folder only (none configured: no LoRA by name)
            file = name if name.endswith(".safetensors") else f"{name}.safetensors"
            path = self.folder / file if self.folder is not None else None
        if path is None or not path.is_file():
            there = sorted(lora_files(self.folder)) or ["none"]
            raise InvalidRequestError(f"No LoRA {name!r} (the loras folder has: {', '.join(there)}).", param="loras")
        return path

    def check(self, model: ModelFiles, uses: dict[str, float]) -> None:
        for name in uses:
            second_encoder = model.folder is not None and (model.folder / "text_encoder_2").is_dir()
            refuse(fit.lora_misfit(name, self.file(name), model.denoiser, model.spec.name, second_encoder), "loras")

    @contextlib.contextmanager
    def enter(self, call: Call, uses: dict[str, float]) -> Iterator[dict[str, Any]]:
        """Make `uses` the pipeline's active adapters at their weights, and every adapter off again after the call
        (the next call without LoRAs runs as if none had ever been loaded)."""
        pipe, held = call.loaded.pipe, call.loaded.state(self.kind, _Loaded)
        active, hashes = [], {}
        for name in uses:
            path = self.file(name)
            key = (str(path.resolve()), path.stat().st_mtime_ns)
            if key not in held.names:
                held.serial += 1  # a new name: one let go by the memory ledger may have had this count
                held.names[key] = self._load(pipe, path, name, f"easel_lora_{held.serial}")
            adapter = held.names[key]
            active.append(adapter)
            call.loaded.touch((self.kind, adapter), release=functools.partial(_release, pipe, held, key, adapter))
            hashes[Path(name).stem if os.sep in name else name] = self.hashes(path)
        call.details["lora_hashes"] = hashes
        try:
            pipe.enable_lora()
            pipe.set_adapters(active, adapter_weights=list(uses.values()))
            yield {}
        finally:
            pipe.disable_lora()

    @staticmethod
    def _load(pipe, path: Path, name: str, adapter: str) -> str:
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        except Exception as exc:  # noqa: BLE001 - not a LoRA, or one for another architecture
            with contextlib.suppress(Exception):
                pipe.delete_adapters(adapter)
            raise does_not_fit(f"The LoRA {name!r}", exc, "loras") from None
        return adapter


def _from_hub(name: str) -> Path:
    from huggingface_hub import hf_hub_download

    from ..loading import offline

    org, repo, file = name.split("/", 2)
    try:
        return Path(hf_hub_download(f"{org}/{repo}", file, local_files_only=offline()))
    except Exception:  # noqa: BLE001 - not cached while offline, or the hub unreachable
        raise InvalidRequestError(f"The LoRA {file} of {org}/{repo} is not on this machine: with network access, run "
                                  f"`hf download {org}/{repo} {file}`.", param="loras") from None


def _release(pipe, held: _Loaded, key: tuple, adapter: str) -> None:
    held.names.pop(key, None)
    pipe.delete_adapters([adapter])
