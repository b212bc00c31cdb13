"""`easel generate/edit/vary` hand their jobs to a running server when one answers at EASEL_HOST, and run
in-process when none does: the same images either way, saved and recorded once."""

import json
import os
import sqlite3
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from servers import free_port, running_server

KEY = "sk-cli-test"
PROMPT = "a large red circle on the left on a blue background"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("cli-server-home"), keys=KEY) as srv:
        yield srv


def cli(*args, home, host, key=KEY, timeout=180):
    env = {**os.environ, "EASEL_HOME": str(home), "EASEL_HOST": host, "EASEL_API_KEYS": key}
    done = subprocess.run([sys.executable, "-m", "easel.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return done


def rows(home, image_id):
    conn = sqlite3.connect(home / "history.db")
    return conn.execute("SELECT path FROM generations WHERE id = ?", (image_id,)).fetchall()


def server_jobs(server) -> list[dict]:
    return httpx.get(f"{server.base}/v1/jobs", headers={"authorization": f"Bearer {KEY}"}).json()["data"]


def test_generate_runs_on_the_server_and_gives_the_same_image_as_in_process(server, tmp_path):
    host = f"127.0.0.1:{server.port}"
    before = len(server_jobs(server))
    remote = cli("generate", PROMPT, "--seed", "5", "--steps", "6", "-n", "2", "--json", home=server.home, host=host)
    assert remote.returncode == 0, remote.stderr
    lines = [json.loads(line) for line in remote.stdout.splitlines()]
    assert [line["seed"] for line in lines] == [5, 6]
    assert len(server_jobs(server)) == before + 1, "the server ran the job"
    for line in lines:  # the server shares this workspace: its file, recorded once
        assert line["path"].startswith(str(server.home)) and len(rows(server.home, line["id"])) == 1
    local = cli("generate", PROMPT, "--seed", "5", "--steps", "6", "--json", "--local", home=tmp_path / "local",
                host=host)
    here = json.loads(local.stdout.splitlines()[0])
    assert len(server_jobs(server)) == before + 1, "--local ran in this process"
    same = np.asarray(Image.open(lines[0]["path"])), np.asarray(Image.open(here["path"]))
    assert np.abs(same[0].astype(int) - same[1]).max() <= 1


def test_a_caller_with_its_own_workspace_gets_the_files_and_history_rows(server, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    done = cli("generate", PROMPT, "--seed", "9", "--steps", "4", "--json", "--out", str(out), home=home,
               host=f"http://127.0.0.1:{server.port}")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.splitlines()[0])
    assert line["path"].startswith(str(out)) and rows(home, line["id"]) == [(line["path"],)]
    shown = cli("show", line["path"], "--json", home=home, host="off")
    assert json.loads(shown.stdout)["seed"] == 9


def test_edit_and_vary_run_on_the_server(server, tmp_path):
    home, host = tmp_path / "home", f"127.0.0.1:{server.port}"
    picture = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (40, 80, 220)).save(picture)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 32, 64))
    m.save(mask)
    before = len(server_jobs(server))
    edited = cli("edit", str(picture), "a large red circle on the left on a blue background", "--mask", str(mask),
                 "--seed", "1", "--steps", "6", "--json", home=home, host=host)
    assert edited.returncode == 0, edited.stderr
    params = json.loads(edited.stdout.splitlines()[0])
    assert Image.open(params["path"]).size == (64, 64)
    kept = np.asarray(Image.open(params["path"]).convert("RGB"), dtype=int)[:, 48:]
    assert np.abs(kept - np.asarray(Image.open(picture), dtype=int)[:, 48:]).max() == 0
    varied = cli("vary", str(picture), "a red circle", "--strength", "0.5", "-n", "2", "--steps", "6", "--json",
                 home=home, host=host)
    assert varied.returncode == 0, varied.stderr and len(varied.stdout.splitlines()) == 2
    assert len(server_jobs(server)) == before + 2


