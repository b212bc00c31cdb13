"""The OpenAI Images API through the official `openai` SDK: OpenAI itself, or any OpenAI-compatible server
(`base_url`), Easel's own included. Models are named `openai:MODEL` (`openai:gpt-image-1`, `openai:dall-e-3`)."""

from __future__ import annotations

import base64
import io
import logging
from typing import TYPE_CHECKING, Any

from ..errors import (AuthenticationError, ContentPolicyError, EaselError, InvalidRequestError, ProviderError,
                      RateLimitError, ServiceUnavailableError)
from .. import masks
from ..openai_models import check_openai_rules, rules_for
from ..types import image_from_bytes
from .base import Batch, Progress, Provider, ProviderOutput

if TYPE_CHECKING:
    from ..catalog import ModelSpec
    from ..config import Settings
    from ..types import ImageRequest

log = logging.getLogger("easel.providers.openai")
# the key a local OpenAI-compatible server gets when none is configured (the SDK insists on one)
NO_KEY = "easel-no-key"


class _RequestView:
    """The OpenAI-shaped fields of an Easel request, for the shared OpenAI rule checks."""

    def __init__(self, request: ImageRequest):
        self.prompt = request.prompt if request.mode != "vary" else None
        self.n = request.num_images
        self.size = f"{request.width}x{request.height}"
        self.quality = request.extra.get("quality")
        self.style = request.extra.get("style")


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def translate_error(exc: Exception, model: str) -> EaselError:
    """The SDK's exceptions -> Easel's error tree, keeping the service's own message."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body["error"] if isinstance(body.get("error"), dict) else body  # the SDK may unwrap it already
        message = error.get("message") or exc.message
        code, param = error.get("code"), error.get("param")
        where = f"{model}: {message}"
        if code == "content_policy_violation" or "safety system" in str(message):
            return ContentPolicyError(f"Refused by the provider's content policy ({where})", param="prompt")
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return AuthenticationError(f"The OpenAI key was refused ({where}); run `easel keys set openai`.")
        if isinstance(exc, openai.RateLimitError):
            return RateLimitError(f"Rate limited by the provider ({where})", retry_after=_retry_after(exc))
        if isinstance(exc, openai.BadRequestError):
            return InvalidRequestError(f"Refused by the provider ({where})", param=param)
        if exc.status_code == 503:
            return ServiceUnavailableError(f"The provider is unavailable ({where})")
        return ProviderError(f"The provider failed with {exc.status_code} ({where})")
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"{model}: the provider did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{model}: could not reach the provider ({exc.__cause__ or exc}).")
    return ProviderError(f"{model}: {type(exc).__name__}: {exc}")


def _retry_after(exc) -> float:
    try:
        return float(exc.response.headers.get("retry-after", "1"))
    except (TypeError, ValueError, AttributeError):
        return 1.0


class OpenAIProvider(Provider):
    """OpenAI images API (openai:MODEL): generations, edits with masks, variations; any OpenAI-compatible base_url."""

    name = "openai"

    def __init__(self, settings: Settings):
        self.settings = settings
        self._clients: dict[tuple[str | None, str], Any] = {}

    def describe(self) -> str:
        where = self.settings.openai_base_url or "OPENAI_BASE_URL or api.openai.com"
        return f"OpenAI images API via the openai SDK ({where}); models: openai:gpt-image-1, openai:dall-e-3, ..."

    def client(self):
        import os

        import openai

        from ..keys import get_key

        base_url = self.settings.openai_base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = get_key(self.settings.keys_path, "openai", required=base_url is None) or NO_KEY
        cache_key = (base_url, key)
        if cache_key not in self._clients:
            self._clients[cache_key] = openai.OpenAI(api_key=key, base_url=base_url, max_retries=2,
                                                     timeout=self.settings.remote_timeout_s)
        return self._clients[cache_key]

    def check(self, spec: ModelSpec, request: ImageRequest) -> None:
        rules = rules_for(spec.source)
        if rules is not None:
            check_openai_rules(*rules, _RequestView(request))
        style = request.extra.get("style")
        if style is not None and style not in ("vivid", "natural"):
            raise InvalidRequestError(f"`style` must be vivid or natural but is {style!r}.", param="style")

    def _arguments(self, spec: ModelSpec, request: ImageRequest, seed: int) -> dict[str, Any]:
        args: dict[str, Any] = {"model": spec.source, "n": request.num_images,
                                "size": f"{request.width}x{request.height}"}
        if spec.family.name != "openai-gpt-image":
            args["response_format"] = "b64_json"  # gpt-image models always answer b64_json and refuse the field
        else:
            args["output_format"] = request.output_format
            if request.moderation == "low":
                args["moderation"] = "low"
        for key in ("quality", "style", "background", "output_compression"):
            if key in request.extra:
                args[key] = request.extra[key]
        if spec.family.name == "openai-compatible":  # Easel's extensions, for servers that take them
            extra = {"seed": seed, "num_inference_steps": request.num_inference_steps,
                     "guidance_scale": request.guidance_scale, "negative_prompt": request.negative_prompt}
            args["extra_body"] = {k: v for k, v in extra.items() if v is not None}
        return args

    def run_batch(self, batch: Batch, progress: Progress) -> list[ProviderOutput]:
        """One API call per request (the service makes all of a request's images); each call is one step."""
        outputs = []
        for i, (request, seeds) in enumerate(batch):
            outputs.append(self._run_one(batch.spec, request, seeds))
            progress.step(i + 1, len(batch))
        return outputs

    def _run_one(self, spec: ModelSpec, request: ImageRequest, seeds: list[int]) -> ProviderOutput:
        args = self._arguments(spec, request, seeds[0])
        client = self.client()
        try:
            if request.mode == "generate":
                response = client.images.generate(prompt=request.prompt, **args)
            elif request.mode == "edit":
                images = [(f"image{i}.png", _png(image), "image/png")
                          for i, image in enumerate([request.image, *request.references])]
                mask = None if request.mask is None else \
                    ("mask.png", _png(masks.to_openai(request.image, request.mask)), "image/png")
                response = client.images.edit(prompt=request.prompt, image=images if len(images) > 1 else images[0],
                                              mask=mask,
                                              **_without(args, "style", "moderation", "extra_body"),
                                              extra_body=args.get("extra_body"))
            else:
                response = client.images.create_variation(image=("image.png", _png(request.image), "image/png"),
                                                          **_without(args, "style", "quality", "moderation",
                                                                     "output_format", "background",
                                                                     "output_compression", "extra_body"),
                                                          extra_body=args.get("extra_body"))
        except Exception as exc:  # noqa: BLE001 - translated into Easel's errors here, the provider's one place
            raise translate_error(exc, spec.name) from exc
        images = [self._image(spec, item) for item in response.data or []]
        if len(images) != request.num_images:
            raise ProviderError(f"{spec.name}: asked for {request.num_images} images but got {len(images)}.")
        revised = next((d.revised_prompt for d in response.data if getattr(d, "revised_prompt", None)), None)
        details: dict[str, Any] = {"provider": "openai"}
        if spec.family.name != "openai-compatible":
            details.update(seed=None, num_inference_steps=None, guidance_scale=None)  # OpenAI takes none of them
        return ProviderOutput(images=images, revised_prompt=revised, details=details)

    def _image(self, spec: ModelSpec, item):
        if item.b64_json:
            raw = base64.b64decode(item.b64_json)
        elif item.url:
            import httpx

            answer = httpx.get(item.url, timeout=self.settings.remote_timeout_s)
            if answer.status_code != 200:
                raise ProviderError(f"{spec.name}: fetching the image failed with {answer.status_code}.")
            raw = answer.content
        else:
            raise ProviderError(f"{spec.name}: the answer held no image.")
        try:
            image = image_from_bytes(raw, "image")
        except InvalidRequestError:
            raise ProviderError(f"{spec.name}: the provider's answer is not an image "
                                f"({raw[:120]!r}).") from None
        return image if image.mode in ("RGB", "RGBA") else image.convert("RGB")


def _without(args: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k not in names}


def register(add, settings) -> None:
    """Entry point of the `easel.providers` group."""
    add(OpenAIProvider(settings))
