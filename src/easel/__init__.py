"""Easel: text to image, from one library, CLI, server and web UI, with any model.

    import easel
    result = easel.generate("a large red circle on the left on a blue background", seed=7)
    print(result[0].path)
"""

__version__ = "0.1.0"

from .api import edit, generate, vary  # noqa: E402
from .errors import (  # noqa: E402
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
from .types import GeneratedImage, ImageRequest, ImageResult  # noqa: E402

__all__ = [
    "AuthenticationError",
    "ContentPolicyError",
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
    "vary",
]
