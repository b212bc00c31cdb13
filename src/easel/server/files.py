"""Signed, expiring links to saved images: opaque ids, never a path from the request."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

URL_TTL_S = 60 * 60
_EXPIRES = re.compile(r"[0-9]{1,12}")  # ASCII digits: "²".isdigit() is True, int("²") raises


def load_secret(path: Path) -> bytes:
    """The server's signing secret, created once (0600) so that links survive a restart."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value.hex())
        return value


class UrlSigner:
    """Signs `image id + expiry` with HMAC-SHA256; `clock` is injectable so tests can move time."""

    def __init__(self, secret: bytes, ttl_s: int = URL_TTL_S, clock: Callable[[], float] = time.time):
        self.secret = secret
        self.ttl_s = ttl_s
        self.clock = clock

    def _signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self.secret, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, image_id: str) -> str:
        expires = int(self.clock()) + self.ttl_s
        return (f"{base_url.rstrip('/')}/v1/files/{image_id}/content"
                f"?expires={expires}&signature={self._signature(image_id, expires)}")

    def verify(self, image_id: str, expires: str | None, signature: str | None) -> bool:
        """True for a link this server signed that has not expired; any other text is simply not valid."""
        if not expires or not signature or not _EXPIRES.fullmatch(expires):
            return False
        given = signature.encode("utf-8", "replace")  # compare_digest takes bytes, or str in ASCII only
        good = hmac.compare_digest(self._signature(image_id, int(expires)).encode(), given)
        return good and self.clock() < int(expires)
