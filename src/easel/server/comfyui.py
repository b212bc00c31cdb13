"""ComfyUI's API on Easel's engine, for the clients that speak it (Open WebUI's and SillyTavern's ComfyUI engines,
Dify, LobeChat, Krita, scripts): /object_info, /prompt, /history, /view, /upload/image, /queue, /interrupt,
/system_stats, /embeddings and the /ws progress messages, at the root and under /api. ComfyUI's own protocol: a
workflow is queued as an engine job (batched, limited and recorded like any), its progress goes to the socket of the
client that queued it, its images are served by name (opaque ids, never paths). Easel's keys apply (Bearer), on the
socket too. A workflow that is not one generation is refused in ComfyUI's error shape, naming the node."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import platform
import re
import struct
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from .._version import __version__
from ..catalog import CONTROLNET_MARKER, lora_files, model_folders
from ..engine.jobs import Job
from ..errors import EaselError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from ..keys import key_is_valid
from ..metadata import encode_image
from ..types import image_from_bytes
from . import comfy_graph
from .comfy_graph import Choices, GraphError
from .openai.serving import DEFAULT_MAX_FILE_BYTES as MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)
MAX_HISTORY = 1000  # finished prompts kept for /history; the oldest go first
MAX_INPUTS = 500  # uploaded images kept; the oldest go first
PREVIEW_EVERY = 5
CHOICES_TTL_S = 5.0
_FILE = re.compile(r"([0-9a-f]{16,64})\.(png|jpg|jpeg|webp)")


class Prompt:
    """One queued workflow: its number and id, the job that runs it, and what /history and /queue show."""

    def __init__(self, number: int, prompt_id: str, graph: dict, extra: dict, plan: comfy_graph.Plan, job: Job,
                 client_id: str | None):
        self.number, self.id, self.graph, self.extra, self.plan, self.job = number, prompt_id, graph, extra, plan, job
        self.client_id, self.messages = client_id, []
        self.done = False
        # binary preview frames, as ComfyUI sends them when a preview method is on (it is off by default)
        self.previews = extra.get("preview_method", "none") not in ("none", None)

    def queue_item(self) -> list:
        return [self.number, self.id, self.graph, self.extra, self.plan.outputs]

    def history(self) -> dict[str, Any]:
        job = self.job
        images = [{"filename": f"{im.id}.{im.output_format}", "subfolder": "", "type": "output"}
                  for im in (job.result.images if job.result else [])]
        outputs = {node: {"images": images} for node in self.plan.outputs} if images else {}
        status = "success" if job.state == "succeeded" else "error"
        return {"prompt": self.queue_item(), "outputs": outputs,
                "status": {"status_str": status, "completed": job.state == "succeeded", "messages": self.messages},
                "meta": {node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
                         for node in outputs}}


class ComfyState:
    """The API's prompts (live and finished), its sockets by client id, and the uploaded images' folder."""

    def __init__(self, inputs: Path):
        self.inputs = inputs
        self.prompts: collections.OrderedDict[str, Prompt] = collections.OrderedDict()
        self.sockets: dict[str, set[WebSocket]] = collections.defaultdict(set)
        self.counter = 0
        self.choices: tuple[float, Choices] | None = None

    def live(self) -> list[Prompt]:
        return [p for p in self.prompts.values() if not p.done]

    def remember(self, prompt: Prompt) -> None:
        self.prompts[prompt.id] = prompt
        while len(self.prompts) > MAX_HISTORY:
            oldest = next(iter(self.prompts.values()))
            if not oldest.done:
                break
            self.prompts.popitem(last=False)

    async def send(self, client_id: str | None, message: dict | bytes) -> None:
        """To the sockets of `client_id` (every socket when None); a socket that fails is dropped."""
        targets = [ws for cid, sockets in self.sockets.items() if client_id in (None, cid) for ws in sockets]
        for ws in targets:
            try:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_json(message)
            except Exception:  # noqa: BLE001 - a client that went away mid-send
                for sockets in self.sockets.values():
                    sockets.discard(ws)

    def status(self) -> dict[str, Any]:
        return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": len(self.live())}}}}


def _state(request) -> ComfyState:
    return request.app.state.comfy


def choices(request) -> Choices:
    """What the server offers a workflow's choice inputs, read again at most every CHOICES_TTL_S seconds (listing
    the models reads the hub cache: a tenth of a second) and after every upload."""
    state = _state(request)
    if state.choices is None or time.monotonic() - state.choices[0] > CHOICES_TTL_S:
        runner = request.app.state.runner
        settings = runner.settings
        models = sorted(s.name for s in runner.catalog.listed() if s.is_available_locally())
        images = sorted(p.name for p in state.inputs.glob("*") if _FILE.fullmatch(p.name))
        state.choices = time.monotonic(), Choices(
            models=models, loras=[f"{n}.safetensors" for n in lora_files(settings.loras_folder)],
            controlnets=model_folders(settings.controlnets_folder, CONTROLNET_MARKER), images=images)
    return state.choices[1]


router = APIRouter(tags=["comfyui"])


def _route(path: str, methods: list[str]):
    """A route at the root and under /api, as ComfyUI serves them."""
    def add(fn):
        router.add_api_route(path, fn, methods=methods)
        router.add_api_route(f"/api{path}", fn, methods=methods, include_in_schema=False)
        return fn
    return add


@_route("/object_info", ["GET"])
def object_info(request: Request) -> dict[str, Any]:
    """The node classes Easel runs, with this server's models, LoRAs, ControlNets and uploaded images as choices."""
    return comfy_graph.object_info(choices(request))


