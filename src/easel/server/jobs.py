"""Easel's jobs API: create a job and return at once, follow it (SSE), cancel it."""

from __future__ import annotations

import asyncio
import base64
import json

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.jobs import FINAL, Job, JobStore
from ..engine.queue import Engine
from ..metadata import encode_image
from ..types import ImageResult
from .openai.protocol import GenerationRequest


def _body(job_or_row, request: Request) -> dict:
    """A job's JSON (the same live or recorded), with a signed link to each of its images once it succeeded."""
    body = job_or_row.snapshot() if isinstance(job_or_row, Job) else JobStore.describe(job_or_row)
    return with_urls(body, request)


def with_urls(body: dict, request: Request) -> dict:
    if body["image_ids"]:
        signer, base = request.app.state.signer, str(request.base_url)
        body = {**body, "urls": [signer.url(base, image_id) for image_id in body["image_ids"]]}
    return body


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


@router.post("/jobs", status_code=202)
def create_job(body: GenerationRequest, request: Request) -> JSONResponse:
    """Queue a generation (same body as /v1/images/generations) and return its id at once."""
    # previews every 5 steps, asked for now: the client follows the job next, maybe on another replica
    job = request.app.state.engine.submit(request.app.state.images.prepare(body).checked, preview_every=5)
    return JSONResponse(job.snapshot(), status_code=202)


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
