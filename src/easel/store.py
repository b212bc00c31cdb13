"""The workspace: image files under unique names, and the history of every generation (SQLite or PostgreSQL)."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .db import open_database
from .errors import InsufficientStorageError
from .types import GeneratedImage

_SLUG = re.compile(r"[^a-z0-9]+")


def slugify(prompt: str, limit: int = 40) -> str:
    return _SLUG.sub("-", prompt.lower()).strip("-")[:limit].rstrip("-") or "image"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: ENOSPC or a quota from the OS, SQLITE_FULL from SQLite, disk_full (53100)
    from PostgreSQL."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    if getattr(exc, "sqlstate", None) == "53100":
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


@contextlib.contextmanager
def storage_errors(home: Path) -> Iterator[None]:
    """Turn a full disk under `home` into InsufficientStorageError; every other error passes unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a full disk
        if not is_disk_full(exc):
            raise
        raise out_of_space(home) from exc


def out_of_space(home: Path) -> InsufficientStorageError:
    return InsufficientStorageError(f"The workspace {home} is out of disk space, so nothing was saved: free some "
                                    "space and send the request again.")


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp name in the same folder, flush to disk, then rename: a crash leaves no half file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class History:
    """The history of every generation and the job records, shared by every front: SQLite in the workspace, or the
    PostgreSQL database that `target` names (`postgresql://...`), shared by every replica of a cluster."""

    def __init__(self, target: Path | str):
        self.db = open_database(target)

    def record(self, image: GeneratedImage) -> None:
        p = image.parameters
        self.db.execute(
            "INSERT INTO generations (id, created, model, prompt, negative_prompt, seed, width, height, steps,"
            " guidance, path, parameters) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (image.id, p.get("created") or now_iso(), p.get("model", ""), p.get("prompt", ""),
             p.get("negative_prompt"), image.seed, image.width, image.height, p.get("num_inference_steps"),
             p.get("guidance_scale"), image.path, json.dumps(p, ensure_ascii=False)),
        )

    def recent(self, limit: int = 20, search: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM generations"
        args: list[Any] = []
        if search:
            sql += " WHERE lower(prompt) LIKE lower(?)"
            args.append(f"%{search}%")
        sql += f" ORDER BY {self.db.newest_first} LIMIT ?"
        args.append(limit)
        return self.db.query(sql, args)

    def get(self, image_id: str) -> dict[str, Any] | None:
        return self.db.query_one("SELECT * FROM generations WHERE id = ?", (image_id,))

    def delete(self, image_id: str) -> None:
        self.db.execute("DELETE FROM generations WHERE id = ?", (image_id,))


class Workspace:
    """Where images are saved and recorded. `out_dir` overrides the image folder (the history stays in home)."""

    def __init__(self, home: Path, out_dir: Path | None = None, database_url: str | None = None):
        self.home = Path(home)
        self.out_dir = Path(out_dir) if out_dir else None
        self.history = History(database_url or self.home / "history.db")

    def folder_for(self, when: dt.datetime) -> Path:
        folder = self.out_dir or self.home / "images" / when.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def images_root(self) -> Path:
        return self.out_dir or self.home / "images"

    def save(self, image: GeneratedImage) -> GeneratedImage:
        """Give the image an id, write it under a unique name (atomically) and record it in the history."""
        return self.save_all([image])[0]

    def save_all(self, images: list[GeneratedImage]) -> list[GeneratedImage]:
        """Save every image or none: if one cannot be written or recorded (a full disk raises
        InsufficientStorageError), the files and rows already written for the others are removed again."""
        done: list[GeneratedImage] = []
        try:
            with storage_errors(self.home):
                for image in images:
                    self._write(image)
                    done.append(image)
        except BaseException:
            for image in done:
                self._remove(image)
            raise
        return images

    def _write(self, image: GeneratedImage) -> None:
        when = dt.datetime.now(dt.timezone.utc)
        image.id = image.id or uuid.uuid4().hex
        ext = "jpg" if image.output_format == "jpeg" else image.output_format
        seed = "" if image.seed is None else image.seed
        name = f"{when:%Y%m%d-%H%M%S}-{slugify(image.parameters.get('prompt', ''))}-{seed}-{image.id[:8]}.{ext}"
        path = self.folder_for(when) / name
        write_atomically(path, image.to_bytes())
        image.path = str(path)
        try:
            self.history.record(image)
        except BaseException:
            path.unlink(missing_ok=True)
            image.path = None
            raise

    def _remove(self, image: GeneratedImage) -> None:
        """Undo a save, as far as it went; failures to undo are left for `easel history` to show as missing."""
        with contextlib.suppress(OSError, *self.history.db.errors):
            self.history.delete(image.id)
        with contextlib.suppress(OSError):
            Path(image.path).unlink(missing_ok=True)
        image.path = None

    def image_file(self, image_id: str) -> Path | None:
        """The saved file of an image, only when it is a regular file inside the images folder: a row whose path
        leads elsewhere, or a symbolic link planted where an image was, is never followed."""
        row = self.history.get(image_id)
        if row is None or not row["path"]:
            return None
        path = Path(row["path"])
        root = self.images_root.resolve()
        try:
            if stat.S_ISLNK(path.lstat().st_mode) or not path.resolve().is_relative_to(root):
                return None
            return path if path.is_file() else None
        except (OSError, ValueError):
            return None

    def read_image(self, image_id: str) -> tuple[str, bytes] | None:
        """The file name and bytes of a saved image, opened without following a link (see `image_file`)."""
        path = self.image_file(image_id)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            return path.name, f.read()