@_route("/object_info/{node_class}", ["GET"])
def object_info_of(node_class: str, request: Request) -> dict[str, Any]:
    return comfy_graph.object_info(choices(request), only=node_class)


@_route("/system_stats", ["GET"])
def system_stats(request: Request) -> dict[str, Any]:
    """The machine as ComfyUI describes it: RAM, and the device the models run on."""
    import os

    import torch

    memory = request.app.state.runner.memory()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    devices = [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0, "torch_vram_total": 0,
                "torch_vram_free": 0}]
    if memory.get("device") == "cuda":
        free, whole = torch.cuda.mem_get_info()
        reserved = torch.cuda.memory_reserved(0)
        devices = [{"name": torch.cuda.get_device_name(0), "type": "cuda", "index": 0, "vram_total": whole,
                    "vram_free": free, "torch_vram_total": reserved,
                    "torch_vram_free": reserved - torch.cuda.memory_allocated(0)}]
    return {"system": {"os": platform.system().lower(), "ram_total": total,
                       "ram_free": int(memory.get("ram_free_gb", 0) * 1e9),
                       "comfyui_version": f"easel {__version__}", "python_version": platform.python_version(),
                       "pytorch_version": torch.__version__, "embedded_python": False, "argv": []},
            "devices": devices}


@_route("/embeddings", ["GET"])
def embeddings(request: Request) -> list[str]:
    return sorted(lora_files(request.app.state.runner.settings.embeddings_folder))


@_route("/extensions", ["GET"])
def extensions() -> list[str]:
    return []


@_route("/features", ["GET"])
def features() -> dict[str, Any]:
    return {"supports_preview_metadata": False, "max_upload_size": MAX_UPLOAD_BYTES}


@_route("/upload/image", ["POST"])
async def upload_image(request: Request) -> dict[str, Any]:
    """An image for `LoadImage`: kept under a name of its own (its content's hash), which the answer gives."""
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("image")
    if upload is None or not hasattr(upload, "read"):
        raise InvalidRequestError("Missing required parameter: 'image' (a file).", param="image")
    blob = await upload.read()
    if len(blob) > MAX_UPLOAD_BYTES:
        raise PayloadTooLargeError(f"`image` is {len(blob)} bytes, over the {MAX_UPLOAD_BYTES} allowed.", param="image")
    name = await run_in_threadpool(_keep_input, _state(request).inputs, blob)
    _state(request).choices = None  # the new image is a choice of LoadImage from now on
    return {"name": name, "subfolder": "", "type": "input"}


def _keep_input(folder: Path, blob: bytes) -> str:
    image = image_from_bytes(blob, "image")  # an image, or a client's error
    name = f"{hashlib.sha256(blob).hexdigest()[:32]}.png"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.exists():
        tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}"
        image.save(tmp, format="PNG")
        tmp.replace(target)
    kept = sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime)
    for old in kept[:-MAX_INPUTS]:
        old.unlink(missing_ok=True)
    return name


def _load_input(folder: Path, name: Any, node: str, field: str):
    if not isinstance(name, str) or not _FILE.fullmatch(name) or not (folder / name).is_file():
        raise GraphError(f"Invalid image file: {name}", node, "LoadImage", "custom_validation_failed", field, field)
    with open(folder / name, "rb") as f:
        return image_from_bytes(f.read(), field)


@_route("/view", ["GET"])
def view(request: Request, filename: str = "", type: str = "output", subfolder: str = "") -> Response:  # noqa: A002
    """An image by the name /history or /upload gave it: an output by its image id, an input by its name."""
    found = _FILE.fullmatch(filename)
    if found is None or subfolder not in ("", "."):
        raise NotFoundError(f"No image {filename!r}.", param="filename")
    if type == "input":
        path = _state(request).inputs / filename
        if not path.is_file():
            raise NotFoundError(f"No image {filename!r}.", param="filename")
        return Response(path.read_bytes(), media_type="image/png")
    image = request.app.state.runner.workspace().read_image(found.group(1))
    if image is None:
        raise NotFoundError(f"No image {filename!r}.", param="filename")
    kind = image[0].rsplit(".", 1)[-1].replace("jpg", "jpeg")
    return Response(image[1], media_type=f"image/{kind}")


