"""Hugging Face Inference (`huggingface_hub.InferenceClient.text_to_image`): models named `hf:ORG/NAME`, run on
Hugging Face's servers (or on any server speaking the HF inference protocol, `hf_base_url`)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import (AuthenticationError, EaselError, InvalidRequestError, ModelNotFoundError, ProviderError,
                      RateLimitError, ServiceUnavailableError)
from .base import Batch, Progress, Provider, ProviderOutput

if TYPE_CHECKING:
    from ..catalog import ModelSpec
    from ..config import Settings
    from ..types import ImageRequest

log = logging.getLogger("easel.providers.hf")
MAX_POLL_S = 10.0  # the longest single wait between two tries while a model loads


def _status_and_body(exc: Exception) -> tuple[int | None, Any]:
    response = getattr(exc, "response", None)
    if response is None:
        return None, None
    try:
        body = response.json()
    except Exception:  # noqa: BLE001 - a body that is not JSON is kept as text
        body = getattr(response, "text", "")
    return response.status_code, body


def _message(body: Any, exc: Exception) -> str:
    if isinstance(body, dict) and body.get("error"):
        error = body["error"]
        return error if isinstance(error, str) else str(error.get("message", error))
    return str(body)[:300] if body else str(exc).splitlines()[0]


class HFInferenceProvider(Provider):
    """Hugging Face Inference API (hf:ORG/NAME) via huggingface_hub.InferenceClient."""

    name = "hf"

    def __init__(self, settings: Settings):
        self.settings = settings

    def describe(self) -> str:
        where = self.settings.hf_base_url or f"Hugging Face, provider {self.settings.hf_provider}"
        return f"Hugging Face Inference via huggingface_hub.InferenceClient ({where}); models: hf:ORG/NAME"

    def client(self, spec: ModelSpec):
        from huggingface_hub import InferenceClient

        from ..keys import get_key

        token = get_key(self.settings.keys_path, "hf", required=self.settings.hf_base_url is None)
        if self.settings.hf_base_url:  # a URL as the model: the client posts the HF protocol straight to it
            model = f"{self.settings.hf_base_url.rstrip('/')}/models/{spec.source}"
            return InferenceClient(model=model, token=token, timeout=self.settings.remote_timeout_s)
        return InferenceClient(model=spec.source, provider=self.settings.hf_provider, token=token,
                               timeout=self.settings.remote_timeout_s)

    def run_batch(self, batch: Batch, progress: Progress) -> list[ProviderOutput]:
        """One call per image; each image is one step of the batch's progress."""
        client = self.client(batch.spec)
        where = self.settings.hf_base_url or self.settings.hf_provider
        total, done, outputs = len(batch.all_seeds), 0, []
        for request, seeds in batch:
            warnings: list[str] = []
            images = []
            for seed in seeds:
                images.append(self._one(client, batch.spec, request, seed, warnings))
                done += 1
                progress.step(done, total)
            outputs.append(ProviderOutput(images=images, warnings=warnings,
                                          details={"provider": "hf", "inference_provider": where}))
        return outputs

    def _one(self, client, spec: ModelSpec, request: ImageRequest, seed: int, warnings: list[str]):
        """One image; while the model loads (503 with `estimated_time`) wait and try again, up to hf_max_wait_s."""
        deadline = time.monotonic() + self.settings.hf_max_wait_s
        waited = 0.0
        while True:
            try:
                image = client.text_to_image(
                    request.prompt, negative_prompt=request.negative_prompt or None, width=request.width,
                    height=request.height, num_inference_steps=request.num_inference_steps,
                    guidance_scale=request.guidance_scale, seed=seed)
            except Exception as exc:  # noqa: BLE001 - translated here, the provider's one place
                status, body = _status_and_body(exc)
                if status == 503 and isinstance(body, dict) and "estimated_time" in body:
                    remaining = deadline - time.monotonic()
                    if remaining > 0:
                        pause = min(max(float(body["estimated_time"]), 1.0), MAX_POLL_S, remaining)
                        log.warning("%s is loading on the server (about %.0f s); trying again in %.0f s",
                                    spec.name, float(body["estimated_time"]), pause)
                        time.sleep(pause)
                        waited += pause
                        continue
                raise self._translate(exc, spec, status, body, waited) from exc
            if waited and not any("loading" in w for w in warnings):
                warnings.append(f"{spec.name} was loading on the server; waited {waited:.0f} s for it.")
            return image if image.mode in ("RGB", "RGBA") else image.convert("RGB")

    def _translate(self, exc: Exception, spec: ModelSpec, status: int | None, body: Any,
                   waited: float) -> EaselError:
        if isinstance(exc, EaselError):
            return exc
        message = f"{spec.name}: {_message(body, exc)}"
        if status is None:
            import PIL

            if isinstance(exc, PIL.UnidentifiedImageError):  # a 200 whose body is not an image
                return ProviderError(f"{spec.name}: the answer was not an image.")
            if isinstance(exc, (OSError, TimeoutError)) or "connect" in type(exc).__name__.lower():
                return ProviderError(f"{spec.name}: could not reach the inference server ({exc}).")
            return ProviderError(f"{spec.name}: {type(exc).__name__}: {exc}")
        if status == 503:
            extra = f" after waiting {waited:.0f} s" if waited else ""
            return ServiceUnavailableError(f"The model is not ready{extra} ({message}).")
        if status in (401, 403):
            return AuthenticationError(f"The Hugging Face token was refused ({message}); run `easel keys set hf`.")
        if status == 404:
            return ModelNotFoundError(f"Not found on the inference server ({message}).", param="model")
        if status == 429:
            return RateLimitError(f"Rate limited by the inference server ({message}).")
        if status in (400, 422):
            return InvalidRequestError(f"Refused by the inference server ({message}).")
        return ProviderError(f"The inference server failed with {status} ({message}).")


def register(add, settings) -> None:
    """Entry point of the `easel.providers` group."""
    add(HFInferenceProvider(settings))
