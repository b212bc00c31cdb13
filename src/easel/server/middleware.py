"""The frame around every HTTP request of Easel's servers (the API server and the MCP server over HTTP), as named
pieces of plain ASGI (so that a route still sees its client disconnect), put together by `frame`:

    RequestId -> CatchErrors -> ApiKeys -> BodyLimit -> the app
"""

from __future__ import annotations

import abc
import re
import uuid
from collections.abc import Callable

from ..errors import PayloadTooLargeError
from ..keys import key_is_valid
from . import errors as server_errors
from .auth import is_public

MAX_JSON_BYTES = 2 * 1024 * 1024
MAX_MULTIPART_BYTES = 16 * 50 * 1024 * 1024 + 1024 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class _HttpMiddleware(abc.ABC):
    """Plain ASGI around `app`: HTTP requests go through `handle`, anything else (lifespan, websockets) past it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    @abc.abstractmethod
    async def handle(self, scope, receive, send) -> None:
        """Answer, or pass to `self.app`, one HTTP request."""


class RequestId(_HttpMiddleware):
    """An `x-request-id` on every answer: the client's own when it is a sane token, else a new one."""

    async def handle(self, scope, receive, send) -> None:
        given = _headers(scope).get("x-request-id", "")
        tag = (b"x-request-id", (given if _REQUEST_ID.fullmatch(given) else f"req_{uuid.uuid4().hex}").encode())

        async def send_tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), tag]}
            await send(message)

        await self.app(scope, receive, send_tagged)


class CatchErrors(_HttpMiddleware):
    """The one catch for what nothing else answered: an error envelope, never a traceback."""

    async def handle(self, scope, receive, send) -> None:
        started = False

        async def send_watched(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_watched)
        except Exception as exc:  # noqa: BLE001 - the one mapping point
            if started:  # the answer is already on its way: all that is left is to log it
                server_errors.log.exception("error after the response started")
                return
            await server_errors.error_response(exc)(scope, receive, send)


class ApiKeys(_HttpMiddleware):
    """With keys configured, a valid `Authorization: Bearer` key on every route that `public` does not open."""

    def __init__(self, app, keys: list[str], public: Callable[[str], bool] = is_public):
        super().__init__(app)
        self.keys, self.public = keys, public

    async def handle(self, scope, receive, send) -> None:
        if (self.keys and scope["method"] != "OPTIONS" and not self.public(scope["path"])
                and not key_is_valid(_headers(scope).get("authorization"), self.keys)):
            refusal = server_errors.envelope(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                                             "invalid_request_error", None, "invalid_api_key")
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit(_HttpMiddleware):
    """Request bodies up to a limit (multipart bodies carry images, so theirs is larger): a declared length over it
    is refused at once, a chunked body is counted as it arrives and cut off there (413)."""

    def __init__(self, app, max_json_bytes: int = MAX_JSON_BYTES, max_multipart_bytes: int = MAX_MULTIPART_BYTES):
        super().__init__(app)
        self.max_json_bytes, self.max_multipart_bytes = max_json_bytes, max_multipart_bytes

    async def handle(self, scope, receive, send) -> None:
        headers = _headers(scope)
        multipart = headers.get("content-type", "").startswith("multipart/")
        limit = self.max_multipart_bytes if multipart else self.max_json_bytes
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            refusal = server_errors.envelope(413, f"The request body is over {limit} bytes.", "invalid_request_error",
                                             None, "payload_too_large")
            await refusal(scope, receive, send)
            return
        received = 0

        async def receive_counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"The request body is over {limit} bytes.")
            return message

        await self.app(scope, receive_counted, send)


def frame(app, keys: list[str], public: Callable[[str], bool] = is_public, max_json_bytes: int = MAX_JSON_BYTES,
          max_multipart_bytes: int = MAX_MULTIPART_BYTES):
    """`app` inside the whole frame: request ids, the error catch, API keys and body limits."""
    inner = BodyLimit(app, max_json_bytes, max_multipart_bytes)
    return RequestId(CatchErrors(ApiKeys(inner, keys, public)))
