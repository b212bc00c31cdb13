import subprocess
import sys


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