@_route("/prompt", ["GET"])
def queue_remaining(request: Request) -> dict[str, Any]:
    return {"exec_info": {"queue_remaining": len(_state(request).live())}}


@_route("/prompt", ["POST"])
async def queue_prompt(request: Request):
    """Check the workflow as ComfyUI does, read it as one Easel request, queue it; `prompt_id` at once."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    state, engine = _state(request), request.app.state.engine
    body = body if isinstance(body, dict) else {}
    graph, outputs = body.get("prompt"), []
    prompt_id = body.get("prompt_id") or str(uuid.uuid4())
    if not isinstance(prompt_id, str) or len(prompt_id) > 100 or prompt_id in state.prompts:
        raise InvalidRequestError(f"`prompt_id` must be a new id of at most 100 characters but is {prompt_id!r}.",
                                  param="prompt_id")
    try:
        outputs = await run_in_threadpool(comfy_graph.validate, graph, choices(request))
        plan = await run_in_threadpool(comfy_graph.read, graph, outputs,
                                       lambda name, node, field: _load_input(state.inputs, name, node, field))
        checked = await run_in_threadpool(_checked, request.app.state.runner, plan)
    except GraphError as exc:
        return JSONResponse(exc.body(outputs if exc.node else []), status_code=400)
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    previews = extra.get("preview_method", "none") not in ("none", None)  # off by default, as in ComfyUI
    job = await run_in_threadpool(engine.submit, checked, preview_every=PREVIEW_EVERY if previews else 0)
    state.counter += 1
    prompt = Prompt(state.counter, prompt_id, graph, extra, plan, job, body.get("client_id"))
    state.remember(prompt)
    asyncio.create_task(_report(state, prompt))
    await state.send(None, state.status())
    return {"prompt_id": prompt_id, "number": prompt.number, "node_errors": {}}


def _checked(runner, plan: comfy_graph.Plan):
    """Easel's check of the plan's request; its refusal named at the node that set the refused parameter."""
    try:
        spec = runner.catalog.resolve(plan.request.model, allow_paths=False)
        _fit_scheduler(plan, spec)
        checked = runner.check(plan.request)
    except EaselError as exc:
        node = plan.nodes.get(exc.param or "", plan.nodes["default"])
        raise GraphError(exc.message, node, None, "custom_validation_failed", exc.param or "",
                         exc.param) from None
    checked.request.warnings.extend(plan.warnings)
    return checked


def _fit_scheduler(plan: comfy_graph.Plan, spec) -> None:
    """ComfyUI's sampler and schedule as the model's scheduler: its Karras variant where it has one, the sampler's
    own schedule else, the model's own sampler where it lacks this one (FLUX's euler is its flow euler)."""
    asked, have = plan.request.scheduler, spec.family.schedulers
    if asked in have:
        return
    base = asked.removesuffix("_karras")
    if base in have:
        plan.warnings.append(f"the karras schedule is not available with {base} for {spec.name}: its own was used")
        plan.request.scheduler = base
        return
    if not (base == "euler" and "flow_euler" in have):
        plan.warnings.append(f"sampler {base!r} is not available for {spec.name}: its own was used")
    plan.request.scheduler = None


async def _report(state: ComfyState, prompt: Prompt) -> None:
    """The prompt's life as ComfyUI's socket messages to its client, and its history entry at the end (written
    whatever happens to the messages: a client that waits for it always hears the end)."""
    try:
        await _follow(state, prompt)
    except Exception as exc:  # noqa: BLE001 - a message that could not be made; the job itself goes on
        log.warning("ComfyUI prompt %s: its progress messages stopped: %s", prompt.id, exc)
        await asyncio.to_thread(prompt.job.done.wait)
    finally:
        await _finish(state, prompt)


async def _follow(state: ComfyState, prompt: Prompt) -> None:
    client, plan, job = prompt.client_id, prompt.plan, prompt.job
    started = False
    async with job.follow_async() as events:
        async for event in events:
            if event.status == "running" and not started:
                started = True
                now = int(time.time() * 1000)
                prompt.messages.append(["execution_start", {"prompt_id": prompt.id, "timestamp": now}])
                await state.send(client, {"type": "execution_start", "data": {"prompt_id": prompt.id,
                                                                               "timestamp": now}})
                await state.send(client, {"type": "execution_cached", "data": {"nodes": [], "prompt_id": prompt.id,
                                                                                "timestamp": now}})
                await state.send(client, _executing(plan.sampler, prompt.id))
            if event.status == "running" and event.step:
                await state.send(client, {"type": "progress", "data": {
                    "value": event.step, "max": event.total_steps, "prompt_id": prompt.id, "node": plan.sampler}})
                for preview in event.previews[:1] if prompt.previews else []:  # binary: event 1, format 2 (PNG)
                    png = await run_in_threadpool(encode_image, preview, "png", {})
                    await state.send(client, struct.pack(">II", 1, 2) + png)


async def _finish(state: ComfyState, prompt: Prompt) -> None:
    client, plan, job = prompt.client_id, prompt.plan, prompt.job
    now = int(time.time() * 1000)
    if job.state == "succeeded":
        for node in (plan.decoder, *plan.outputs):
            await state.send(client, _executing(node, prompt.id))
        images = prompt.history()["outputs"].get(plan.outputs[0], {"images": []})
        for node in plan.outputs:
            await state.send(client, {"type": "executed", "data": {"node": node, "display_node": node,
                                                                   "output": images, "prompt_id": prompt.id}})
        prompt.messages.append(["execution_success", {"prompt_id": prompt.id, "timestamp": now}])
    elif job.state == "cancelled":
        prompt.messages.append(["execution_interrupted", {"prompt_id": prompt.id, "node_id": plan.sampler,
                                                          "node_type": "KSampler", "executed": [],
                                                          "timestamp": now}])
    else:
        error = getattr(job.error, "message", str(job.error))
        prompt.messages.append(["execution_error", {
            "prompt_id": prompt.id, "node_id": plan.sampler, "node_type": "KSampler", "executed": [],
            "exception_message": error, "exception_type": type(job.error).__name__, "traceback": [],
            "current_inputs": {}, "current_outputs": {}, "timestamp": now}])
    kind, data = prompt.messages[-1]
    await state.send(client, {"type": kind, "data": data})
    prompt.done = True
    await state.send(client, _executing(None, prompt.id))
    await state.send(None, state.status())


def _executing(node: str | None, prompt_id: str) -> dict[str, Any]:
    return {"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": prompt_id}}


@_route("/history", ["GET"])
def history(request: Request, max_items: int | None = None) -> dict[str, Any]:
    finished = [p for p in _state(request).prompts.values() if p.done]
    if max_items is not None:
        finished = finished[-max_items:]
    return {p.id: p.history() for p in finished}


@_route("/history/{prompt_id}", ["GET"])
def history_of(prompt_id: str, request: Request) -> dict[str, Any]:
    prompt = _state(request).prompts.get(prompt_id)
    return {prompt_id: prompt.history()} if prompt is not None and prompt.done else {}


@_route("/queue", ["GET"])
def queue(request: Request) -> dict[str, Any]:
    live = _state(request).live()
    return {"queue_running": [p.queue_item() for p in live if p.job.state == "running"],
            "queue_pending": [p.queue_item() for p in live if p.job.state == "queued"]}


@_route("/queue", ["POST"])
async def change_queue(request: Request) -> dict[str, Any]:
    """`{"clear": true}` cancels this API's waiting prompts; `{"delete": [ids]}` those named."""
    body = await _json(request)
    state, engine = _state(request), request.app.state.engine
    waiting = [p for p in state.live() if p.job.state == "queued"]
    named = set(body.get("delete") or []) if isinstance(body.get("delete"), list) else set()
    for prompt in waiting:
        if body.get("clear") or prompt.id in named:
            engine.cancel(prompt.job.id)
    return {}


