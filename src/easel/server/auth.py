"""Which routes are open without a Bearer key: /health, signed file links (their signature is checked by the route)
and the web UI under /ui (it asks for the key on its own login page)."""

from __future__ import annotations

PUBLIC_PATHS = ("/health",)


def is_public(path: str) -> bool:
    if path in PUBLIC_PATHS or path == "/ui" or path.startswith("/ui/"):
        return True
    parts = path.strip("/").split("/")
    if parts and parts[0] == "v1":
        parts = parts[1:]
    return len(parts) == 3 and parts[0] == "files" and parts[2] == "content"
