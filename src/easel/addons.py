"""The folders of files a user adds to Easel, one entry a kind: the inventory that settings (a folder each, with
its `EASEL_<KIND>_DIR` variable), the listings and Ray's replicas read, so that a new kind is one line here."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class FolderKind:
    """A kind of file Easel finds by name in a folder: `EASEL_HOME/<folder>` unless `<folder>_dir` is set."""

    folder: str
    holds: str

    @property
    def setting(self) -> str:
        """The settings field (and, upper-cased with EASEL_, the environment variable) that moves the folder."""
        return f"{self.folder}_dir"


FOLDERS = (
    FolderKind("models", "diffusers pipeline folders and single-file checkpoints, served by name"),
    FolderKind("loras", "LoRA files (.safetensors) that requests name"),
    FolderKind("embeddings", "textual-inversion embeddings (.safetensors) that prompts use by name"),
    FolderKind("controlnets", "ControlNet models by name: diffusers folders (config.json and its weights)"),
    FolderKind("ip_adapters", "IP-Adapters by name: the adapter's weights (.safetensors) beside its image_encoder"),
    FolderKind("upscalers", "upscaler models by name: ESRGAN-family files, or diffusers pipeline folders (SD's x4)"),
    FolderKind("configs", "pipeline configurations (no weights) that single-file checkpoints load with, one folder "
               "per kind of checkpoint (v1, xl_base, sd35_medium, flux-dev, ...), filled by `easel models pull`"),
)
