"""The subset of the AUTOMATIC1111 web UI API that clients use (Open WebUI, SillyTavern, `webuiapi`, agents):
/sdapi/v1/txt2img, img2img, progress, interrupt, sd-models, samplers and options.

Unlike A1111, `interrupt` stops only jobs that came through this API (all of them, or the one named by
`id_task`), never another front's, and `progress` follows one task (`id_task`) or the latest one, with a preview
of its current step every few steps as `current_image`."""

from __future__ import annotations

import base64
import collections
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from .. import masks
from ..catalog import lora_files, upscaler_names
from ..control import png_base64
from ..upscalers import A1111_UPSCALERS, IMAGE_UPSCALERS, LATENT_UPSCALERS
from ..engine.jobs import FINAL
from ..errors import EaselError, InvalidRequestError, JobCancelledError, NotFoundError
from ..metadata import A1111_SAMPLERS, a1111_parameters, encode_image

from ..types import ImageRequest
from .a1111_control import checkpoint_name, control_units, decode, image_prompt
from .jobs import wait_for_job

PREVIEW_EVERY = 5  # steps between two preview images that /progress can show
# Easel's parameter names -> the A1111 API's, so that an error names the field the client sent
PARAMS = {"num_inference_steps": "steps", "guidance_scale": "cfg_scale", "n": "batch_size", "image": "init_images",
          "strength": "denoising_strength", "scheduler": "sampler_name", "hires_scale": "hr_scale",
          "hires_upscaler": "hr_upscaler", "hires_strength": "denoising_strength",
          "hires_steps": "hr_second_pass_steps", "schedule_type": "scheduler", "hires_size": "hr_resize_x",
          "model": "override_settings.sd_model_checkpoint"}
# A1111 sampler names -> Easel scheduler names
SAMPLERS = {**{sampler: easel for easel, (sampler, schedule) in A1111_SAMPLERS.items() if schedule is None},
            "DPM++ 2M Karras": "dpm++_karras", "LMS Karras": "lms_karras", "PNDM": "pndm"}  # and older names
# A1111 1.9's schedule types (its `scheduler` field), name -> label. Easel honours automatic (the sampler's own) and
# karras (the sampler's Karras-sigma variant, where the model has it); any other is said not to apply
SCHEDULE_TYPES = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
                  "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
                  "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal", "ddim": "DDIM",
                  "beta": "Beta"}
HONOURED_SCHEDULES = ("automatic", "karras")


class Txt2ImgRequest(BaseModel):
    """A1111's fields that Easel honours; clients send many more (hires fix, scripts, ...), which are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    batch_size: int = Field(1, ge=1, le=10)
    n_iter: int = Field(1, ge=1, le=10)
    steps: int | None = None
    cfg_scale: float | None = None
    width: int = 512
    height: int = 512
    override_settings: dict[str, Any] = {}
    alwayson_scripts: dict[str, Any] = {}
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    denoising_strength: float | None = None
    scheduler: str | None = None  # A1111 1.9's schedule type ("Karras"), beside the sampler
    clip_skip: int | None = None
    force_task_id: str | None = None
    send_images: bool = True


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = []
    mask: str | None = None
    denoising_strength: float | None = 0.75
    inpainting_mask_invert: int = 0
    mask_blur: int = 4
    inpaint_full_res: bool = False  # A1111's "Only masked" (clients send 0/1 or true/false)
    inpaint_full_res_padding: int = 32


def to_image_request(body: Txt2ImgRequest, model: str, scheduler: str | None, mode: str = "generate",
                     **fields) -> ImageRequest:
    """An A1111 request as Easel's (one of its `n_iter` batches): the front's one mapping. Its model (the
    override or the API's current checkpoint) and scheduler (from its sampler) are worked out by the caller."""
    return ImageRequest(prompt=body.prompt, negative_prompt=body.negative_prompt or None, model=model,
                        num_images=body.batch_size, width=body.width, height=body.height,
                        num_inference_steps=body.steps, guidance_scale=body.cfg_scale,
                        seed=None if body.seed < 0 else body.seed, scheduler=scheduler, mode=mode,
                        control=control_units(body.alwayson_scripts), ip_adapter=image_prompt(body.alwayson_scripts),
                        **(hires_fields(body) if mode == "generate" else {}), **fields)


def hires_fields(body: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's hires fix (`enable_hr`): its scale (or target size), upscaler, second-pass steps and strength."""
    if not body.enable_hr:
        return {}
    size = {"hires_scale": body.hr_scale}
    if body.hr_resize_x or body.hr_resize_y:  # an exact size instead of a factor (one side 0: from the aspect)
        x = body.hr_resize_x or round(body.hr_resize_y * body.width / body.height)
        y = body.hr_resize_y or round(body.hr_resize_x * body.height / body.width)
        size = {"hires_size": f"{x}x{y}"}
    upscaler = (body.hr_upscaler or "Latent").strip()
    return {**size, "hires_upscaler": A1111_UPSCALERS.get(upscaler.lower(), upscaler),
            "hires_strength": 0.7 if body.denoising_strength is None else body.denoising_strength,
            "hires_steps": body.hr_second_pass_steps or None}


MAX_TASKS = 1000  # task ids remembered for /progress and /interrupt; the oldest go first


class A1111State:
    """The API's current model (set through /options, as in A1111) and the tasks started through it: task id ->
    the id of its current job (the engine holds the job while it lives, its record after)."""

    def __init__(self, default_model: str):
        self.model = default_model
        self.clip_skip = 1  # CLIP_stop_at_last_layers, as /options last set it
        self.tasks: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.latest: str | None = None

    def add(self, task_id: str, job) -> None:
        self.tasks[task_id] = job.id
        self.tasks.move_to_end(task_id)
        self.latest = task_id
        while len(self.tasks) > MAX_TASKS:
            self.tasks.popitem(last=False)


def _task_id(value, param: str = "id_task") -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError(f"`{param}` must be a string but is {value!r}.", param=param)
    return value


router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])


