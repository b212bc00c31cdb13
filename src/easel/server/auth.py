"""Which routes are open without a Bearer key: /health, the site's icon, signed file links (their signature is
checked by the route) and the web UI under /ui (it asks for the key on its own login page)."""

from __future__ import annotations

import ipaddress

PUBLIC_PATHS = ("/health", "/favicon.ico")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address no other machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str], insecure: bool = False) -> str | None:
    """Refuse (ValueError) to listen beyond loopback with no keys unless `insecure`; then, a warning to print."""
    if is_loopback(host) or keys:
        return None
    if not insecure:
        raise ValueError(f"refusing to listen on {host} without API keys: set EASEL_API_KEYS, or pass --insecure.")
    return f"Warning: listening on {host} with no API key: anyone who can reach it can use it."


def is_public(path: str) -> bool:
    if path in PUBLIC_PATHS or path == "/ui" or path.startswith("/ui/"):
        return True
    parts = path.strip("/").split("/")
    if parts and parts[0] == "v1":
        parts = parts[1:]
    return len(parts) == 3 and parts[0] == "files" and parts[2] == "content"
