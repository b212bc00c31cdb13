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
from .openai.protocol import GenerationRequest
from .openai.serving import ImagesService


def _body(job_or_row) -> dict:
    return job_or_row.snapshot() if isinstance(job_or_row, Job) else JobStore.describe(job_or_row)


async def wait_for_job(engine, job, request: Request):
    """Wait for a job without holding a thread; a client that disconnects cancels its job."""
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()
    job.add_done_callback(lambda: loop.call_soon_threadsafe(finished.set))
    while not finished.is_set():
        try:
            await asyncio.wait_for(finished.wait(), 0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                engine.cancel(job.id)
    if job.state == "succeeded":
        return job.result
    raise job.error  # a failed job's error, or JobCancelledError (409)


def build_jobs_router(service: ImagesService, engine: Engine) -> APIRouter:
    router = APIRouter(tags=["jobs"])

    @router.post("/jobs", status_code=202)
    def create_job(body: GenerationRequest) -> JSONResponse:
        """Queue a generation (same body as /v1/images/generations) and return its id at once."""
        job = engine.submit(service.prepare(body).checked)
        return JSONResponse(job.snapshot(), status_code=202)

    @router.get("/jobs")
    def list_jobs(limit: int = Query(20, ge=1, le=500)) -> JSONResponse:
        """The most recent jobs, newest first (live state for jobs of this process)."""
        rows = engine.store.recent(limit)
        return JSONResponse({"object": "list", "data": [_body(engine.jobs.get(r["id"]) or r) for r in rows]})

    @router.get("/jobs/{job_id}")
    def get_job(job_id: str) -> JSONResponse:
        """A job's state: queued, running (step i of n), succeeded (image ids), failed (error) or cancelled."""
        return JSONResponse(_body(engine.get(job_id)))

    @router.delete("/jobs/{job_id}")
    def cancel_job(job_id: str) -> JSONResponse:
        """Cancel this job only: queued, it leaves the queue; running, it stops at the next step."""
        return JSONResponse(engine.cancel(job_id).snapshot())

    @router.get("/jobs/{job_id}/events")
    def job_events(job_id: str) -> StreamingResponse:
        """Server-Sent Events: `progress` per step (with a `preview` PNG every 5 steps), then the final state."""
        job = engine.get(job_id)
        if not isinstance(job, Job):
            body = _body(job)

            def finished():
                yield f"event: {body['status']}\ndata: {json.dumps(body)}\n\n"

            return StreamingResponse(finished(), media_type="text/event-stream")
        job.preview_every(5)
        events = job.subscribe()

        def lines():
            try:
                while (event := events.get()) is not None:
                    state = event.get("status")
                    if state in FINAL:
                        yield f"event: {state}\ndata: {json.dumps(event)}\n\n"
                        continue
                    event = dict(event)  # shared with the job's other listeners
                    previews = event.pop("preview", None)
                    if previews:
                        event["preview"] = base64.b64encode(encode_image(previews[0], "png", {})).decode()
                    yield f"event: progress\ndata: {json.dumps(event)}\n\n"
            finally:  # the stream ended, or its client went away
                job.unsubscribe(events)

        return StreamingResponse(lines(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    return router