def _state(request: Request) -> A1111State:
    return request.app.state.a1111


def checkpoint_title(spec) -> str:
    """A1111's title of a model: a checkpoint's file name (the server's folders never show), else its name."""
    return spec.local_path.name if spec.local_path is not None and spec.local_path.is_file() else spec.name


def model_for(body: Txt2ImgRequest, state: A1111State) -> str:
    name = body.override_settings.get("sd_model_checkpoint")
    if name is not None and not isinstance(name, str):
        raise InvalidRequestError(f"`override_settings.sd_model_checkpoint` must be a string but is {name!r}.",
                                  param="override_settings.sd_model_checkpoint")
    return checkpoint_name(name) if name else state.model


def schedule_type(value: str | None) -> str | None:
    """A1111's `scheduler` field (a schedule type's name or label, any case) as its name; None: not given."""
    if value is None or not value.strip():
        return None
    key = value.strip().lower().replace(" ", "_")
    for name, label in SCHEDULE_TYPES.items():
        if key in (name, label.lower().replace(" ", "_")):
            return name
    raise InvalidRequestError(f"`scheduler` must be one of {', '.join(SCHEDULE_TYPES.values())} but is {value!r}.",
                              param="schedule_type")


def scheduler_for(body: Txt2ImgRequest, spec) -> tuple[str | None, list[str]]:
    """A1111's sampler and schedule type -> Easel's scheduler (Karras: the sampler's Karras-sigma variant); what the
    model lacks falls back to the model's own, with a warning that says so."""
    name, schedule = body.sampler_name or body.sampler_index, schedule_type(body.scheduler)
    warnings = []
    if schedule not in (None, *HONOURED_SCHEDULES) or (schedule == "karras" and not name):
        warnings.append(f"schedule type {SCHEDULE_TYPES[schedule]!r} is not available here"
                        f"{'' if name else ' without a sampler'}; used the sampler's own")
    if not name:
        return None, warnings
    if name not in SAMPLERS:
        raise InvalidRequestError(f"`sampler_name` must be one of {', '.join(SAMPLERS)} but is {name!r}.",
                                  param="sampler_name")
    easel = SAMPLERS[name]
    if schedule == "karras" and not easel.endswith("_karras"):
        if f"{easel}_karras" in spec.family.schedulers:
            easel = f"{easel}_karras"
        else:
            warnings.append(f"schedule type 'Karras' is not available with sampler {name!r} for {spec.name}; used "
                            "the sampler's own")
    if easel not in spec.family.schedulers:
        return None, [*warnings, f"sampler {name!r} is not available for {spec.name}; used its default scheduler"]
    return easel, warnings


