"""The frame around every HTTP request of Easel's servers (the API server and the MCP server over HTTP)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from fastapi.responses import Response

from ..errors import PayloadTooLargeError
from ..keys import key_is_valid
from . import errors as server_errors
from .auth import is_public

MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_MULTIPART_BYTES = 16 * 50 * 1024 * 1024 + 1024 * 1024


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class FrameMiddleware:
    """Plain ASGI (so that a route sees its client disconnect): a request id on every answer, body limits
    (declared or chunked), the API key on every route but /health and signed links, and the one catch for
    unexpected errors."""

    def __init__(self, app, keys: list[str], public: Callable[[str], bool] = is_public,
                 max_json_bytes: int = MAX_JSON_BYTES, max_multipart_bytes: int = MAX_MULTIPART_BYTES):
        self.app, self.keys, self.public = app, keys, public
        self.max_json_bytes, self.max_multipart_bytes = max_json_bytes, max_multipart_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else f"req_{uuid.uuid4().hex}"
        tag = (b"x-request-id", request_id.encode("latin-1"))
        started = False

        async def send_tagged(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), tag]}
            await send(message)

        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send_tagged)
            return
        limit, received = self._body_limit(headers), 0

        async def receive_limited():
            """Count what arrives: a chunked body has no length to check up front, so it is cut off here."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"The request body is over {limit} bytes.")
            return message

        try:
            await self.app(scope, receive_limited, send_tagged)
        except Exception as exc:  # noqa: BLE001 - the one mapping point
            if started:  # the answer is already on its way: all that is left is to log it
                server_errors.log.exception("error after the response started")
                return
            await server_errors.error_response(exc)(scope, receive, send_tagged)

    def _refusal(self, scope, headers: dict[str, str]) -> Response | None:
        length, limit = headers.get("content-length", ""), self._body_limit(headers)
        if length.isascii() and length.isdigit() and int(length) > limit:
            return server_errors.envelope(413, f"The request body is over {limit} bytes.",
                                          "invalid_request_error", None, "payload_too_large")
        if self.keys and scope["method"] != "OPTIONS" and not self.public(scope["path"]) and not key_is_valid(
                headers.get("authorization"), self.keys):
            return server_errors.envelope(401, "Incorrect or missing API key: send `Authorization: Bearer "
                                          "<key>`.", "invalid_request_error", None, "invalid_api_key")
        return None

    def _body_limit(self, headers: dict[str, str]) -> int:
        multipart = headers.get("content-type", "").startswith("multipart/")
        return self.max_multipart_bytes if multipart else self.max_json_bytes
