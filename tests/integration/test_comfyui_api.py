"""ComfyUI's API on a tiny SD 1.5, through a ComfyUI client library (comfy-api-simplified) and through Open WebUI's
ComfyUI engine's request sequence as its code makes it (socket first, /prompt, wait for `executing` with no node,
/history, /view): each workflow gives the pixels of the same request through the library."""

import asyncio
import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
import websockets
from PIL import Image
from servers import serving
from tiny_pipelines import save_random_lora, save_tiny_controlnet

import easel

pytest.importorskip("comfy_api_simplified")
PROMPT = "a lighthouse at dawn"


@pytest.fixture
def comfy(tiny_models, easel_home):
    """The tiny SD 1.5 and a LoRA for it, served by `create_app` with API keys."""
    from diffusers import StableDiffusionPipeline

    from easel.config import Settings
    from easel.server.app import create_app

    shutil.copytree(tiny_models["sd15"], easel_home / "models" / "tiny")
    (easel_home / "loras").mkdir()
    save_random_lora(StableDiffusionPipeline.from_pretrained(tiny_models["sd15"]),
                     easel_home / "loras" / "ink.safetensors", seed=2)
    save_tiny_controlnet("sd15", easel_home / "controlnets" / "edges", seed=1)
    easel.api.reset_default_runner()
    app = create_app(Settings(home=easel_home, ui=False, api_keys="sk-comfy"), warm=False)
    with serving(app) as base:
        yield base


AUTH = {"authorization": "Bearer sk-comfy"}


def txt2img(seed=5, steps=2, cfg=6.0, sampler="euler", scheduler="normal", size=64, batch=1) -> dict:
    """ComfyUI's stock text-to-image workflow (its "Save (API Format)")."""
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
                                                   "scheduler": scheduler, "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def titled(graph: dict):
    """The workflow as ComfyUI exports it, each node with its `_meta` title (the client library finds nodes so)."""
    from comfy_api_simplified import ComfyWorkflowWrapper

    return ComfyWorkflowWrapper({k: {"_meta": {"title": v["class_type"]}, **v} for k, v in graph.items()})


def library(**kw) -> np.ndarray:
    options = dict(model="tiny", negative_prompt="fog", seed=5, steps=2, guidance=6.0, scheduler="euler",
                   size="64x64", save=False)
    options.update(kw)
    return np.asarray(easel.generate(PROMPT, **options)[0].image.convert("RGB"), dtype=np.int16)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def open_webui_generate(base: str, workflow: dict) -> tuple[list[bytes], list[dict]]:
    """Open WebUI's `comfyui_generate_image`: connect the socket with the key, queue the workflow with the same
    client id, read messages until `executing` names no node for this prompt, then /history and /view."""
    from websockets.sync.client import connect

    client_id, messages = "owui-1", []
    with connect(f"{base.replace('http', 'ws')}/ws?clientId={client_id}", additional_headers=AUTH) as ws:
        queued = httpx.post(f"{base}/prompt", json={"prompt": workflow, "client_id": client_id}, headers=AUTH)
        assert queued.status_code == 200, queued.text
        prompt_id = queued.json()["prompt_id"]
        while True:
            out = ws.recv(timeout=300)
            if isinstance(out, str):
                message = json.loads(out)
                messages.append(message)
                if message["type"] == "executing" and message["data"]["node"] is None \
                        and message["data"]["prompt_id"] == prompt_id:
                    break
    history = httpx.get(f"{base}/history/{prompt_id}", headers=AUTH).json()[prompt_id]
    images = [httpx.get(f"{base}/view", params={"filename": im["filename"], "subfolder": im["subfolder"],
                                                "type": im["type"]}, headers=AUTH).content
              for node in history["outputs"].values() for im in node["images"]]
    return images, messages