def clip_skip_for(body: Txt2ImgRequest, spec, default: int = 1) -> tuple[dict[str, Any], list[str]]:
    """A1111's clip skip (`override_settings.CLIP_stop_at_last_layers`, or `clip_skip`: 1 uses the text encoder's
    last layer, 2 the one before, ...) as the model's `clip_skip` option (layers skipped), where its family has one;
    elsewhere said not to apply (A1111 too leaves SDXL's text encoders whole unless told)."""
    param = "override_settings.CLIP_stop_at_last_layers"
    value = body.override_settings.get("CLIP_stop_at_last_layers")
    if value is None:
        param, value = "clip_skip", body.clip_skip if body.clip_skip is not None else default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        raise InvalidRequestError(f"`{param}` must be a whole number from 1 to 12 but is {value!r}.", param=param)
    if value == 1:
        return {}, []
    if "clip_skip" not in spec.family.options:
        return {}, [f"clip skip {value} does not apply to {spec.name} ({spec.family.name}): its text encoders were "
                    "used whole"]
    return {"clip_skip": value - 1}, []


def token_merging_for(body: Txt2ImgRequest, spec) -> tuple[dict[str, Any], list[str]]:
    """A1111's token merging (`override_settings.token_merging_ratio`, ToMe) as Easel's token downsampling
    (`tokens=todo`, the same idea on the keys and values of the highest-resolution self-attention) on UNet models,
    said in the warnings; elsewhere said not to apply."""
    param, value = "override_settings.token_merging_ratio", body.override_settings.get("token_merging_ratio")
    if value is None or value == 0:
        return {}, []
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 0.9:
        raise InvalidRequestError(f"`{param}` must be a number from 0 to 0.9 but is {value!r}.", param=param)
    if "tokens" not in spec.family.options:
        return {}, [f"token merging does not apply to {spec.name} ({spec.family.name}): its denoiser ran whole"]
    return {"tokens": "todo"}, [f"token merging ratio {value} ran as token downsampling (tokens=todo: the "
                                "highest-resolution self-attention attends to a quarter of its tokens)"]


def _info(body: Txt2ImgRequest, first: dict[str, Any], seeds: list[int], texts: list[str], task_id: str,
          interrupted: bool, warnings: list[str], model: str, seed: int | None) -> dict[str, Any]:
    """A1111's `info` (a JSON string in the answer): what was made, with the values the model really used."""
    return {"prompt": body.prompt, "all_prompts": [body.prompt] * len(seeds),
            "negative_prompt": body.negative_prompt, "all_negative_prompts": [body.negative_prompt] * len(seeds),
            "seed": seeds[0] if seeds else seed, "all_seeds": seeds, "subseed": -1,
            "all_subseeds": [-1] * len(seeds), "width": first.get("width", body.width),
            "height": first.get("height", body.height), "steps": first.get("num_inference_steps", body.steps),
            "cfg_scale": first.get("guidance_scale", body.cfg_scale),
            "sampler_name": body.sampler_name or body.sampler_index, "batch_size": body.batch_size,
            "sd_model_name": first.get("model", model), "sd_model_hash": None,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "infotexts": texts, "task_id": task_id,
            "interrupted": interrupted, "warnings": warnings}


