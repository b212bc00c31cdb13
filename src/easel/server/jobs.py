"""Easel's jobs API: create a job and return at once, follow it (SSE), cancel it."""

from __future__ import annotations

import asyncio
import base64
import json

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine.jobs import FINAL, Job, JobStore
from ..engine.queue import Engine
from ..errors import InvalidRequestError, PayloadTooLargeError
from ..metadata import encode_image
from ..request_json import from_json
from ..types import ImageResult, image_from_bytes
from .openai.protocol import GenerationRequest, validated
from .openai.serving import max_file_bytes


def _body(job_or_row, request: Request) -> dict:
    """A job's JSON (the same live or recorded), with a signed link to each of its images once it succeeded."""
    body = job_or_row.snapshot() if isinstance(job_or_row, Job) else JobStore.describe(job_or_row)
    return with_urls(body, request)


def with_urls(body: dict, request: Request) -> dict:
    return linked(body, request.app.state.signer, str(request.base_url))


def linked(body: dict, signer, base: str) -> dict:
    """A job's JSON with a signed link to each of its images."""
    if body["image_ids"]:
        body = {**body, "urls": [signer.url(base, image_id) for image_id in body["image_ids"]]}
    return body


def call_back(request: Request, job: Job, url: str | None) -> None:
    """Have the job's final JSON (with its images' links) POSTed to `url` (a checked webhook URL), if one."""
    if url is not None:
        signer, base = request.app.state.signer, str(request.base_url)
        request.app.state.webhooks.watch(job, url, lambda done: linked(done.snapshot(), signer, base))


async def wait_for_job(engine: Engine, job: Job, request: Request) -> ImageResult:
    """The job's result (or its error raised), awaited without holding a thread; a client that disconnects
    cancels its job."""

    async def cancel_if_gone(job: Job) -> None:
        if await request.is_disconnected():
            engine.cancel(job.id)

    try:
        return await job.wait_async(cancel_if_gone)
    except asyncio.CancelledError:  # the request itself was cancelled (its client went; Ray Serve's proxy says so)
        engine.cancel(job.id)
        raise


def sse(event: str, body: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(body)}\n\n"


router = APIRouter(tags=["jobs"])


_JOB_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"anyOf": [GenerationRequest.model_json_schema(), {
        "type": "object", "required": ["request"], "additionalProperties": False, "properties": {"request": {
            "type": "object", "description": "Easel's whole request (any mode): the fields of easel.ImageRequest, "
            "images as base64 PNG."}}}]}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["request"], "properties": {
        "request": {"type": "string", "description": "Easel's request as JSON text; an image given as "
                    "\"file:<name>\" is the file of that name in this form."}},
        "additionalProperties": {"type": "string", "format": "binary"}}}}}}


@router.post("/jobs", status_code=202, openapi_extra=_JOB_BODY)
async def create_job(request: Request) -> JSONResponse:
    """Queue a request and return its id at once: the body of /v1/images/generations, or Easel's whole request
    (`{"request": {...}}`: generations, edits and variations; images as base64, or as the files of a multipart
    form whose `request` field holds it)."""
    checked, webhook = await _checked(request)
    # previews every 5 steps, asked for now: the client follows the job next, maybe on another replica
    job = await run_in_threadpool(request.app.state.engine.submit, checked, preview_every=5)
    call_back(request, job, webhook)
    return JSONResponse(job.snapshot(), status_code=202)


async def _checked(request: Request):
    """The job's checked request, read from its body (the check and the decoding off the event loop), and the
    webhook URL it names (checked too), if one."""
    runner, images, webhooks = request.app.state.runner, request.app.state.images, request.app.state.webhooks
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=16, max_fields=2)
        files = {key: await value.read() for key, value in form.multi_items() if hasattr(value, "read")}
        text, webhook = form.get("request"), form.get("webhook")
        if not isinstance(text, str):
            raise InvalidRequestError("Missing required parameter: 'request'.", param="request")
        webhook = None if webhook is None else await run_in_threadpool(webhooks.check, webhook)
        return await run_in_threadpool(lambda: runner.check(_from_json(_loads(text), files))), webhook
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequestError("The body must be a JSON object.", param=None) from None
    if isinstance(body, dict) and "request" in body:
        extra = sorted(set(body) - {"request", "webhook"})
        if extra:
            raise InvalidRequestError(f"Unknown parameter: '{extra[0]}'.", param=extra[0])
        webhook = None if body.get("webhook") is None else await run_in_threadpool(webhooks.check, body["webhook"])
        return await run_in_threadpool(lambda: runner.check(_from_json(body["request"], {}))), webhook
    generation = validated(GenerationRequest, body)
    webhook = None if generation.webhook is None else await run_in_threadpool(webhooks.check, generation.webhook)
    return (await run_in_threadpool(images.prepare, generation)).checked, webhook


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidRequestError("`request` must be JSON text of Easel's request.", param="request") from None


def _from_json(data, files: dict[str, bytes]):
    """Easel's request from its JSON and the form's files (each decoded as an image, refused over the size limit)."""
    limit = max_file_bytes(None)
    for name, blob in files.items():
        if len(blob) > limit:
            raise PayloadTooLargeError(f"`{name}` is {len(blob)} bytes, over the {limit} allowed.", param=name)
    return from_json(data, {name: image_from_bytes(blob, name) for name, blob in files.items()})


@router.get("/jobs")
def list_jobs(request: Request, limit: int = Query(20, ge=1, le=500)) -> JSONResponse:
    """The most recent jobs, newest first (live state for jobs still in memory)."""
    engine = request.app.state.engine
    rows = engine.store.recent(limit)
    return JSONResponse({"object": "list", "data": [_body(engine.jobs.get(r["id"]) or r, request) for r in rows]})


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> JSONResponse:
    """A job's state: queued, running (step i of n), succeeded (image ids), failed (error) or cancelled."""
    return JSONResponse(_body(request.app.state.engine.get(job_id), request))


@router.delete("/jobs/{job_id}")
def cancel_job(job_id: str, request: Request) -> JSONResponse:
    """Cancel this job only: queued, it leaves the queue; running, it stops at the next step."""
    return JSONResponse(_body(request.app.state.engine.cancel(job_id), request))


@router.get("/jobs/{job_id}/events")
def job_events(job_id: str, request: Request, previews: bool = True) -> StreamingResponse:
    """Server-Sent Events: `progress` per step (with a `preview` PNG every 5 steps unless `previews=false`), then
    the final state (with `urls` once it succeeded)."""
    engine = request.app.state.engine
    job = engine.get(job_id)
    if not isinstance(job, Job):  # finished long ago, or run by another replica on the same database
        def recorded():
            for body, preview in engine.store.follow(job_id):
                if body["status"] in FINAL:
                    yield sse(body["status"], with_urls(body, request))
                    continue
                if preview and previews:
                    body = {**body, "preview": base64.b64encode(preview).decode()}
                yield sse("progress", body)

        return StreamingResponse(recorded(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
    if previews:
        job.preview_every(5)

    def lines():
        with job.follow() as events:  # its listener goes when the stream ends or its client goes
            for event in events:
                if event.final:
                    yield sse(event.status, with_urls(event.body, request))
                    continue
                body = dict(event.body)
                if event.previews:
                    body["preview"] = base64.b64encode(encode_image(event.previews[0], "png", {})).decode()
                yield sse("progress", body)

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