def test_edit_and_vary_on_the_server_keep_every_option_and_warning(server, tmp_path):
    """What `--local` does with an option, the hand-off does too: model options checked, the format kept, a command's
    own parameter refused as an option, the result's warnings printed."""
    home, host = tmp_path / "home", f"127.0.0.1:{server.port}"
    picture, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (40, 80, 220)).save(picture)
    Image.new("L", (64, 64), 255).save(mask)
    edit = ("edit", str(picture), PROMPT, "--mask", str(mask), "--steps", "2")
    vary = ("vary", str(picture), PROMPT, "--steps", "2")
    for where in ((), ("--local",)):
        for command in (edit, vary):
            bogus = cli(*command, "-o", "bogus=1", *where, home=home, host=host)
            assert bogus.returncode == 2 and "Unknown option 'bogus'" in bogus.stderr, (where, bogus.stderr)
        twice = cli(*edit, "-o", "inpaint_full_res=true", *where, home=home, host=host)
        assert twice.returncode == 2 and "`--option inpaint_full_res` is not an option of the model: use " \
            "--only-masked." in twice.stderr, twice.stderr
        for command, fmt in ((vary, "jpeg"), (edit, "webp")):
            made = cli(*command, "--format", fmt, "--json", *where, home=home, host=host)
            assert made.returncode == 0, made.stderr
            assert Image.open(json.loads(made.stdout)["path"]).format == fmt.upper(), (where, command[0])
        zebras = cli(*vary[:2], f"{PROMPT} with zebras", *vary[3:], *where, home=home, host=host)
        assert "Warning: ignored words not in the built-in model's vocabulary: zebras" in zebras.stderr, where


def test_errors_from_the_server_read_as_the_clis_own(server, tmp_path):
    host = f"127.0.0.1:{server.port}"
    bad = cli("generate", PROMPT, "--steps", "0", home=tmp_path, host=host)
    assert bad.returncode == 2 and "`--steps` must be between 1 and 500 but is 0." in bad.stderr
    nokey = cli("generate", PROMPT, home=tmp_path, host=host, key="")
    assert nokey.returncode == 1 and "API key" in nokey.stderr and "Traceback" not in nokey.stderr


def test_a_local_folder_or_no_server_runs_in_process(server, tmp_path):
    before = len(server_jobs(server))
    nobody = cli("generate", PROMPT, "--steps", "2", "--json", home=tmp_path, host=f"127.0.0.1:{free_port()}")
    assert nobody.returncode == 0, nobody.stderr
    from easel.catalog import default_catalog

    folder = str(default_catalog().resolve("builtin").local_path)
    direct = cli("generate", PROMPT, "--steps", "2", "-m", folder, "--json", home=tmp_path,
                 host=f"127.0.0.1:{server.port}")
    assert direct.returncode == 0, direct.stderr
    assert len(server_jobs(server)) == before


def test_upscale_runs_as_a_job_of_the_server(server, tmp_path):
    """`easel upscale` hands its job to the running server too (its engine, its copy of the model); `--local` and
    no server run it here; the same pixels either way."""
    small = tmp_path / "small.png"
    Image.effect_mandelbrot((48, 40), (-2, -1.2, 0.8, 1.2), 60).convert("RGB").save(small)
    expected = np.asarray(Image.open(small).resize((96, 80), Image.Resampling.LANCZOS))
    before = len(server_jobs(server))
    host = f"127.0.0.1:{server.port}"
    done = cli("upscale", str(small), "--scale", "2", home=tmp_path / "client", host=host)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "small-x2.png")
    jobs = server_jobs(server)
    assert len(jobs) == before + 1 and jobs[0]["status"] == "succeeded"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "small-x2.png")), expected)
    here = cli("upscale", str(small), "--scale", "2", "--local", "--output", str(tmp_path / "here.png"),
               home=tmp_path / "client", host=host)
    assert here.returncode == 0, here.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "here.png")), expected)
    assert len(server_jobs(server)) == before + 1
    refused = cli("upscale", str(small), "--scale", "20", home=tmp_path / "client", host=host)
    assert refused.returncode == 2 and "`scale` must be a number from 1 to 8" in refused.stderr