async def _run(body: Txt2ImgRequest, request: Request, mode: str = "generate", **fields) -> dict[str, Any]:
    """Run the request's `n_iter` batches one after another (seeds following on, as in A1111) as one task."""
    engine, state = request.app.state.engine, _state(request)
    model = model_for(body, state)
    spec = engine.runner.catalog.resolve(model, allow_paths=False)
    scheduler, warnings = scheduler_for(body, spec)
    extra, skipped = clip_skip_for(body, spec, state.clip_skip)
    merging, said = token_merging_for(body, spec)
    extra, warnings = {**extra, **merging}, [*warnings, *skipped, *said]
    base = await run_in_threadpool(to_image_request, body, model, scheduler, mode, extra=extra, **fields)
    task_id = body.force_task_id or f"task({uuid.uuid4().hex[:15]})"
    images, seeds, texts, first, detected = [], [], [], {}, []
    interrupted = False
    for i in range(body.n_iter):
        start = None if base.seed is None else base.seed + i * body.batch_size
        job = await run_in_threadpool(engine.submit, base.replace(seed=start), preview_every=PREVIEW_EVERY)
        state.add(task_id, job)
        try:
            result = await wait_for_job(engine, job, request)
        except JobCancelledError:
            interrupted = True  # as in A1111: an interrupted task answers with the images made before it
            break
        warnings += result.warnings
        if i == 0 and body.send_images:  # the extension's detected maps, after the images, once
            detected = [m for unit, m in zip(base.control, result.control_maps) if unit.preprocessor != "none"]
        for im in result.images:
            first = first or im.parameters
            seeds.append(-1 if im.seed is None else im.seed)
            texts.append(a1111_parameters(im.parameters))
            if body.send_images:
                images.append(base64.b64encode(await run_in_threadpool(im.to_bytes, "png")).decode())
    for detected_map in detected if base.control and not interrupted else []:
        images.append(await run_in_threadpool(png_base64, detected_map))
    info = _info(body, first, seeds, texts, task_id, interrupted, warnings, model, base.seed)
    if mode != "generate":
        info["denoising_strength"] = fields.get("strength")
    return {"images": images, "parameters": body.model_dump(), "info": json.dumps(info)}


@router.post("/txt2img")
async def txt2img(body: Txt2ImgRequest, request: Request) -> dict[str, Any]:
    """Text to image; answers `{"images": [base64 PNG], "parameters", "info"}` like A1111."""
    try:
        return await _run(body, request)
    except EaselError as exc:
        raise exc.renamed(PARAMS) from None


@router.post("/img2img")
async def img2img(body: Img2ImgRequest, request: Request) -> dict[str, Any]:
    """Image to image with `denoising_strength`; with `mask` (white = repaint), inpainting; on a model that edits by
    instruction, without a mask, the prompt's edit of `init_images` (several where the model takes them)."""
    try:
        if not body.init_images:
            raise InvalidRequestError("Missing required parameter: 'init_images'.", param="init_images")
        image = (await run_in_threadpool(decode, body.init_images[0], "init_images")).convert("RGB")
        if body.mask:
            mask = masks.from_a1111(await run_in_threadpool(decode, body.mask, "mask"),
                                    bool(body.inpainting_mask_invert))
            return await _run(body, request, "edit", image=image, mask=mask, strength=body.denoising_strength,
                              mask_blur=body.mask_blur, inpaint_full_res=body.inpaint_full_res,
                              inpaint_full_res_padding=body.inpaint_full_res_padding)
        spec = request.app.state.engine.runner.catalog.resolve(model_for(body, _state(request)), allow_paths=False)
        if spec.family.edits == "instruction":  # "make it winter": the prompt is the edit, the images its input
            more = [(await run_in_threadpool(decode, one, "init_images")).convert("RGB")
                    for one in body.init_images[1:]]
            return await _run(body, request, "edit", image=image, references=more)
        return await _run(body, request, "vary", image=image, strength=body.denoising_strength)
    except EaselError as exc:
        raise exc.renamed(PARAMS) from None


IDLE = {"progress": 0.0, "eta_relative": 0.0, "state": {
    "skipped": False, "interrupted": False, "job": "", "job_count": 0, "job_timestamp": "", "job_no": 0,
    "sampling_step": 0, "sampling_steps": 0}, "current_image": None, "textinfo": None}


def progress_of(engine, job_id: str, with_image: bool, job_count: int) -> dict[str, Any]:
    """A1111's progress answer for one job: live while it is in memory, from its record after; `job_count`: the
    API's tasks still queued or running."""
    job = engine.get(job_id)
    eta = None
    if isinstance(job, dict):  # finished and released: its record
        job_state, step, total, elapsed, preview = job["state"], job["step"], job["total_steps"] or 1, 0.0, None
    else:
        job_state, step, total, elapsed = job.state, job.step, job.total_steps or 1, time.time() - job.created
        preview, eta = job.preview[0] if job.preview else None, job.eta_s
    image = None
    if with_image and preview is not None:
        image = base64.b64encode(encode_image(preview, "png", {})).decode()
    done = 1.0 if job_state in FINAL else step / total
    if eta is None:  # no pace measured yet: from this job's own elapsed time
        eta = elapsed / done - elapsed if 0 < done < 1 else 0.0
    return {"progress": round(done, 4), "eta_relative": 0.0 if job_state in FINAL else round(eta, 2),
            "state": {"skipped": False, "interrupted": job_state == "cancelled", "job": job_id,
                      "job_count": job_count, "job_timestamp": "", "job_no": 0, "sampling_step": step,
                      "sampling_steps": total, "status": job_state,
                      "queue_position": None if isinstance(job, dict) else job.queue_position},
            "current_image": image, "textinfo": None}


