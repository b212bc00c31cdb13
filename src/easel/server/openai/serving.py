"""The Images API's logic, with no web framework in it: OpenAI request -> ImageRequest -> OpenAI response."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...checks import CheckedRequest
from ...control import ip_adapter_from_json, units_from_json
from ...errors import EaselError, InvalidRequestError, UnsupportedError
from ...metadata import encode_image, prompt_of
from ...prompts import OPENAI_STYLES, with_style
from ...openai_models import check_openai_rules, rules_for
from ...types import ImageRequest, ImageResult
from .protocol import (EditRequest, GenerationRequest, ImageData, ImagesResponse, InputTokensDetails, Usage,
                       VariationRequest)

if TYPE_CHECKING:
    import PIL.Image

    from ...engine.jobs import Job
    from ...engine.runner import Runner
    from ..files import UrlSigner


QUALITY_STEPS = {"low": 0.5, "standard": 1.0, "medium": 1.0, "auto": 1.0, "high": 1.5, "hd": 1.5, "xhigh": 2.0,
                 "max": 2.5}
URL_BY_DEFAULT = ("dall-e-2", "dall-e-3")  # OpenAI's default response_format for these is url; b64_json otherwise
STILL_ONLY = ("frame_count", "frame_duration_ms", "svg")  # GIF and SVG output's fields
MAX_FILE_BYTES = {"dall-e-2": 4 * 1024 * 1024}
DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024


def max_file_bytes(model: str | None) -> int:
    return MAX_FILE_BYTES.get(model or "", DEFAULT_MAX_FILE_BYTES)


def usage_for(prompt: str, inputs: list[PIL.Image.Image], outputs: list) -> Usage:
    """Token counts in OpenAI's shape: prompt words, and 1 token per 32x32 patch of every image in and out."""
    text = len(prompt.split())
    image_in = sum(math.ceil(im.width * im.height / 1024) for im in inputs)
    out = sum(math.ceil(im.width * im.height / 1024) for im in outputs)
    return Usage(input_tokens=text + image_in, input_tokens_details=InputTokensDetails(
        text_tokens=text, image_tokens=image_in), output_tokens=out, total_tokens=text + image_in + out)


def styled_prompt(req) -> str | None:
    """The prompt with the words of DALL-E 3's `style` (vivid or natural) appended, when one is asked for."""
    prompt, style = getattr(req, "prompt", None), getattr(req, "style", None)
    return with_style(prompt, OPENAI_STYLES[style]) if style and prompt else None


def _given(value, default):
    """A field's value, or `default` when the client left it out (0 is a value, never a default)."""
    return default if value is None else value


def to_image_request(req: GenerationRequest | EditRequest | VariationRequest, mode: str,
                     images: list[PIL.Image.Image] | None, mask: PIL.Image.Image | None,
                     local_model: str) -> ImageRequest:
    """An OpenAI request (JSON, or multipart fields and their images) as Easel's: the front's one mapping. OpenAI's
    own model names run on the server's local model; no size (or auto) is the model's default, or for edits and
    variations the input image's size."""
    prompt = styled_prompt(req) or getattr(req, "prompt", None) or ""
    if mode == "vary" and not prompt:
        prompt = prompt_of(images[0])
    return ImageRequest(
        prompt=prompt, model=local_model if rules_for(req.model) is not None else req.model,
        num_images=1 if req.n is None else req.n, size=None if req.size in (None, "auto") else req.size,
        num_inference_steps=req.num_inference_steps, guidance_scale=req.guidance_scale, seed=req.seed,
        negative_prompt=req.negative_prompt, output_format=getattr(req, "output_format", None) or "png",
        mode=mode, image=images[0] if images else None, mask=mask, references=list(images[1:]) if images else [],
        moderation=getattr(req, "moderation", None) or "auto",
        mask_blur=getattr(req, "mask_blur", None), inpaint_full_res=bool(getattr(req, "inpaint_full_res", False)),
        inpaint_full_res_padding=_given(getattr(req, "inpaint_full_res_padding", None), 32),
        strength=getattr(req, "strength", None),
        aspect=getattr(req, "aspect", None), scheduler=req.scheduler,
        extra=_json_object(req.options, "options", "option: value"),
        loras=_json_object(req.loras, "loras", "name: weight"), enhance_prompt=_enhance(req),
        control=units_from_json(req.control),
        hires_scale=req.hires_scale, hires_size=req.hires_size, hires_upscaler=req.hires_upscaler,
        hires_strength=req.hires_strength, hires_steps=req.hires_steps, ip_adapter=ip_adapter_from_json(req.ip_adapter),
    )


