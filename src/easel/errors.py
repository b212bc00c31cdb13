"""Easel's exceptions: one tree, each class knowing its HTTP status and OpenAI error `type` / `code`.

    EaselError
     ├── InvalidRequestError        400  a parameter is missing, malformed or out of range (`param` names it)
     │    ├── ContentPolicyError    400  the prompt (or an image) breaks the content policy
     │    └── UnsupportedError      400  the model cannot do what was asked (edit, variation, an option)
     ├── AuthenticationError        401  a key is missing or wrong
     │    └── MissingKeyError       401  a remote provider has no key configured
     ├── PermissionDeniedError      403  the key may not do this
     ├── NotFoundError              404  an id (image, job, file) that does not exist or has expired
     │    └── ModelNotFoundError    404  the model name is unknown, or its weights are not on this machine
     ├── JobCancelledError          409  the job was cancelled (by its caller, an interrupt, or a disconnect)
     ├── PayloadTooLargeError       413  a body or an upload over its limit
     ├── RateLimitError             429  too many requests, or the queue is full (`retry_after` seconds)
     ├── ProviderError              502  a remote provider failed
     ├── ServiceUnavailableError    503  the model is still loading, or the server is overloaded
     ├── InsufficientStorageError   507  the workspace's disk is full: nothing was saved
     │    └── OutOfMemoryError      507  the device ran out of memory for this request (the server goes on)
     └── GenerationError            500  the model failed while running

Foreign exceptions (diffusers, torch, the openai client, ...) are translated in exactly one place per front.
"""

from __future__ import annotations


class EaselError(Exception):
    """Base of every error Easel raises on purpose."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        """The OpenAI error object: `{"message", "type", "param", "code"}`."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def renamed(self, names: dict[str, str]) -> EaselError:
        """This error in a front's own terms: `param`, and the name in the message, as `names` maps them
        (`{"num_inference_steps": "steps"}` for the A1111 API, `{"n": "-n"}` for the CLI)."""
        if self.param not in names:
            return self
        new = names[self.param]
        self.message = self.message.replace(f"`{self.param}`", f"`{new}`")
        self.args = (self.message,)
        self.param = new
        return self


class InvalidRequestError(EaselError, ValueError):
    """Raised when a request parameter is missing, malformed or out of range; `param` names the parameter."""

    status = 400
    type = "invalid_request_error"


class ContentPolicyError(InvalidRequestError):
    """Raised when a prompt or image is refused by the content policy; the message names the category."""

    code = "content_policy_violation"


class UnsupportedError(InvalidRequestError):
    """Raised when the chosen model cannot do what was asked (an edit, a variation, an option)."""

    code = "unsupported"


class AuthenticationError(EaselError):
    """Raised when an API key is missing or not valid."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class MissingKeyError(AuthenticationError):
    """Raised when a remote provider needs a key and none is configured; the message says how to set one."""

    code = "missing_api_key"


class PermissionDeniedError(EaselError):
    """Raised when a valid key may not do what was asked."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(EaselError):
    """Raised when an image, job or file id does not exist, or a signed link has expired."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """Raised when a model name is unknown, or its weights are neither on this machine nor reachable."""

    code = "model_not_found"


class JobCancelledError(EaselError):
    """Raised to whoever waits on a job that was cancelled before it finished; no image was kept."""

    status = 409
    type = "invalid_request_error"
    code = "job_cancelled"


class PayloadTooLargeError(EaselError):
    """Raised when a request body or an uploaded file is over its limit."""

    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimitError(EaselError):
    """Raised when a caller sends too much, or the queue is full; `retry_after` says when to try again."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ProviderError(EaselError):
    """Raised when a remote provider (OpenAI, Hugging Face) fails for a reason that is not the caller's."""

    status = 502
    type = "server_error"
    code = "provider_error"


class ServiceUnavailableError(EaselError):
    """Raised while a model is still loading, or when the server cannot take work now."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class InsufficientStorageError(EaselError):
    """Raised when the workspace's disk (or its SQLite history) is full: the image or record was not written, and
    nothing half-written was left behind. The same request succeeds once space is freed."""

    status = 507
    type = "server_error"
    code = "insufficient_storage"


class OutOfMemoryError(InsufficientStorageError):
    """Raised when the device (a GPU) runs out of memory running a request: its memory is released and the server
    goes on; a smaller size or batch, `offload=model` or `vae_tiling` fits."""

    code = "insufficient_memory"


class GenerationError(EaselError):
    """Raised when a model fails while generating (out of memory, a numerical failure, a broken pipeline)."""

    status = 500
    type = "server_error"
    code = "generation_failed"


def error_from(status: int, error: dict) -> EaselError:
    """An error that an Easel server answered (`{"message", "type", "param", "code"}` and its status) as the same
    Easel error again: what a client of the server (the CLI handing its jobs to one) raises."""
    by_code = {"content_policy_violation": ContentPolicyError, "unsupported": UnsupportedError,
               "model_not_found": ModelNotFoundError, "missing_api_key": MissingKeyError}
    by_status = {400: InvalidRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
                 409: JobCancelledError, 413: PayloadTooLargeError, 429: RateLimitError, 502: ProviderError,
                 503: ServiceUnavailableError, 507: InsufficientStorageError}
    cls = by_code.get(error.get("code") or "") or by_status.get(status, GenerationError)
    return cls(str(error.get("message") or f"The server answered {status}."), param=error.get("param"),
               code=error.get("code"))