@router.get("/progress")
def progress(request: Request, id_task: str | None = None, skip_current_image: bool = False) -> dict[str, Any]:
    """Progress of the task `id_task`, or as A1111 answers without one: of the task running now (else the next
    queued), and when none of this API's tasks is queued or running, idle: progress 0 and job_count 0 (clients
    such as SillyTavern wait for that after a model switch)."""
    state, engine = _state(request), request.app.state.engine
    if id_task is not None and id_task not in state.tasks:
        raise NotFoundError(f"No task {id_task!r}.", param="id_task")
    live = [(task, engine.jobs[job_id]) for task, job_id in state.tasks.items()
            if job_id in engine.jobs and engine.jobs[job_id].state not in FINAL]
    if id_task is None:
        current = sorted(live, key=lambda pair: pair[1].state != "running")  # running first, then oldest queued
        if not current:
            return IDLE
        id_task = current[0][0]
    return progress_of(engine, state.tasks[id_task], not skip_current_image, len(live))


@router.post("/interrupt")
async def interrupt(request: Request) -> dict[str, Any]:
    """Stop the task named by `id_task` (query or JSON body), or every running task of this API."""
    state, engine = _state(request), request.app.state.engine
    task = request.query_params.get("id_task")
    if task is None and request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            body = {}
        task = _task_id(body.get("id_task")) if isinstance(body, dict) else None
    if task is not None and task not in state.tasks:
        raise NotFoundError(f"No task {task!r}.", param="id_task")
    job_ids = [state.tasks[task]] if task else list(state.tasks.values())
    live = [job_id for job_id in job_ids if job_id in engine.jobs and engine.jobs[job_id].state not in FINAL]
    return {"interrupted": [engine.cancel(job_id).id for job_id in live]}


@router.get("/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    """The models on this machine, as A1111 checkpoints (single-file checkpoints by their file name)."""
    catalog = request.app.state.runner.catalog
    return [{"title": checkpoint_title(s), "model_name": s.name, "hash": None, "sha256": None,
             "filename": checkpoint_title(s), "config": None}
            for s in catalog.listed() if s.is_available_locally()]


@router.get("/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRAs of the server's loras folder, as A1111 lists them (`<lora:name:weight>` in a prompt uses one); by
    name only, never the server's paths."""
    names = lora_files(request.app.state.runner.settings.loras_folder)
    return [{"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}} for name in names]


@router.get("/embeddings")
def embeddings(request: Request) -> dict[str, Any]:
    """The textual-inversion embeddings of the server's embeddings folder, as A1111 lists them: a prompt (or negative
    prompt) that names one uses it. Files that are not embeddings are listed as skipped."""
    from safetensors import safe_open

    loaded, skipped = {}, {}
    for name, path in lora_files(request.app.state.runner.settings.embeddings_folder).items():
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = [f.get_slice(key).get_shape() for key in f.keys()]
            vectors, width = shapes[0] if len(shapes[0]) == 2 else (1, shapes[0][-1])
            loaded[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": width,
                            "vectors": vectors}
        except Exception:  # noqa: BLE001 - not a safetensors file of tensors
            skipped[name] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                             "vectors": None}
    return {"loaded": loaded, "skipped": skipped}


@router.post("/refresh-loras")
def refresh_loras() -> None:
    """The folder is read at every request: nothing to refresh."""


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": [easel], "options": {}} for name, easel in SAMPLERS.items()]


@router.get("/options")
def get_options(request: Request) -> dict[str, Any]:
    """The current checkpoint and output settings; never keys or paths."""
    model = _state(request).model
    try:
        model = checkpoint_title(request.app.state.runner.catalog.resolve(model, allow_paths=False))
    except EaselError:
        pass
    return {"sd_model_checkpoint": model, "sd_checkpoint_hash": None, "samples_format": "png", "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": _state(request).clip_skip, "eta_noise_seed_delta": 0}


@router.post("/options")
def set_options(options: dict[str, Any], request: Request) -> None:
    """`sd_model_checkpoint` (the model later requests use) and `CLIP_stop_at_last_layers` (their clip skip) are
    honoured; other options are ignored."""
    name, skip = options.get("sd_model_checkpoint"), options.get("CLIP_stop_at_last_layers")
    if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int) or not 1 <= skip <= 12):
        raise InvalidRequestError(f"`CLIP_stop_at_last_layers` must be a whole number from 1 to 12 but is {skip!r}.",
                                  param="CLIP_stop_at_last_layers")
    if name is not None:
        if not isinstance(name, str):
            raise InvalidRequestError(f"`sd_model_checkpoint` must be a string but is {name!r}.",
                                      param="sd_model_checkpoint")
        try:  # the same check as a request's, so that a name that cannot run here never sticks
            spec = request.app.state.engine.runner.check(ImageRequest(prompt="-", model=checkpoint_name(name))).spec
        except EaselError as exc:
            raise exc.renamed({"model": "sd_model_checkpoint"}) from None
        _state(request).model = spec.name
    if skip is not None:
        _state(request).clip_skip = skip


