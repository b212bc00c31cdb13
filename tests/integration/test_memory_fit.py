"""The memory plan on a real model: a machine with too little memory free refuses the model before queueing or
loading anything, naming its size and the memory free; `easel models` says each model's size and whether it fits,
and /health the memory in use and free."""

import json
import os
import shutil
import subprocess
import sys

import httpx
import pytest
from servers import serving

import easel
import easel.api
from easel.errors import InvalidRequestError
from easel.providers.diffusers import memory

KW = dict(model="tiny", size="64x64", steps=2, seed=4, save=False)


@pytest.fixture
def sd15(tiny_models, easel_home):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    easel.api.reset_default_runner()


def test_a_model_that_cannot_fit_is_refused_before_it_loads(sd15, monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: (None, 2_000_000))  # 2 MB of RAM free
    with pytest.raises(InvalidRequestError) as caught:
        easel.generate("a lighthouse", **KW)
    assert caught.value.param == "model" and caught.value.code == "model_too_large"
    assert "needs about" in caught.value.message and "0.0 GB is free of RAM" in caught.value.message
    assert easel.api.default_runner().registry.get("diffusers").cache.keys() == []  # nothing loaded
    runner = easel.api.default_runner()
    said = runner.footprint(runner.catalog.resolve("tiny"))  # what `easel models` says of it here
    assert said["fits"] == "no" and "needs about" in said["why"] and said["size_gb"] is not None
    monkeypatch.undo()
    assert easel.generate("a lighthouse", **KW)[0].image.size == (64, 64)


def test_models_say_their_size_and_health_the_memory(sd15, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    listed = subprocess.run([sys.executable, "-m", "easel.cli", "models", "--json"], capture_output=True, text=True,
                            env={**os.environ}, check=True)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    need = memory.needs(easel_home / "models" / "tiny", "float32", "none", 64 * 64, 1)
    assert rows["tiny"]["size_gb"] == round(need.weights / 1e9, 2) and rows["tiny"]["fits"] == "yes"
    assert rows["flux-dev"]["size_gb"] is None and "unknown" in rows["flux-dev"]["fits"]  # not on this machine
    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        httpx.post(f"{base}/v1/images/generations", json={"prompt": "a lighthouse", "model": "tiny",
                                                           "size": "64x64", "num_inference_steps": 2}, timeout=120)
        state = httpx.get(f"{base}/health").json()["memory"]
    assert state["device"] == "cpu" and state["ram_free_gb"] > 0 and state["process_rss_gb"] > 0
    assert state["models_bytes"] > 0  # the tiny model, loaded by the request