@_route("/interrupt", ["POST"])
async def interrupt(request: Request) -> dict[str, Any]:
    """Stop this API's running prompt (the one named by `prompt_id`, else every one): never another front's job."""
    body = await _json(request)
    engine = request.app.state.engine
    for prompt in _state(request).live():
        if prompt.job.state == "running" and body.get("prompt_id") in (None, prompt.id):
            engine.cancel(prompt.job.id)
    return {}


async def _json(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def socket(websocket: WebSocket) -> None:
    """`/ws?clientId=`: ComfyUI's progress messages for the prompts this client queues (and the queue's status)."""
    keys = websocket.app.state.settings.server_keys
    if keys and not key_is_valid(websocket.headers.get("authorization"), keys):
        await websocket.close(code=1008)
        return
    state = websocket.app.state.comfy
    client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
    await websocket.accept()
    state.sockets[client_id].add(websocket)
    try:
        await websocket.send_json({**state.status(), "data": {**state.status()["data"], "sid": client_id}})
        while True:
            await websocket.receive_text()  # clients send nothing that matters; this waits for them to go
    except Exception:  # noqa: BLE001 - the client went away
        pass
    finally:
        state.sockets[client_id].discard(websocket)
        if not state.sockets[client_id]:
            state.sockets.pop(client_id, None)


router.add_api_websocket_route("/ws", socket)
router.add_api_websocket_route("/api/ws", socket)
