import subprocess
import sys
from pathlib import Path


def test_help_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from easel.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'generate' in r.output; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'PIL') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_help_and_bad_input_exit_codes(tmp_path):
    exe = [sys.executable, "-m", "easel.cli"]
    assert subprocess.run([*exe, "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([*exe, "generate", "a red circle", "--size", "100x100"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "`--size` has to be divisible by 8 for builtin but its width is 100" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = subprocess.run([*exe, "generate", "x", "-m", "nope"], capture_output=True, text=True)
    assert unknown.returncode == 1 and "Unknown model 'nope'" in unknown.stderr


def test_errors_name_the_option_the_user_typed(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "a red circle", "--steps", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "`--steps` must be between 1 and 500 but is 0." in done.stderr


def cli(*args, stdin=None, env=None, timeout=120):
    import os

    return subprocess.run([sys.executable, "-m", "easel.cli", *args], capture_output=True, text=True, input=stdin,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_a_failure_that_is_not_easels_is_one_line_and_a_traceback_only_with_debug(tmp_path):
    missing = str(tmp_path / "missing.txt")  # reading it fails with FileNotFoundError, not an Easel error
    plain = cli("generate", "--prompts-file", missing)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "Error: FileNotFoundError" in plain.stderr and "easel --debug" in plain.stderr
    debug = cli("--debug", "generate", "--prompts-file", missing)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_batches_run_one_after_another_with_seeds_following_on():
    import json

    done = cli("generate", "a red circle", "--size", "64x64", "--steps", "2", "-n", "2", "--batches", "3",
               "--seed", "10", "--json")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["seed"] for line in done.stdout.splitlines()] == [10, 11, 12, 13, 14, 15]


def test_a_key_piped_in_is_stored_without_a_prompt_or_a_warning(tmp_path):
    import json
    import os

    done = cli("keys", "set", "openai", stdin="sk-piped\n")
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    stored = json.loads((Path(os.environ["EASEL_HOME"]) / "keys.json").read_text())
    assert stored["openai"] == "sk-piped"


def test_each_commands_help_describes_its_own_options():
    gen, serve, vary = cli("generate", "--help"), cli("serve", "--help"), cli("vary", "--help")
    assert "Model name, alias, hub id or local folder" in gen.stdout
    assert "Model name, alias" not in serve.stdout
    for option in ("--steps", "--guidance", "--negative", "--size", "--option"):
        assert option in vary.stdout, option
    assert "per image" not in cli("models", "--help").stdout and "per image" not in cli("history", "--help").stdout


def test_the_history_shows_whole_paths():
    made = cli("generate", "a red circle", "--size", "64x64", "--steps", "2", "--json")
    import json

    path = json.loads(made.stdout.splitlines()[0])["path"]
    shown = cli("history", "-n", "1", env={"COLUMNS": "100"})
    assert path.replace("/", "").replace("-", "") in shown.stdout.replace("\n", "").replace(" ", "").replace(
        "│", "").replace("/", "").replace("-", "")


def test_pull_without_the_hub_says_it_could_not_be_reached_and_what_to_check():
    from servers import free_port

    # a hub address on loopback where nothing listens: the connection is refused at once, nothing leaves
    done = cli("models", "pull", "nobody/not-here", env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                                                         "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2",
                                                         "HF_HUB_DOWNLOAD_TIMEOUT": "2"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the hub could not be reached" in done.stderr and "HTTPS_PROXY" in done.stderr
    assert "HF_ENDPOINT" in done.stderr
    offline = cli("models", "pull", "nobody/not-here", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and "HF_HUB_OFFLINE is set" in offline.stderr


def test_a_server_that_cannot_start_says_why_in_one_line(tmp_path):
    folder = tmp_path / "sd15"  # named like a catalog model: the operator must rename it
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    done = cli("serve", "--port", "1", "--model", str(folder), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "like a model Easel already knows: rename it" in done.stderr


def test_cluster_options_go_with_ray_and_are_checked_before_anything_starts(tmp_path):
    exe = [sys.executable, "-m", "easel.cli", "serve"]
    alone = subprocess.run([*exe, "--replicas", "2"], capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2 and "go with --ray" in alone.stderr
    import os

    env = {**os.environ, "EASEL_RAY_AUTOSCALE": "4:1"}
    bad = subprocess.run([*exe, "--ray"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "EASEL_RAY_AUTOSCALE" in bad.stderr and "MIN <= MAX" in bad.stderr
    worse = subprocess.run([*exe, "--ray", "--autoscale", "many"], capture_output=True, text=True, timeout=60)
    assert worse.returncode == 2 and "MIN:MAX" in worse.stderr and "Traceback" not in worse.stderr


def test_option_errors_name_the_cli_option_and_a_broken_model_file_is_said_once(tmp_path):
    """A missing `--control` image names `--control`; `--hires 8` names `--hires`; a file of the models folder that
    cannot run is listed by `easel models` (as unusable, with why), not repeated by every other command; `--json`
    paths are absolute."""
    import json
    import os

    env = {**os.environ, "EASEL_HOME": str(tmp_path / "home"), "EASEL_HOST": "off"}
    (tmp_path / "home" / "models").mkdir(parents=True)
    (tmp_path / "home" / "models" / "broken.safetensors").write_bytes(b"not a checkpoint")
    exe = [sys.executable, "-m", "easel.cli"]

    def run(*args):
        return subprocess.run([*exe, *args], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)

    missing = run("generate", "a red circle", "--control", "edges:nope.png", "--local")
    assert missing.returncode == 2 and "`--control`: cannot read 'nope.png'" in missing.stderr
    assert "FileNotFoundError" not in missing.stderr and "broken" not in missing.stderr
    assert "`--hires` must be between 1.0 and 4.0 but is 8.0" in run("generate", "x", "--hires", "8").stderr
    listed = json.loads(run("models", "--json").stdout)
    unusable = [row for row in listed if row["kind"] == "unusable"]
    assert [row["name"] for row in unusable] == ["broken.safetensors"] and "cannot run" in unusable[0]["description"]
    made = run("generate", "a red circle", "--size", "64x64", "--steps", "2", "--json", "--out", "here", "--local")
    assert made.returncode == 0 and made.stderr == "", made.stderr
    assert json.loads(made.stdout)["path"] == str(tmp_path / "here" / Path(json.loads(made.stdout)["path"]).name)