def test_open_webui_runs_the_stock_workflow_and_hears_comfyuis_messages(comfy):
    made, messages = open_webui_generate(comfy, txt2img())
    assert len(made) == 1 and np.array_equal(pixels(made[0]), library())
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "status" and "sid" in messages[0]["data"]
    start = kinds.index("execution_start")
    assert kinds[start:start + 3] == ["execution_start", "execution_cached", "executing"]
    assert messages[start + 2]["data"]["node"] == "3"  # the sampler
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [p["value"] for p in progress] == [1, 2] and all(p["max"] == 2 and p["node"] == "3" for p in progress)
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["type"] == "output"
    assert kinds[-2:] == ["execution_success", "executing"]
    # its edits: the picture uploaded to /api/upload/image (with `type: input`), its name put in the LoadImage node
    picture = Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    png = io.BytesIO()
    picture.save(png, format="PNG")
    uploaded = httpx.post(f"{comfy}/api/upload/image", headers=AUTH, data={"type": "input"},
                          files={"image": ("photo.png", png.getvalue(), "image/png")}).json()
    assert uploaded["type"] == "input" and uploaded["subfolder"] == ""
    graph = txt2img()
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": uploaded["name"]}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"].update(latent_image=["11", 0], denoise=0.7)
    [made], _ = open_webui_generate(comfy, graph)
    expected = easel.vary(picture, PROMPT, model="tiny", negative_prompt="fog", seed=5, steps=2, guidance=6.0,
                          scheduler="euler", strength=0.7, save=False)[0].image
    assert np.array_equal(pixels(made), np.asarray(expected.convert("RGB"), dtype=np.int16))
    shown = httpx.get(f"{comfy}/view", params={"filename": uploaded["name"], "type": "input"}, headers=AUTH)
    assert np.array_equal(pixels(shown.content), np.asarray(picture, dtype=np.int16))


