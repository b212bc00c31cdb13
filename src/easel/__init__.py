"""Easel: text to image, from one library, CLI, server and web UI, with any model.

    import easel
    result = easel.generate("a large red circle on the left on a blue background", seed=7)
    print(result[0].path)
"""

from ._version import __version__
from .api import edit, generate, upscale, vary
from .control import ControlUnit
from .errors import (
    AuthenticationError,
    ContentPolicyError,
    EaselError,
    GenerationError,
    InsufficientStorageError,
    InvalidRequestError,
    JobCancelledError,
    MissingKeyError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedError,
)
from .types import GeneratedImage, ImageRequest, ImageResult

__all__ = [
    "AuthenticationError",
    "ContentPolicyError",
    "ControlUnit",
    "EaselError",
    "GeneratedImage",
    "GenerationError",
    "ImageRequest",
    "ImageResult",
    "InsufficientStorageError",
    "InvalidRequestError",
    "JobCancelledError",
    "MissingKeyError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProviderError",
    "RateLimitError",
    "ServiceUnavailableError",
    "UnsupportedError",
    "__version__",
    "edit",
    "generate",
    "upscale",
    "vary",
]
