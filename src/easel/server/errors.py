"""The server's one place that turns exceptions into OpenAI error envelopes. No traceback reaches a client."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import EaselError, RateLimitError

log = logging.getLogger("easel.server")
_HTTP_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error"}


def envelope(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)


def error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, EaselError):
        headers = {}
        if isinstance(exc, RateLimitError):
            headers["retry-after"] = str(max(1, round(exc.retry_after)))
            headers["retry-after-ms"] = str(int(exc.retry_after * 1000))
            headers["x-should-retry"] = "true"
        elif exc.status >= 500 and exc.status != 503:
            headers["x-should-retry"] = "false"  # a failed generation would fail again
        return envelope(exc.status, exc.message, exc.type, exc.param, exc.code, headers)
    if isinstance(exc, RequestValidationError):
        return validation_error(exc)
    if isinstance(exc, HTTPException):
        if isinstance(exc.__cause__, EaselError):  # FastAPI wraps what reading the body raised (a body too large)
            return error_response(exc.__cause__)
        message = {404: "Not found.", 405: "Method not allowed."}.get(exc.status_code, str(exc.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return envelope(exc.status_code, message, _HTTP_TYPES.get(exc.status_code, "invalid_request_error"),
                        None, code)
    log.exception("unexpected server error")
    return envelope(500, "The server failed to handle the request.", "server_error", None, "internal_error",
                    {"x-should-retry": "false"})


def validation_error(exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form")]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "missing":
        message = f"Missing required parameter: '{param}'."
    elif kind == "extra_forbidden":
        message = f"Unknown parameter: '{param}'."
    elif kind == "json_invalid":
        message, param = "The body is not valid JSON.", None
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')} (got {first.get('input')!r})."
    return envelope(400, message, "invalid_request_error", param, "invalid_value" if kind != "missing" else
                    "missing_required_parameter")


async def handle(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)