def _enhance(req) -> bool | None:
    """`enhance_prompt`, else what `complexity` asks for (low: the prompt as written; medium, high: rewritten)."""
    complexity = getattr(req, "complexity", None)
    if req.enhance_prompt is not None or complexity is None:
        return req.enhance_prompt
    return complexity != "low"


def _json_object(value, param: str, shape: str) -> dict:
    """An object field (`options`, `loras`), sent as an object or as JSON text (a multipart form's field)."""
    if value is None:
        return {}
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # text that is no JSON is refused below, as it was sent
            value = json.loads(value)
    if not isinstance(value, dict):
        raise InvalidRequestError(f"`{param}` must be a JSON object of {shape} but is {value!r}.", param=param)
    return value


@dataclass
class Prepared:
    """An OpenAI request turned into Easel's, with what the response must echo."""

    checked: CheckedRequest
    response_format: str
    quality: str
    styled_prompt: str | None
    inputs: list[Any]
    output_compression: int | None
    event_prefix: str
    always_revised: bool = False  # dall-e-3 answers a revised_prompt every time, the prompt as drawn where no other

    @property
    def request(self) -> ImageRequest:
        return self.checked.request


class ImagesService:
    """Generations, edits and variations on top of a Runner; signs URLs for `response_format=url`."""

    def __init__(self, runner: Runner, signer: UrlSigner, local_model: str, edit_model: str | None = None):
        self.runner = runner
        self.signer = signer
        self.local_model = local_model
        self.edit_model = edit_model  # what OpenAI's names edit with (EASEL_OPENAI_EDIT_MODEL; None: local_model)

    # -- request mapping -------------------------------------------------------------------------------------------
    def prepare(self, req: GenerationRequest | EditRequest | VariationRequest, mode: str = "generate",
                images: list[PIL.Image.Image] | None = None, mask: PIL.Image.Image | None = None) -> Prepared:
        openai = rules_for(req.model)
        if openai is not None:
            check_openai_rules(*openai, req)
        quality = getattr(req, "quality", None) or "auto"
        output_format = getattr(req, "output_format", None) or "png"
        compression = getattr(req, "output_compression", None)
        if compression is not None:
            if not 0 <= compression <= 100:
                raise InvalidRequestError(f"`output_compression` must be between 0 and 100 but is {compression}.",
                                          param="output_compression")
            if output_format == "png":
                raise InvalidRequestError("`output_compression` applies to jpeg and webp only.",
                                          param="output_compression")
        partial = getattr(req, "partial_images", None)
        if partial is not None and not 0 <= partial <= 3:
            raise InvalidRequestError(f"`partial_images` must be between 0 and 3 but is {partial}.",
                                      param="partial_images")
        for name in STILL_ONLY:
            if getattr(req, name, None) is not None:
                raise UnsupportedError(f"`{name}` applies to GIF or SVG output, and Easel makes still images "
                                       "(png, jpeg or webp): leave it out.", param=name)
        if mode == "edit" and mask is None and req.model == "dall-e-2" and self.edit_model is None:
            raise InvalidRequestError("dall-e-2 edits the area a mask names (or the image's transparent pixels), and "
                                      "neither was given.", param="mask")  # its documented rule
        local = (self.edit_model or self.local_model) if mode == "edit" else self.local_model
        request = to_image_request(req, mode, images, mask, local)
        # the one check: every client mistake is a 400 before any work (or any stream) starts
        checked = self.runner.check(request)
        spec = checked.spec
        if quality == "low" and spec.family.preview_decoder and "decoder" not in request.extra:
            with contextlib.suppress(EaselError):  # the tiny decoder where it is on this machine; else as asked
                checked = self.runner.check(request.replace(extra={**request.extra, "decoder": "tiny"}))
                checked.request.warnings.append(f"quality=low: decoded with {spec.family.preview_decoder}, the "
                                                "family's tiny autoencoder (less fine detail, a fraction of the time)")
        if getattr(req, "background", None) == "transparent":
            raise UnsupportedError(f"{spec.name} cannot make transparent backgrounds; use opaque or auto.",
                                   param="background")
        factor = QUALITY_STEPS.get(quality, 1.0)
        if req.num_inference_steps is None and spec.default_steps and factor != 1.0:
            checked.request.num_inference_steps = max(1, round(spec.default_steps * factor))
        default_format = "url" if req.model in URL_BY_DEFAULT else "b64_json"
        return Prepared(checked=checked, response_format=req.response_format or default_format, quality=quality,
                        styled_prompt=styled_prompt(req), inputs=list(images or []), output_compression=compression,
                        event_prefix="image_edit" if mode == "edit" else "image_generation",
                        always_revised=req.model == "dall-e-3")

    # -- responses -------------------------------------------------------------------------------------------------
    def encode(self, prepared: Prepared, image) -> bytes:
        quality = prepared.output_compression
        return image.to_bytes(quality=quality if quality is not None and image.output_format != "png" else None)

    def image_data(self, prepared: Prepared, result: ImageResult, base_url: str) -> list[ImageData]:
        revised = result.revised_prompt or prepared.styled_prompt
        if revised is None and prepared.always_revised:
            revised = prepared.request.prompt
        data = []
        for im in result.images:
            if prepared.response_format == "url":
                data.append(ImageData(url=self.signer.url(base_url, im.id), revised_prompt=revised))
            else:
                data.append(ImageData(b64_json=base64.b64encode(self.encode(prepared, im)).decode(),
                                      revised_prompt=revised))
        return data

    def response(self, prepared: Prepared, result: ImageResult, base_url: str) -> ImagesResponse:
        first = result.images[0]
        return ImagesResponse(
            created=int(time.time()), data=self.image_data(prepared, result, base_url), background="opaque",
            output_format=prepared.request.output_format, quality=prepared.quality,
            size=f"{first.width}x{first.height}",
            usage=usage_for(prepared.request.prompt, prepared.inputs, [im.image for im in result.images]),
            warnings=result.warnings or None,
        )

    def stream(self, prepared: Prepared, job: Job, partial_images: int) -> Iterator[dict[str, Any]]:
        """Events of a streamed job (submitted with `listen=True`): `partial_images` previews from intermediate
        steps, then one completed event per image; a failure after the stream began becomes an error event."""
        request = prepared.request
        common = {"background": "opaque", "output_format": request.output_format, "quality": prepared.quality}
        prefix = prepared.event_prefix
        sent = 0
        with job.follow() as events:
            for event in events:
                for im in event.previews[:1]:
                    if sent < partial_images:
                        im = im.resize((request.width, request.height))
                        yield {"type": f"{prefix}.partial_image", "b64_json": base64.b64encode(
                            encode_image(im, request.output_format, {})).decode(), "partial_image_index": sent,
                            "created_at": int(time.time()), "size": f"{im.width}x{im.height}", **common}
                        sent += 1
        if job.state != "succeeded":
            error = job.error
            yield {"type": "error", "error": {"message": error.message, "type": error.type, "code": error.code,
                                              "param": error.param}}
            return
        result = job.result
        usage = usage_for(request.prompt, prepared.inputs, [im.image for im in result.images])
        said = {"warnings": result.warnings} if result.warnings else {}  # as the plain answer says them
        for im in result.images:
            yield {"type": f"{prefix}.completed", "b64_json": base64.b64encode(self.encode(prepared, im)).decode(),
                   "created_at": int(time.time()), "size": f"{im.width}x{im.height}", "usage": usage.model_dump(),
                   **common, **said}
