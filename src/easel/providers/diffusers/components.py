"""Components a family's releases leave out (HiDream's fourth text encoder, Llama 3.1 8B Instruct), named in the
catalog with their class and repository (`ModelFamily.components`), loaded from there where a folder lacks them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelNotFoundError

if TYPE_CHECKING:
    from ...catalog import ModelSpec


def missing(spec: ModelSpec, folder: Path | None) -> dict[str, tuple[str, str]]:
    """The family's components that `folder` (None: not on this machine) lacks: name -> (class, repository)."""
    return {name: where for name, where in spec.family.components.items()
            if folder is None or not (Path(folder) / name).is_dir()}


def load(spec: ModelSpec, folder: Path, dtype, token: str | None) -> dict[str, Any]:
    """The components `folder` lacks, from their own repositories (hub cache first; downloaded where the model's
    own files may be), by name, for `from_pretrained`."""
    import transformers

    from .loading import offline

    out = {}
    for name, (class_name, repo) in missing(spec, folder).items():
        where = folder_of(repo, not offline(), token)
        cls = getattr(transformers, class_name)
        out[name] = cls.from_pretrained(where, dtype=dtype) if issubclass(cls, transformers.PreTrainedModel) \
            else cls.from_pretrained(where)
    return out


def folder_of(repo: str, download: bool, token: str | None) -> Path:
    """A component's repository from the hub cache, or downloaded; not there: how to get it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=not download, token=token))
    except Exception:  # noqa: BLE001 - not cached, gated or unreachable: said as one
        raise ModelNotFoundError(f"This model needs {repo} beside its own files (its releases leave it out), and it "
                                 f"is not on this machine: accept its licence on the hub and run `easel models pull` "
                                 f"for the model with network access.", param="model") from None
