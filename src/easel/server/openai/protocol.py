"""Request and response models of the OpenAI Images API (shared/specs/openai-images.md): OpenAI's fields first,
then Easel's extensions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import InvalidRequestError

Quality = Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"]


class ImageParams(BaseModel):
    """Fields shared by generations, edits and variations. `None` (JSON null) means the default."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    n: int | None = Field(None, description="How many images, 1-10 (dall-e-3: 1).")
    size: str | None = Field(None, description="WIDTHxHEIGHT or auto.")
    response_format: Literal["url", "b64_json"] | None = Field(None, description="Default url for dall-e-2 and "
                                                               "dall-e-3 (as OpenAI's), else b64_json.")
    user: str | None = None
    safety_identifier: str | None = Field(None, description="An identifier of the end user (like `user`: kept in "
                                          "no record, used for nothing).")
    # --- Easel extensions -------------------------------------------------------------------------------------
    negative_prompt: str | None = Field(None, description="Easel: what the image should not show.")
    seed: int | None = Field(None, description="Easel: seed of the first image.")
    num_inference_steps: int | None = Field(None, description="Easel: denoising steps (overrides quality).")
    guidance_scale: float | None = Field(None, description="Easel: guidance scale.")
    scheduler: str | None = Field(None, description="Easel: the sampler, e.g. dpm++, euler_a (the model's own).")
    # an object, or JSON text in a multipart form (checked by `to_image_request`, which names `options`)
    options: Any = Field(None, description="Easel: options of the model's family, e.g. {\"true_cfg_scale\": 4} or "
                         "{\"offload\": \"model\"} (JSON text in a multipart form).", json_schema_extra={"anyOf": [
                             {"type": "object"}, {"type": "string"}, {"type": "null"}]})
    # checked by the request check, which names `loras` in every error (a union here would name its members)
    loras: Any = Field(None, description="Easel: LoRAs of the server's loras folder by name, with their weights: "
                       "{\"watercolor\": 0.8} (JSON text in a multipart form). A1111's <lora:name:weight> tags in "
                       "the prompt work too.", json_schema_extra={"anyOf": [
                           {"type": "object", "additionalProperties": {"type": "number"}}, {"type": "string"},
                           {"type": "null"}]})
    control: Any = Field(None, description="Easel: ControlNet units, each {model, image (base64), preprocessor (none, "
                         "canny, invert), weight, start, end, low_threshold, high_threshold}; model a ControlNet of "
                         "the server's controlnets folder by name (or a hub id).", json_schema_extra={"anyOf": [
                             {"type": "array", "items": {"type": "object"}}, {"type": "string"}, {"type": "null"}]})
    ip_adapter: Any = Field(None, description="Easel: an image prompt {model, image (base64), scale}: an IP-Adapter "
                            "of the server's ip_adapters folder by name (or a hub id).", json_schema_extra={"anyOf": [
                                {"type": "object"}, {"type": "string"}, {"type": "null"}]})
    hires_scale: float | None = Field(None, description="Easel: A1111's hires fix: make the image at its size, "
                                      "upscale it by this factor (1-4), then image-to-image.")
    hires_size: str | None = Field(None, description="Easel: the hires fix to an exact size (WxH) instead of a "
                                   "factor: upscaled to cover it, then cropped to it (A1111's hr_resize_x/y).")
    hires_upscaler: str = Field("lanczos", description="Easel: the hires fix's upscaler: lanczos, bicubic, nearest "
                                "or an upscaler model of the server's upscalers folder.")
    hires_strength: float = Field(0.55, description="Easel: the hires fix's denoising strength.")
    hires_steps: int | None = Field(None, description="Easel: the hires fix's steps (default: the request's).")
    webhook: str | None = Field(None, description="Easel: a URL that hears the job's end: its final JSON, signed "
                                "(X-Easel-Signature), POSTed there and tried again until it answers 2xx.")
    enhance_prompt: bool | None = Field(None, description="Easel: have the server's chat model rewrite the prompt "
                                        "into a detailed one (the answer's revised_prompt): true, false, or unset "
                                        "for the server's rule (short prompts, where a chat model is configured).")


class GenerationRequest(ImageParams):
    """POST /v1/images/generations (JSON)."""

    prompt: str = Field(..., description="What to draw.")
    quality: Quality | None = None
    style: Literal["vivid", "natural"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, description="0-100, for jpeg and webp.")
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, description="0-3 previews while streaming.")
    complexity: Literal["low", "medium", "high"] | None = Field(
        None, description="Planning before drawing: low draws the prompt as written; medium and high have the "
        "server's chat model rewrite it into a detailed one first (`enhance_prompt`, which wins where both are given).")
    # GIF and SVG output (gpt-image's previews) are not made here: refused by name, never silently ignored
    frame_count: Any = Field(None, json_schema_extra={"type": "integer"})
    frame_duration_ms: Any = Field(None, json_schema_extra={"type": "integer"})
    svg: Any = Field(None, json_schema_extra={"type": "object"})
    # --- Easel extensions -------------------------------------------------------------------------------------
    aspect: str | None = Field(None, description="Easel: an aspect preset of the model (16:9) or any W:H.")


class EditRequest(GenerationRequest):
    """POST /v1/images/edits (multipart): the images and the mask arrive as files beside these fields. With no mask
    and no transparent pixel, the whole image changes as the prompt says (but for dall-e-2, which needs one)."""

    input_fidelity: Literal["high", "low"] | None = None
    strength: float | None = Field(None, description="Easel: how much of the masked area changes (0.01-1); "
                                   "with no mask, of the whole picture (default 0.8).")
    # --- Easel extensions (A1111's names) ---------------------------------------------------------------------
    mask_blur: int | None = Field(None, description="Easel: pixels over which the edit blends in (0-64, default 4).")
    inpaint_full_res: bool | None = Field(None, description="Easel: the model sees only the masked area, at full "
                                          "resolution.")
    inpaint_full_res_padding: int | None = Field(None, description="Easel: pixels around the masked area (32).")


class VariationRequest(ImageParams):
    """POST /v1/images/variations (multipart)."""

    # --- Easel extensions -------------------------------------------------------------------------------------
    prompt: str | None = Field(None, description="Easel: steers the variations (default: the image's own prompt).")
    strength: float | None = Field(None, description="Easel: 0 keeps the image, 1 redraws it (default 0.6).")
    output_format: Literal["png", "jpeg", "webp"] | None = Field(None, description="Easel: png (default), jpeg or "
                                                                 "webp.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    total_tokens: int


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: str | None = None
    output_format: str | None = None
    quality: str | None = None
    size: str | None = None
    usage: Usage | None = None
    # --- Easel extensions -------------------------------------------------------------------------------------
    warnings: list[str] | None = Field(None, description="Easel: what the model changed or ignored of the request "
                                       "(left out when nothing was).")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def validated(model_cls: type[BaseModel], fields: Any):
    """`fields` as `model_cls`, or a client's error naming the first field that is wrong (a route that reads its
    own body validates here)."""
    try:
        return model_cls.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "missing":
            raise InvalidRequestError(f"Missing required parameter: '{param}'.", param=param) from None
        if first["type"] == "extra_forbidden":
            raise InvalidRequestError(f"Unknown parameter: '{param}'.", param=param) from None
        raise InvalidRequestError(f"Invalid value for '{param}': {first['msg']} (got {first.get('input')!r}).",
                                  param=param) from None
