"""The Hugging Face inference protocol: `POST /models/{model}` with `{"inputs": prompt, "parameters": {...}}`,
answered with the image's bytes (what `huggingface_hub.InferenceClient.text_to_image` sends and reads)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import EaselError, InvalidRequestError
from ..types import ImageRequest
from .jobs import wait_for_job

MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class TextToImageParameters(BaseModel):
    """The text-to-image parameters of the HF inference spec."""

    model_config = ConfigDict(extra="forbid")

    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    scheduler: str | None = None
    target_size: dict[str, int] | None = Field(None, description="{width, height}, the older spelling.")


class TextToImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: TextToImageParameters = TextToImageParameters()


def hf_error(status: int, message: str, **extra: Any) -> JSONResponse:
    """The HF inference error body: `{"error": message}` (plus `estimated_time` while a model loads)."""
    return JSONResponse({"error": message, **extra}, status_code=status)


def to_image_request(model: str, body: TextToImageRequest, accept: str) -> ImageRequest:
    """The HF protocol's request as Easel's: the front's one mapping. The image's format follows `Accept`."""
    p = body.parameters
    size = p.target_size or {}
    output_format = next((fmt for fmt, media in MEDIA.items() if media in accept), "png")
    return ImageRequest(prompt=body.inputs, model=model, negative_prompt=p.negative_prompt,
                        width=p.width or size.get("width"), height=p.height or size.get("height"),
                        num_inference_steps=p.num_inference_steps, guidance_scale=p.guidance_scale, seed=p.seed,
                        scheduler=p.scheduler, output_format=output_format)


router = APIRouter(tags=["hugging face"])


@router.post("/models/{model:path}")
async def text_to_image(model: str, request: Request) -> Response:
    """Text to image in the HF inference protocol; errors as `{"error": ...}`."""
    try:
        raw = await request.json()
    except ValueError:
        return hf_error(400, "The body is not valid JSON.")
    try:
        body = TextToImageRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return hf_error(400, f"Invalid `{where}`: {first['msg']}.")
    engine, warmup = request.app.state.engine, request.app.state.warmup
    try:
        wanted = to_image_request(model, body, request.headers.get("accept", ""))
        checked = await run_in_threadpool(engine.runner.check, wanted)
        loading = checked.spec.name == engine.runner.catalog.resolve(warmup.model).name
        if loading and not warmup.ready.is_set():
            if warmup.error:
                return hf_error(503, f"Model {model} failed to load: {warmup.error}")
            return hf_error(503, f"Model {model} is currently loading", estimated_time=5.0)
        job = await run_in_threadpool(engine.submit, checked)
        result = await wait_for_job(engine, job, request)
    except EaselError as exc:
        extra = {"param": exc.param} if isinstance(exc, InvalidRequestError) and exc.param else {}
        return hf_error(exc.status, exc.message, **extra)
    image = result.images[0]
    return Response(image.to_bytes(), media_type=MEDIA[image.output_format],
                    headers={"x-easel-image-id": image.id or "",
                             "x-easel-seed": "" if image.seed is None else str(image.seed)})
