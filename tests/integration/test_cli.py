"""The CLI end to end with the built-in model (in process, through Typer's runner)."""

import json
import os
import stat

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from easel.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_generate_json_show_history_and_reproduce(tmp_path):
    out = invoke("generate", "a small yellow square at the top on a black background", "-n", "2", "--seed", "9",
                 "--steps", "6", "--json", "--out", str(tmp_path / "imgs"))
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [r["seed"] for r in rows] == [9, 10]
    for r in rows:
        assert {"path", "prompt", "seed", "model", "width", "height"} <= set(r)
        assert r["model"] == "builtin" and (r["width"], r["height"]) == (256, 256)
        assert os.path.dirname(r["path"]) == str(tmp_path / "imgs") and os.path.isfile(r["path"])

    shown = json.loads(invoke("show", rows[0]["path"], "--json").stdout)
    assert shown["seed"] == 9 and shown["num_inference_steps"] == 6 and shown["prompt"].startswith("a small yellow")
    assert "Seed: 9" in invoke("show", rows[0]["path"]).stdout

    again = json.loads(invoke("generate", "--from", rows[0]["path"], "--json").stdout.strip())
    assert again["seed"] == 9 and again["path"] != rows[0]["path"]
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (rows[0]["path"], again["path"]))
    assert np.array_equal(a, b)

    history = [json.loads(line) for line in invoke("history", "--json", "-n", "5").stdout.strip().splitlines()]
    assert len(history) == 3 and history[0]["path"] == again["path"]


def test_prompts_file_generates_each_prompt(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\n\na green triangle on a white background\n")
    out = invoke("generate", "--prompts-file", str(prompts), "--steps", "4", "--seed", "1", "--json")
    rows = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle on a blue background",
                                           "a green triangle on a white background"]


def test_unknown_words_are_reported_on_stderr():
    result = runner.invoke(app, ["generate", "a lion having coffee", "--steps", "2"])
    assert result.exit_code == 0
    assert "ignored words not in the built-in model's vocabulary: lion, having, coffee" in result.output


def test_bad_input_is_one_clear_line_and_exit_code_2():
    result = runner.invoke(app, ["generate", "a red circle", "-n", "11"])
    assert result.exit_code == 2 and "`-n` must be between 1 and 10 but is 11" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["generate", "a red circle", "-o", "true_cfg_scale=4"])
    assert result.exit_code == 2 and "Unknown option 'true_cfg_scale'" in result.output


def test_keys_are_stored_owner_only_and_resolved_in_order(easel_home, monkeypatch):
    from easel.config import get_settings
    from easel.keys import get_key

    invoke("keys", "set", "hf", "--value", "hf_stored")
    path = get_settings().keys_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert invoke("keys", "list").stdout.split() == ["hf"]
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert get_key(path, "hf", "hf_explicit") == "hf_explicit"
    assert get_key(path, "hf") == "hf_stored"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert get_key(path, "openai") == "sk-env"


def test_missing_key_says_how_to_set_it(tmp_path):
    import pytest

    from easel.errors import MissingKeyError
    from easel.keys import get_key

    with pytest.raises(MissingKeyError) as info:
        get_key(tmp_path / "keys.json", "openai", required=True)
    assert "easel keys set openai" in info.value.message


def test_models_lists_availability():
    rows = json.loads(invoke("models", "--json").stdout)
    builtin = next(r for r in rows if r["name"] == "builtin")
    assert builtin["local"] is True
    assert any(r["name"] == "flux-dev" and r["gated"] for r in rows)


def test_a_local_pipeline_run_prints_only_its_result(tmp_path, tiny_models):
    """No progress bars of the libraries (the derived image-to-image pipeline's included), no notices about their
    optional backends: stdout has the image, stderr nothing."""
    import subprocess
    import sys

    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(picture)
    done = subprocess.run([sys.executable, "-m", "easel.cli", "vary", str(picture), "a cat", "-m",
                           str(tiny_models["sd15"]), "-n", "2", "--steps", "2", "--local"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 2
    assert done.stderr == "", done.stderr
