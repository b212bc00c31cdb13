"""Prompt enhancement through the real `openai` client against a small OpenAI-compatible chat server started here
on 127.0.0.1: the rewrite is what the model receives and what every front reports as `revised_prompt`; a slow or
failing chat model leaves the prompt as written, with a warning, and the image is made all the same."""

import asyncio
import shutil
import subprocess
import sys
import time

import numpy as np
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from servers import serving

import easel
import easel.api

REWRITE = ", golden hour light, wide shot, detailed"


@pytest.fixture
def chat():
    """The chat server: it answers with the prompt and some words, slowly or with an error when told to."""
    app = FastAPI()
    state = {"mode": "ok", "seen": []}

    @app.post("/v1/chat/completions")
    async def complete(body: dict):
        state["seen"].append(body)
        if state["mode"] == "slow":
            await asyncio.sleep(4)
        if state["mode"] == "fail":
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
        text = body["messages"][-1]["content"] + REWRITE
        return {"id": "chat-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": f'"{text}"'}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    with serving(app, healthy=False) as base:
        state["url"] = f"{base}/v1"
        yield state


@pytest.fixture
def enhanced(chat, tiny_models, easel_home, monkeypatch):
    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    monkeypatch.setenv("EASEL_PROMPT_ENHANCER_MODEL", "test-chat")
    monkeypatch.setenv("EASEL_PROMPT_ENHANCER_URL", chat["url"])
    monkeypatch.setenv("EASEL_PROMPT_ENHANCER_TIMEOUT_S", "1.5")
    easel.api.reset_default_runner()
    return chat


KW = dict(model="tiny", size="64x64", steps=2, seed=5, save=False)


def pixels(result) -> np.ndarray:
    return np.asarray(result[0].image, dtype=np.int16)


def test_a_short_prompt_is_rewritten_and_the_model_receives_the_rewrite(enhanced):
    made = easel.generate("a castle", **KW)
    assert made.revised_prompt == "a castle" + REWRITE and not made.warnings
    params = made[0].parameters
    assert params["prompt"] == "a castle" and params["revised_prompt"] == "a castle" + REWRITE
    assert params["prompt_enhancer"] == "test-chat"
    asked = enhanced["seen"][-1]
    assert asked["model"] == "test-chat" and asked["messages"][-1]["content"] == "a castle"
    assert "comma-separated" in asked["messages"][0]["content"]  # SD 1.5's prompt style
    plain = easel.generate("a castle" + REWRITE, enhance_prompt=False, **KW)
    assert np.array_equal(pixels(made), pixels(plain))


def test_which_prompts_are_rewritten(enhanced):
    seen = enhanced["seen"]
    easel.generate("a castle", enhance_prompt=False, **KW)
    long = " ".join(["a tall castle on a green hill under a blue sky"] * 3)
    easel.generate(long, **KW)  # long prompts stay as written unless asked
    easel.generate("a (castle:1.3) on a hill", **KW)  # so do prompts whose writer weighed the words
    assert seen == []
    easel.generate(long, enhance_prompt=True, **KW)
    assert len(seen) == 1
    builtin = easel.generate("a red circle", model="builtin", enhance_prompt=True, size="64x64", save=False)
    assert len(seen) == 1 and "not rewritten" in builtin.warnings[0]  # the built-in model reads its own words


@pytest.mark.parametrize("mode, error", [("slow", "APITimeoutError"), ("fail", "InternalServerError")])
def test_a_slow_or_failing_chat_model_never_fails_the_image(enhanced, mode, error):
    enhanced["mode"] = mode
    started = time.monotonic()
    made = easel.generate("a castle", **KW)
    assert time.monotonic() - started < 4  # the timeout (1.5 s), not the chat model's 4 s
    assert made[0].image.size == (64, 64) and made.revised_prompt is None
    assert f"failed ({error})" in made.warnings[0]
    assert "prompt_enhancer" not in made[0].parameters


def test_the_server_reports_the_rewrite_and_from_reproduces_it(enhanced, easel_home):
    from easel.config import Settings
    from easel.server.app import create_app

    with serving(create_app(Settings(home=easel_home, ui=False), warm=False)) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        res = client.images.generate(prompt="a lighthouse", model="tiny", size="64x64", response_format="url",
                                     extra_body={"num_inference_steps": 2, "seed": 9})
        assert res.data[0].revised_prompt == "a lighthouse" + REWRITE
        kept = client.images.generate(prompt="a lighthouse", model="tiny", size="64x64",
                                      extra_body={"num_inference_steps": 2, "enhance_prompt": False})
        assert kept.data[0].revised_prompt in (None, "a lighthouse")
    calls = len(enhanced["seen"])
    assert calls == 1
    from PIL import Image

    from easel.metadata import read_parameters

    saved = [p for p in (easel_home / "images").rglob("*.png") if "prompt_enhancer" in read_parameters(Image.open(p))]
    assert len(saved) == 1
    again = subprocess.run([sys.executable, "-m", "easel.cli", "generate", "--from", str(saved[0]), "--json"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert len(enhanced["seen"]) == calls  # the recorded rewrite is used, not asked for again
    assert '"a lighthouse' + REWRITE in again.stdout
