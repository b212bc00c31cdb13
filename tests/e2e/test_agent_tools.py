"""Agent tools: `easel.tools.generate_image`, and `easel mcp` through the official `mcp` SDK's clients (stdio and
streamable HTTP on 127.0.0.1)."""

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from PIL import Image

from servers import free_port

from easel import __version__ as easel_version
from easel.tools import generate_image

PROMPT = "a large red circle on the left on a white background"


def test_generate_image_returns_one_line_with_the_saved_path():
    line = generate_image(PROMPT, size="32x32", seed=3)
    assert line.startswith("Saved 1 image to ") and "\n" not in line and "seed 3" in line
    path = line.removeprefix("Saved 1 image to ").split(" (model")[0]
    assert Path(path).is_file() and Image.open(path).size == (32, 32)
    assert generate_image("a red circle", model="no-such-model").startswith("Error: Unknown model 'no-such-model'")
    assert "`size`" in generate_image("a red circle", size="33x32")


def test_providers_command_lists_the_registered_providers():
    out = subprocess.run([sys.executable, "-m", "easel.cli", "providers", "--json"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    names = {row["name"]: row["class"] for row in json.loads(out)}
    assert names == {"diffusers": "easel.providers.diffusers.provider.DiffusersProvider",
                     "openai": "easel.providers.openai_remote.OpenAIProvider",
                     "hf": "easel.providers.hf_inference.HFInferenceProvider"}


async def _session_calls(session: ClientSession, tmp_path: Path, paths_allowed: bool) -> None:
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"generate_image", "edit_image", "list_models"}
    assert "prompt" in tools["generate_image"].input_schema["properties"]

    made = await session.call_tool("generate_image", {"prompt": PROMPT, "size": "32x32", "seed": 4})
    assert not made.is_error and [c.type for c in made.content] == ["text", "image", "resource_link"]
    text, image, link = made.content
    assert "seed 4" in text.text and image.mime_type == "image/png" and link.mime_type == "image/png"
    picture = Image.open(io.BytesIO(base64.b64decode(image.data)))
    assert picture.size == (32, 32)
    image_id = text.text.split("Image id: ")[1].split(".")[0]
    # a link a client that drops image blocks can open: the saved file (stdio), or a signed URL that needs no key
    uri = str(link.uri)
    opened = Path(uri.removeprefix("file://")).read_bytes() if paths_allowed else httpx.get(uri).content
    assert opened == base64.b64decode(image.data) and (uri in text.text) != paths_allowed
    if not paths_allowed:
        assert httpx.get(uri.replace("signature=", "signature=0")).status_code == 404

    models = json.loads((await session.call_tool("list_models", {})).content[0].text)
    assert models["default"] == "builtin" and any(m["name"] == "builtin" and m["local"] for m in models["models"])

    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    edited = await session.call_tool("edit_image", {"image": image_id, "prompt": "a blue square on the left",
                                                    "mask": base64.b64encode(buf.getvalue()).decode(), "seed": 1})
    assert not edited.is_error and edited.content[1].type == "image"

    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    by_path = await session.call_tool("edit_image", {"image": image_id, "prompt": "a blue square",
                                                     "mask": str(mask_path)})
    assert by_path.is_error != paths_allowed  # paths only for a local (stdio) client

    bad = await session.call_tool("generate_image", {"prompt": PROMPT, "size": "33x32"})
    assert bad.is_error and "`size`" in bad.content[0].text and "Traceback" not in bad.content[0].text
    steps = await session.call_tool("generate_image", {"prompt": PROMPT, "steps": 0})
    assert steps.is_error and "`steps` must be between 1 and 500" in steps.content[0].text  # the tool's name
    whole = await session.call_tool("edit_image", {"image": image_id, "prompt": "a blue square", "seed": 2})
    assert not whole.is_error, "no mask and no transparency: the whole picture, as the prompt says"


def test_mcp_server_over_stdio(tmp_path):
    async def main():
        params = StdioServerParameters(command=sys.executable, args=["-m", "easel.cli", "mcp"],
                                       env={**os.environ, "EASEL_HOME": str(tmp_path / "mcp-home")})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                info = await session.initialize()
                assert info.server_info.name == "easel" and info.server_info.version == easel_version
                await _session_calls(session, tmp_path, paths_allowed=True)

    anyio.run(main)
    assert list((tmp_path / "mcp-home" / "images").rglob("*.png")), "the tools save into the workspace"


@pytest.fixture
def mcp_http(tmp_path):
    port = free_port()
    env = {**os.environ, "EASEL_HOME": str(tmp_path / "mcp-home"), "EASEL_API_KEYS": "sk-mcp"}
    proc = subprocess.Popen([sys.executable, "-m", "easel.cli", "mcp", "--transport", "http", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def test_mcp_server_over_streamable_http_with_a_key(mcp_http, tmp_path):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    assert httpx.post(mcp_http, json={}).status_code == 401

    async def main():
        async with httpx2.AsyncClient(headers={"authorization": "Bearer sk-mcp"}, timeout=120) as client:
            async with streamable_http_client(mcp_http, http_client=client) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    await _session_calls(session, tmp_path, paths_allowed=False)

    anyio.run(main)
