"""The server's own routes: /health, /metrics and saved images by signed link."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .._version import __version__
from ..errors import EaselError, NotFoundError
from ..keys import key_is_valid
from .files import signed_image

FAVICON = Path(__file__).parents[1] / "ui" / "favicon.png"
from ..types import ImageRequest

router = APIRouter()


class ModelWarmup:
    """Loads the default model in the background so that /health can say 503 until it is ready."""

    def __init__(self, runner, model: str, sizes: str = "", batches: tuple[int, ...] = (1,)):
        """`sizes`: comma-separated sizes run once after loading (EASEL_WARM_SIZES), at each of `batches` images
        (a compiled model's batch sizes)."""
        self.runner, self.model = runner, model
        self.sizes = [s.strip() for s in sizes.split(",") if s.strip()]
        self.batches = list(batches)
        self.ready = threading.Event()
        self.error: str | None = None
        self.load_s: float | None = None

    def start(self) -> None:
        threading.Thread(target=self._load, name="easel-warmup", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            spec = self.runner.catalog.resolve(self.model)
            self.runner.registry.get(spec.provider).warm(spec)
            for size in self.sizes:
                # one short run per configured size and batch size: what compiles for a shape compiles now, not in
                # a request
                for n in self.batches:
                    warm = ImageRequest(prompt="warm-up", model=spec.name, size=size, num_inference_steps=2)
                    self.runner.run_many([warm] * n, save=False, max_batch_images=n)  # one call of n images
            self.load_s = time.perf_counter() - started
            self.ready.set()
        except EaselError as exc:
            self.error = exc.message
        except Exception as exc:  # noqa: BLE001 - reported by /health, never raised into the server
            self.error = f"{type(exc).__name__}: {exc}"


@router.get("/health", tags=["server"])
def health(request: Request) -> JSONResponse:
    """200 when the server can make images now: the default model is loaded, the engine's worker runs and the
    workspace has space; 503 otherwise, saying why (`status`: loading, error or unavailable; `problems`). On a
    server with API keys, a caller without one gets `status` only.
    `engine` holds the queue depth, free disk space, when an idle spell released the models (EASEL_IDLE_UNLOAD_S;
    the next job loads them again) and the last error the engine met; `memory` the RAM (and GPU memory) free and in
    use, and what the loaded models hold."""
    warmup, engine = request.app.state.warmup, request.app.state.engine
    engine_state = engine.health()
    body = {"status": "ok", "model": warmup.model, "version": __version__, "engine": engine_state,
            "memory": request.app.state.runner.memory()}
    if not warmup.ready.is_set():
        body["status"] = "error" if warmup.error else "loading"
        if warmup.error:
            body["error"] = warmup.error
    elif not engine_state["can_work"]:
        body["status"] = "unavailable"
        body["error"] = "; ".join(engine_state["problems"])
    keys = request.app.state.settings.server_keys
    if keys and not key_is_valid(request.headers.get("authorization"), keys):
        # open to probes, but a server behind keys tells a caller without one only whether it works, in a word
        body = {"status": body["status"], "service": "easel"}
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


@router.get("/metrics", tags=["server"])
def metrics(request: Request) -> Response:
    """Prometheus metrics: queue depth, jobs by state, batch sizes, step and job latency, load time, memory; on a
    cluster also its replicas, the jobs in flight on them and what each replica ran."""
    warmup, engine = request.app.state.warmup, request.app.state.engine
    m = engine.metrics
    engine.update_metrics()
    if warmup.load_s is not None:
        m.model_load_seconds.set(warmup.load_s)
    m.memory_bytes.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


def file_content(image_id: str, request: Request, expires: str | None = None,
                 signature: str | None = None) -> Response:
    """A saved image by opaque id, through a signed link valid for 60 minutes."""
    found = signed_image(request.app.state.signer, request.app.state.runner.workspace(), image_id, expires,
                         signature)
    if found is None:
        raise NotFoundError("This link does not exist or has expired, or its image is gone.")
    return Response(found[1], media_type=found[2])


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> Response:
    """Easel's icon, which browsers ask the site's root for (the web UI's pages name none)."""
    return Response(FAVICON.read_bytes(), media_type="image/png", headers={"cache-control": "max-age=86400"})


router.add_api_route("/v1/files/{image_id}/content", file_content, methods=["GET"], tags=["files"])
router.add_api_route("/files/{image_id}/content", file_content, methods=["GET"], include_in_schema=False)
