"""The one place where what diffusers, transformers and torch raise becomes an Easel error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ...errors import EaselError, GenerationError, InvalidRequestError, OutOfMemoryError

if TYPE_CHECKING:
    from ...catalog import ModelSpec


@contextlib.contextmanager
def pipeline_errors(spec: ModelSpec, doing: str) -> Iterator[None]:
    """What a pipeline raises as an Easel error naming the model and what it was doing ("loading", "generating",
    "inpainting", "making variations")."""
    import torch

    try:
        yield
    except EaselError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()  # what the failed call held goes back, so that the next request fits
        raise OutOfMemoryError(f"Out of GPU memory {doing} {spec.name}: try a smaller size or batch, offload=model "
                               f"or vae_tiling.") from exc
    except Exception as exc:
        if doing == "loading":
            raise GenerationError(f"{spec.name} could not be loaded: {type(exc).__name__}: {exc}") from exc
        if isinstance(exc, (ValueError, TypeError)):  # the pipeline's own check_inputs refused an argument
            raise InvalidRequestError(f"{spec.name} rejected the request while {doing}: {exc}") from exc
        raise GenerationError(f"{spec.name} failed while {doing}: {type(exc).__name__}: {exc}") from exc


def does_not_fit(what: str, exc: Exception, param: str) -> InvalidRequestError:
    """An add-on file that the pipeline refused (not one of its kind, or one for another architecture)."""
    detail = str(exc).splitlines()[0][:300] if str(exc) else ""
    return InvalidRequestError(f"{what} does not fit this model: {type(exc).__name__}: {detail}", param=param)


def refuse(misfit: str | None, param: str) -> None:
    """Raise a misfit found by `fit` as a client's error naming `param`."""
    if misfit is not None:
        raise InvalidRequestError(misfit, param=param)
