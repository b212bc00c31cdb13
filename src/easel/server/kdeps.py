"""The kdeps route, `/api/v1/image_generator`: `q` is the prompt, the answer an envelope
`{"errors": [...], "response": {"data": [{"file": "data:image/png;base64,..."}]}, "success": true}`."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..errors import EaselError, InvalidRequestError
from ..types import ImageRequest
from .jobs import wait_for_job

router = APIRouter(tags=["kdeps"])


def to_image_request(prompt: str | None, model: str) -> ImageRequest:
    """The route's `q` as a request on the server's local model: the front's one mapping."""
    if not prompt:
        raise InvalidRequestError("Missing required parameter: 'q' (the prompt).", param="q")
    return ImageRequest(prompt=prompt, model=model)


async def image_generator(request: Request, q: str | None = None) -> JSONResponse:
    """The kdeps route: `q` (query or JSON body) is the prompt; answers `{"errors", "response": {"data":
    [{"file"}]}, "success"}`, with the error's HTTP status when it fails."""
    if q is None and request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            body = {}
        q = body.get("q") if isinstance(body, dict) else None
    engine = request.app.state.engine
    try:
        job = await run_in_threadpool(engine.submit, to_image_request(q, request.app.state.local_model))
        result = await wait_for_job(engine, job, request)
    except EaselError as exc:
        return JSONResponse({"errors": [{"code": exc.status, "message": exc.message}], "response": {"data": []},
                             "success": False}, status_code=exc.status)
    data = [{"file": "data:image/png;base64," + base64.b64encode(im.to_bytes()).decode()} for im in result.images]
    return JSONResponse({"errors": [{"code": 0, "message": ""}], "response": {"data": data}, "success": True})


for _method in ("GET", "POST"):
    router.add_api_route("/api/v1/image_generator", image_generator, methods=[_method],
                         operation_id=f"image_generator_{_method.lower()}")