def test_a_comfyui_client_library_runs_img2img_inpaint_loras_and_the_hires_fix(comfy):
    from comfy_api_simplified import ComfyApiWrapper

    api = ComfyApiWrapper(comfy.replace("http://", "http://user:sk-comfy@"))
    info = api.get_object_info()
    assert "tiny" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "ink.safetensors" in info["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert api.get_system_stats()["devices"][0]["type"] == "cpu"

    # the stock workflow, through the library's own calls (queue, socket, history, view)
    stock = titled(txt2img(seed=7, sampler="dpmpp_2m", scheduler="karras"))
    [made] = api.queue_and_wait_images(stock, "SaveImage").values()
    assert np.array_equal(pixels(made), library(seed=7, scheduler="dpm++_karras"))

    # image-to-image: an uploaded picture through LoadImage and VAEEncode, at the sampler's denoise
    picture = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    picture.save(source := comfy_tmp() / "in.png")
    name = api.upload_image(str(source))["name"]
    graph = txt2img()
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"].update(latent_image=["11", 0], denoise=0.6)
    [made] = api.queue_and_wait_images(titled(graph), "SaveImage").values()
    expected = easel.vary(picture, PROMPT, model="tiny", negative_prompt="fog", seed=5, steps=2, guidance=6.0,
                          scheduler="euler", strength=0.6, save=False)[0].image
    assert np.array_equal(pixels(made), np.asarray(expected.convert("RGB"), dtype=np.int16))

    # inpainting: the mask from the picture's transparent pixels (LoadImage's MASK), repainted at denoise 1
    holed = picture.convert("RGBA")
    holed.paste((0, 0, 0, 0), (16, 16, 48, 48))
    holed.save(source := comfy_tmp() / "holed.png")
    name = api.upload_image(str(source))["name"]
    graph = txt2img()
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    graph["11"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["10", 0], "vae": ["4", 2],
                                                                   "mask": ["10", 1], "grow_mask_by": 0}}
    graph["3"]["inputs"]["latent_image"] = ["11", 0]
    [made] = api.queue_and_wait_images(titled(graph), "SaveImage").values()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    greyed = picture.copy()  # VAEEncodeForInpaint greys the area to repaint before encoding it
    greyed.paste((128, 128, 128), (16, 16, 48, 48))
    expected = easel.edit(greyed, PROMPT, mask=mask, model="tiny", negative_prompt="fog", seed=5,
                          steps=2, guidance=6.0, scheduler="euler", strength=1.0, save=False)[0].image
    assert np.array_equal(pixels(made), np.asarray(expected.convert("RGB"), dtype=np.int16))

    # a ControlNet on both conditionings (its image as it is: ComfyUI's preprocessors are nodes of their own)
    graph = txt2img()
    graph["16"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "edges"}}
    graph["17"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    graph["18"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["16", 0], "image": ["17", 0], "strength": 0.8,
        "start_percent": 0.0, "end_percent": 1.0}}
    graph["3"]["inputs"].update(positive=["18", 0], negative=["18", 1])
    [made] = api.queue_and_wait_images(titled(graph), "SaveImage").values()
    from easel.control import ControlUnit

    unit = ControlUnit("edges", Image.open(comfy_tmp() / "holed.png").convert("RGB"), "none", weight=0.8)
    assert np.array_equal(pixels(made), library(control=[unit]))

    # a LoRA chain, clip skip, and a latent upscale into a second sampler (the hires fix)
    graph = txt2img()
    graph["12"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                         "lora_name": "ink.safetensors", "strength_model": 0.7,
                                                         "strength_clip": 0.7}}
    graph["13"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["12", 1], "stop_at_clip_layer": -2}}
    graph["3"]["inputs"]["model"] = ["12", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["13", 0]
    graph["14"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "bicubic",
                                                              "scale_by": 1.5}}
    graph["15"] = {"class_type": "KSampler", "inputs": {**graph["3"]["inputs"], "latent_image": ["14", 0],
                                                       "denoise": 0.5, "steps": 2}}
    graph["8"]["inputs"]["samples"] = ["15", 0]
    [made] = api.queue_and_wait_images(titled(graph), "SaveImage").values()
    assert Image.open(io.BytesIO(made)).size == (96, 96)
    assert np.array_equal(pixels(made), library(loras={"ink": 0.7}, clip_skip=1, hires_scale=1.5,
                                                hires_upscaler="latent-bicubic", hires_strength=0.5, hires_steps=2))


_TMP = []


def comfy_tmp():
    import tempfile
    from pathlib import Path

    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="easel-comfy-")))
    return _TMP[0]


