import os
import sqlite3

import pytest
from PIL import Image

from easel.metadata import read_a1111_text, read_parameters
from easel.db import SQLITE_MIGRATIONS
from easel.store import History, Workspace, write_atomically
from easel.types import GeneratedImage

PARAMS = {"prompt": "a red circle", "negative_prompt": "blue", "model": "builtin", "seed": 42,
          "num_inference_steps": 20, "guidance_scale": 4.0, "width": 64, "height": 48, "scheduler": None,
          "version": "0.1.0"}


def image(fmt="png"):
    return GeneratedImage(image=Image.new("RGB", (64, 48), (200, 30, 30)), seed=42, parameters=dict(PARAMS),
                          output_format=fmt)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_metadata_round_trips_in_every_format(tmp_path, fmt):
    saved = Workspace(tmp_path).save(image(fmt))
    with Image.open(saved.path) as im:
        assert im.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
        assert read_parameters(im) == PARAMS
        text = read_a1111_text(im)
    assert text.splitlines()[0] == "a red circle"
    assert "Negative prompt: blue" in text and "Seed: 42" in text and "Size: 64x48" in text


def test_names_are_unique_and_every_image_is_in_the_history(tmp_path):
    ws = Workspace(tmp_path)
    paths = {ws.save(image()).path for _ in range(5)}
    assert len(paths) == 5
    rows = ws.history.recent(10)
    assert len(rows) == 5 and {r["path"] for r in rows} == paths
    assert ws.history.recent(10, search="red circle") and not ws.history.recent(10, search="lion")


def test_out_dir_overrides_the_image_folder_but_not_the_history(tmp_path):
    ws = Workspace(tmp_path / "home", tmp_path / "elsewhere")
    saved = ws.save(image())
    assert os.path.dirname(saved.path) == str(tmp_path / "elsewhere")
    assert History(tmp_path / "home" / "history.db").get(saved.id)["path"] == saved.path


def test_a_crash_between_writing_and_renaming_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"

    def crash(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomically(target, b"\x89PNG" + b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_history_is_migrated_once_and_uses_wal(tmp_path):
    History(tmp_path / "h.db")
    History(tmp_path / "h.db")  # a second open runs no migration again
    conn = sqlite3.connect(tmp_path / "h.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
