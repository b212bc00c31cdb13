"""Bearer-key checks for every route but /health and signed file links."""

from __future__ import annotations

import hmac

PUBLIC_PATHS = ("/health",)


def parse_keys(raw: str) -> list[str]:
    return [k.strip() for k in raw.split(",") if k.strip()]


def is_public(path: str) -> bool:
    """/health, and signed file links (their signature is checked by the file route)."""
    if path in PUBLIC_PATHS:
        return True
    parts = path.strip("/").split("/")
    if parts and parts[0] == "v1":
        parts = parts[1:]
    return len(parts) == 3 and parts[0] == "files" and parts[2] == "content"


def key_is_valid(header: str | None, keys: list[str]) -> bool:
    if not header or not header.lower().startswith("bearer "):
        return False
    given = header[7:].strip()
    return any(hmac.compare_digest(given, k) for k in keys)