def test_workflows_easel_cannot_run_are_refused_in_comfyuis_shape(comfy):
    def queued(graph):
        return httpx.post(f"{comfy}/api/prompt", json={"prompt": graph}, headers=AUTH)

    unknown = txt2img()
    unknown["20"] = {"class_type": "KSamplerAdvancedCustomThing", "inputs": {}}
    answer = queued(unknown)
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_prompt"
    assert "KSamplerAdvancedCustomThing" in answer.json()["error"]["message"]
    bad = txt2img()
    bad["4"]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    errors = queued(bad).json()["node_errors"]
    assert errors["4"]["errors"][0]["type"] == "value_not_in_list" and errors["4"]["class_type"] == \
        "CheckpointLoaderSimple"
    steps = txt2img(steps=0)
    assert queued(steps).json()["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"
    two = txt2img()  # a second output showing another picture: two generations, not one
    two["21"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    two["22"] = {"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}}
    answer = queued(two).json()
    assert answer["error"]["type"] == "prompt_outputs_failed_validation" and "one generation" in json.dumps(answer)
    skip = txt2img()  # Easel's own check, named at the node that set the value
    skip["13"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -24}}
    skip["6"]["inputs"]["clip"] = ["13", 0]
    errors = queued(skip).json()["node_errors"]
    assert list(errors) == ["13"] and "clip_skip" in errors["13"]["errors"][0]["message"]
    assert queued(None).json()["error"]["type"] == "no_prompt"
    loop = txt2img()  # a LoRA whose model is its own output
    loop["12"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["12", 0], "lora_name": "ink.safetensors",
                                                                 "strength_model": 1.0}}
    loop["3"]["inputs"]["model"] = ["12", 0]
    answer = queued(loop)
    assert answer.status_code == 400 and "loop" in json.dumps(answer.json())
    large = txt2img(size=4096)  # over the model's largest side: named at the latent's node
    assert list(queued(large).json()["node_errors"]) == ["5"]
    assert httpx.post(f"{comfy}/prompt", json={"prompt": txt2img()}).status_code == 401  # keys apply
    assert httpx.get(f"{comfy}/view", params={"filename": "../../etc/passwd"}, headers=AUTH).status_code == 404


def test_queue_interrupt_history_and_the_socket_need_a_key(comfy):
    async def refused():
        with pytest.raises(websockets.exceptions.WebSocketException):
            async with websockets.connect(f"{comfy.replace('http', 'ws')}/ws?clientId=x") as ws:
                await ws.recv()

    asyncio.run(refused())
    long = txt2img(steps=60)
    first = httpx.post(f"{comfy}/prompt", json={"prompt": long}, headers=AUTH).json()["prompt_id"]
    second = httpx.post(f"{comfy}/prompt", json={"prompt": txt2img(steps=61)}, headers=AUTH).json()["prompt_id"]
    queue = httpx.get(f"{comfy}/queue", headers=AUTH).json()
    assert {item[1] for item in queue["queue_running"] + queue["queue_pending"]} == {first, second}
    for _ in range(600):  # the first runs (its model loading), the second waits behind it
        queue = httpx.get(f"{comfy}/queue", headers=AUTH).json()
        if [item[1] for item in queue["queue_running"]] == [first]:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert [item[1] for item in queue["queue_pending"]] == [second]
    httpx.post(f"{comfy}/queue", json={"delete": [second]}, headers=AUTH)
    httpx.post(f"{comfy}/interrupt", headers=AUTH)
    for _ in range(600):
        history = httpx.get(f"{comfy}/history", headers=AUTH).json()
        if first in history and second in history:
            break
        asyncio.run(asyncio.sleep(0.1))
    assert history[first]["status"]["messages"][-1][0] == "execution_interrupted"
    assert history[second]["status"]["completed"] is False
    assert httpx.get(f"{comfy}/prompt", headers=AUTH).json() == {"exec_info": {"queue_remaining": 0}}
    assert httpx.get(f"{comfy}/history/nope", headers=AUTH).json() == {}
    b64 = base64.b64encode(b"x").decode()
    assert httpx.post(f"{comfy}/upload/image", files={"image": ("x.png", b64)}, headers=AUTH).status_code == 400


def test_previews_come_as_comfyuis_binary_frames_when_asked_for(comfy):
    """With a preview method in `extra_data` (ComfyUI sends none by default), the socket carries binary frames:
    event 1 (a preview), format 2 (PNG), then the PNG of the image at that step."""
    from websockets.sync.client import connect

    frames = []
    with connect(f"{comfy.replace('http', 'ws')}/ws?clientId=previews", additional_headers=AUTH) as ws:
        queued = httpx.post(f"{comfy}/prompt", headers=AUTH, json={
            "prompt": txt2img(steps=6), "client_id": "previews", "extra_data": {"preview_method": "auto"}})
        prompt_id = queued.json()["prompt_id"]
        while True:
            out = ws.recv(timeout=300)
            if isinstance(out, bytes):
                frames.append(out)
            elif json.loads(out)["type"] == "executing" and json.loads(out)["data"]["node"] is None \
                    and json.loads(out)["data"]["prompt_id"] == prompt_id:
                break
    assert frames and frames[0][:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02"
    assert Image.open(io.BytesIO(frames[0][8:])).size == (64, 64)
