"""Thin routes of the OpenAI Images API; served under /v1 and, for clients that forget it, without."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ... import masks
from ...errors import InvalidRequestError, ModelNotFoundError, PayloadTooLargeError
from ...openai_models import OPENAI_MODEL_NAMES
from ...types import image_from_bytes
from ..jobs import call_back, wait_for_job
from .protocol import (EditRequest, ErrorResponse, GenerationRequest, ImagesResponse, ModelCard, ModelList,
                       VariationRequest, validated)
from .serving import ImagesService, Prepared, max_file_bytes

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503, 507)}
_FILE = {"type": "string", "format": "binary"}


def multipart_body(model_cls, files: dict[str, dict], required: list[str]) -> dict:
    """The OpenAPI request body of a multipart route: the model's fields beside its files, written out in full
    (a route that reads its own form has no schema for FastAPI to reference)."""
    schema = model_cls.model_json_schema()
    schema["properties"] = {**files, **schema["properties"]}
    schema["required"] = sorted(set(schema.get("required", [])) | set(required))
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _sse(events) -> StreamingResponse:
    def lines():
        for event in events:
            name = "error" if event["type"] == "error" else event["type"]
            yield f"event: {name}\ndata: {json.dumps(event)}\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _read_form(request: Request, model_cls):
    """Multipart fields -> the request model; files `image` / `image[]` (in order), `mask` and `markup`."""
    form = await request.form(max_files=32, max_fields=64)
    fields, images, named = {}, [], {}
    for key, value in form.multi_items():
        if hasattr(value, "read"):
            data = await value.read()
            if key in ("image", "image[]"):
                images.append(data)
            elif key in ("mask", "markup"):
                named[key] = data
            else:
                raise InvalidRequestError(f"Unknown file parameter: '{key}'.", param=key)
        elif value != "":
            fields[key] = value
    params = validated(model_cls, fields)
    limit = max_file_bytes(params.model)
    for name, blob in [("image", b) for b in images] + list(named.items()):
        if len(blob) > limit:
            raise PayloadTooLargeError(f"`{name}` is {len(blob)} bytes, over the {limit} allowed.", param=name)
    if not images:
        raise InvalidRequestError("Missing required parameter: 'image'.", param="image")
    if len(images) > 16:
        raise InvalidRequestError(f"`image` takes at most 16 files but got {len(images)}.", param="image")

    def decode() -> tuple[list, dict]:  # beside the event loop: decoding is the CPU's work
        return ([image_from_bytes(b, "image") for b in images],
                {name: image_from_bytes(blob, name) for name, blob in named.items()})

    decoded, files = await run_in_threadpool(decode)
    return params, decoded, files


router = APIRouter(tags=["openai"])


async def _complete(prepared: Prepared, request: Request, params):
    """Run the prepared request: its images as one answer, or streamed; its `webhook` hears the end either way."""
    images: ImagesService = request.app.state.images
    engine = request.app.state.engine
    stream, partial_images = bool(getattr(params, "stream", False)), getattr(params, "partial_images", None)
    webhook = None if params.webhook is None else await run_in_threadpool(request.app.state.webhooks.check,
                                                                          params.webhook)
    if stream:
        job = await run_in_threadpool(engine.submit, prepared.checked, previews=partial_images or 0, listen=True)
        call_back(request, job, webhook)
        return _sse(images.stream(prepared, job, partial_images or 0))
    job = await run_in_threadpool(engine.submit, prepared.checked)
    call_back(request, job, webhook)
    result = await wait_for_job(engine, job, request)
    return await run_in_threadpool(images.response, prepared, result, str(request.base_url))


def model_ids(request: Request) -> list[str]:
    """What a client may ask for: the server's models (on a server that cannot reach the hub, those on this machine
    only), and the OpenAI names it maps to its local model."""
    from huggingface_hub import constants

    listed = request.app.state.runner.catalog.listed()
    return sorted(s.name for s in listed if not constants.HF_HUB_OFFLINE or s.is_available_locally()) \
        + OPENAI_MODEL_NAMES


@router.get("/models", response_model=ModelList, responses=ERRORS)
def list_models(request: Request) -> ModelList:
    """The models this server runs, and the OpenAI names it maps to its local model."""
    now = int(time.time())
    return ModelList(data=[ModelCard(id=m, created=now, owned_by="easel") for m in model_ids(request)])


@router.get("/models/{model_id:path}", response_model=ModelCard, responses=ERRORS)
def get_model(model_id: str, request: Request) -> ModelCard:
    if model_id not in model_ids(request):
        raise ModelNotFoundError(f"The model '{model_id}' does not exist.", param="model")
    return ModelCard(id=model_id, created=int(time.time()), owned_by="easel")


@router.post("/images/generations", response_model=ImagesResponse, responses=ERRORS, response_model_exclude_none=True)
async def generations(body: GenerationRequest, request: Request):
    """Create images from a prompt. With `stream: true`, answers Server-Sent Events."""
    prepared = await run_in_threadpool(request.app.state.images.prepare, body)  # the check, off the event loop
    return await _complete(prepared, request, body)


@router.post("/images/edits", response_model=ImagesResponse, responses=ERRORS, response_model_exclude_none=True,
             openapi_extra=multipart_body(EditRequest, {
                 "image": {"anyOf": [_FILE, {"type": "array", "items": _FILE, "maxItems": 16}],
                           "description": "The image to edit (also sent as `image[]`, up to 16)."},
                 "mask": {**_FILE, "description": "Transparent where the image should change."},
                 "markup": {**_FILE, "description": "A transparent PNG of marks (arrows, circles, notes) drawn over "
                            "the first image to guide the edit; not with `mask`."}}, ["image"]))
async def edits(request: Request):
    """Repaint the transparent area of `mask` (or of the image) in `image` (multipart; `image` or `image[]`); with
    neither, on a model that edits by instruction, do what the prompt says with the images (several where it takes
    them), else change the whole picture as the prompt says."""
    params, images, files = await _read_form(request, EditRequest)
    mask, markup = files.get("mask"), files.get("markup")
    for name, picture in (("mask", mask), ("markup", markup)):
        if picture is not None and picture.size != images[0].size:
            raise InvalidRequestError(
                f"`{name}` must be the same size as the first image ({images[0].width}x{images[0].height}) "
                f"but is {picture.width}x{picture.height}.", param=name)
    if markup is not None and mask is not None:
        raise InvalidRequestError("`markup` cannot be combined with `mask`: send one.", param="markup")
    service: ImagesService = request.app.state.images

    def prepare() -> Prepared:  # no mask and no transparency: by instruction, or the whole picture (see checks)
        area = masks.from_openai(mask, images[0]) if mask is not None else masks.edit_area(images[0])
        if markup is not None:  # the marks drawn over the first image guide the edit
            images[0] = masks.with_markup(images[0], markup)
        return service.prepare(params, "edit", images, area)

    prepared = await run_in_threadpool(prepare)
    return await _complete(prepared, request, params)


@router.post("/images/variations", response_model=ImagesResponse, responses=ERRORS, response_model_exclude_none=True,
             openapi_extra=multipart_body(VariationRequest, {"image": {**_FILE, "description": "The image."}},
                                          ["image"]))
async def variations(request: Request):
    """Variations of one image (multipart)."""
    params, images, _files = await _read_form(request, VariationRequest)
    prepared = await run_in_threadpool(request.app.state.images.prepare, params, "vary", images[:1])
    return await _complete(prepared, request, params)
