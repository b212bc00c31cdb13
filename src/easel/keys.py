"""API keys: those Easel sends to remote providers and the hub (explicit argument -> stored key -> environment ->
`.env`), and the check of those that clients present to Easel's servers."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from pathlib import Path

from .errors import MissingKeyError

# provider -> the environment variable its official client reads
ENV_VARS = {"openai": "OPENAI_API_KEY", "hf": "HF_TOKEN"}


def _read(path: Path) -> dict[str, str]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def set_key(path: Path, name: str, value: str) -> None:
    """Store a key in a file only its owner can read (0600), written to a temp file and renamed."""
    keys = _read(path)
    keys[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f, indent=2)
    os.replace(tmp, path)


def stored_keys(path: Path) -> dict[str, str]:
    return _read(path)


def get_key(path: Path, name: str, explicit: str | None = None, *, required: bool = False) -> str | None:
    """The key for `name` in resolution order; with `required`, a missing key says how to set one."""
    if explicit:
        return explicit
    value = _read(path).get(name)
    env = ENV_VARS.get(name, f"{name.upper()}_API_KEY")
    value = value or os.environ.get(env)
    if not value and Path(".env").is_file():
        from dotenv import dotenv_values

        value = dotenv_values(".env").get(env)
    if not value and required:
        raise MissingKeyError(f"No key for {name}: run `easel keys set {name}` or set {env}.")
    return value or None


def parse_keys(raw: str) -> list[str]:
    """EASEL_API_KEYS ("k1,k2") -> the keys Easel's servers accept. A value that is set but names no key
    (",", " , ") or a key that no client could send (white space or control characters inside it) is a
    ValueError: a mistyped key list must never start a server without auth."""
    if not raw.strip():
        return []
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    if not keys:
        raise ValueError(f"EASEL_API_KEYS is set to {raw!r}, which names no key: give keys separated by commas, "
                         "or unset it.")
    for key in keys:
        if not all(33 <= ord(c) <= 126 for c in key):
            raise ValueError(f"EASEL_API_KEYS holds a key with white space, control or non-ASCII characters "
                             f"(key {keys.index(key) + 1} of {len(keys)}): clients could not send it.")
    return keys


def key_is_valid(header: str | None, keys: list[str]) -> bool:
    """`Authorization: Bearer KEY`, or HTTP Basic with the key as password (what A1111 clients send)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    else:
        return False
    return bool(given) and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys)
