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


def load_secret(path: Path, configured: str | None = None) -> bytes:
    """The server's signing secret: the configured one (hex; every replica of a cluster shares it), else the one in
    `path`, created once (0600) so that links survive a restart. Replicas starting together on a shared home agree:
    the first file linked into place wins and every replica reads it."""
    if configured:
        try:
            return bytes.fromhex(configured.strip())
        except ValueError:
            raise ValueError("EASEL_SERVER_SECRET must be hexadecimal (e.g. from `openssl rand -hex 32`).") from None
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        unreadable = False
    except ValueError:
        unreadable = True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_bytes(32).hex())
    try:
        if unreadable:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another process linked its secret first: that one is read below
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


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


def signed_image(signer: UrlSigner, workspace, image_id: str, expires: str | None,
                 signature: str | None) -> tuple[str, bytes, str] | None:
    """The saved image behind a signed link (file name, bytes, media type), or None: a bad or expired link, or no
    such image (the route answers 404 for both, saying which)."""
    import mimetypes

    if not signer.verify(image_id, expires, signature):
        return None
    found = workspace.read_image(image_id)
    if found is None:
        return None
    return found[0], found[1], mimetypes.guess_type(found[0])[0] or "application/octet-stream"