@router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    """A1111 1.9's schedule types that Easel honours (the `scheduler` field): the sampler's own, and Karras."""
    return [{"name": name, "label": SCHEDULE_TYPES[name], "aliases": None, "default_rho": 7.0 if name == "karras"
             else -1, "need_inner_model": False} for name in HONOURED_SCHEDULES]


@router.get("/sd-vae")
def sd_vae() -> list[dict[str, Any]]:
    """No separate VAE files: each model decodes with its own (A1111's "Automatic")."""
    return []


@router.get("/sd-modules")
def sd_modules() -> list[dict[str, Any]]:
    """No separate text-encoder or VAE modules (Forge's): each model loads its own."""
    return []


@router.get("/upscalers")
def upscalers(request: Request) -> list[dict[str, Any]]:
    """The image filters, then the upscaler models of the server's upscalers folder (by name, never a path)."""
    models = upscaler_names(request.app.state.runner.settings.upscalers_folder)
    return [{"name": name.capitalize() if name != "lanczos" else "Lanczos", "model_name": None, "model_path": None,
             "model_url": None, "scale": 4} for name in IMAGE_UPSCALERS] + [
        {"name": name, "model_name": name, "model_path": None, "model_url": None, "scale": 4} for name in models]


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, Any]]:
    """The hires fix's latent upscalers by A1111's names ("Latent (bicubic)", ...), which `hr_upscaler` takes."""
    return [{"name": name.capitalize()} for name, easel in A1111_UPSCALERS.items() if easel in LATENT_UPSCALERS]


class ExtraSingleImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image: str = ""
    resize_mode: int = 0  # 0: by upscaling_resize, 1: to upscaling_resize_w x upscaling_resize_h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaler_1: str = "None"


@router.post("/extra-single-image")
async def extra_single_image(body: ExtraSingleImageRequest, request: Request) -> dict[str, Any]:
    """A1111's "Extras" upscale of one image: by a factor, or to a size; `upscaler_1` a filter or a model. It runs
    as a job of the engine, like any (queued, within the time limit, cancelled when its client goes)."""
    if not body.image:
        raise InvalidRequestError("`image` is required (a base64 image).", param="image")
    picture = await run_in_threadpool(decode, body.image, "image")
    scale = body.upscaling_resize if body.resize_mode == 0 else max(
        body.upscaling_resize_w / picture.width, body.upscaling_resize_h / picture.height)
    name = A1111_UPSCALERS.get(body.upscaler_1.strip().lower(), body.upscaler_1.strip())
    upscale = ImageRequest(prompt="", mode="upscale", image=picture, scale=scale, upscaler=name)
    engine = request.app.state.engine
    try:
        checked = await run_in_threadpool(request.app.state.runner.check, upscale)
        result = await wait_for_job(engine, await run_in_threadpool(engine.submit, checked), request)
    except EaselError as exc:
        raise exc.renamed({"scale": "upscaling_resize", "upscaler": "upscaler_1"}) from None
    bigger = result.images[0].image
    if body.resize_mode == 1:
        bigger = bigger.resize((body.upscaling_resize_w, body.upscaling_resize_h))
    return {"html_info": "", "image": await run_in_threadpool(png_base64, bigger)}
