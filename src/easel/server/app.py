"""`create_app(settings)`: the FastAPI app behind `easel serve`."""

from __future__ import annotations

import base64
import mimetypes
import resource
import threading
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from .._version import __version__
from ..config import Settings, get_settings
from ..engine.queue import Engine
from ..engine.runner import Runner
from ..errors import EaselError, NotFoundError
from ..keys import key_is_valid
from ..types import ImageRequest
from . import errors as server_errors
from .a1111 import build_a1111_router
from .files import UrlSigner, load_secret
from .hf import build_hf_router
from .jobs import build_jobs_router, wait_for_job
from .middleware import FrameMiddleware
from .openai.router import build_router, openai_model_ids
from .openai.serving import DEFAULT_MAX_FILE_BYTES as MAX_UPLOAD_BYTES
from .openai.serving import ImagesService

class ModelWarmup:
    """Loads the default model in the background so that /health can say 503 until it is ready."""

    def __init__(self, runner: Runner, model: str):
        self.runner, self.model = runner, model
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
            self.load_s = time.perf_counter() - started
            self.ready.set()
        except EaselError as exc:
            self.error = exc.message
        except Exception as exc:  # noqa: BLE001 - reported by /health, never raised into the server
            self.error = f"{type(exc).__name__}: {exc}"


def create_app(settings: Settings | None = None, runner: Runner | None = None,
               clock: Callable[[], float] = time.time, warm: bool = True) -> FastAPI:
    """Build the server. `clock` drives link expiry (tests inject one); `warm` loads the model at start."""
    settings = settings or get_settings()
    runner = runner or Runner(settings, allow_paths=False)
    keys = settings.server_keys
    signer = UrlSigner(load_secret(settings.home / "server_secret"), clock=clock)
    local_model = lambda: settings.openai_model or settings.default_model  # noqa: E731
    service = ImagesService(runner, signer, local_model)
    warmup = ModelWarmup(runner, local_model())
    engine = Engine.from_settings(runner)

    app = FastAPI(title="Easel", version=__version__,
                  description="Text to image: the OpenAI Images API, the image_generator route and jobs.")
    app.state.runner, app.state.warmup, app.state.signer, app.state.engine = runner, warmup, signer, engine
    for exc_type in (EaselError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, server_errors.handle)
    app.add_middleware(FrameMiddleware, keys=keys)
    if settings.cors_origins:  # outermost, so that refusals carry CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in settings.cors_origins.split(",")],
                           allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id"])

    @app.on_event("startup")
    def _start() -> None:
        engine.start()
        if warm:
            warmup.start()
        else:
            warmup.ready.set()

    @app.on_event("shutdown")
    def _stop() -> None:
        engine.stop()

    @app.get("/metrics", tags=["server"])
    def metrics() -> Response:
        """Prometheus metrics: queue depth, jobs by state, batch sizes, step and job latency, load time, memory."""
        m = engine.metrics
        m.queue_depth.set(engine.queue_depth)
        for state, count in engine.counts().items():
            m.jobs_active.labels(state).set(count)
        if warmup.load_s is not None:
            m.model_load_seconds.set(warmup.load_s)
        m.memory_bytes.set(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", tags=["server"])
    def health() -> JSONResponse:
        """200 when the server can make images now: the default model is loaded, the engine's worker runs and the
        workspace has space; 503 otherwise, saying why (`status`: loading, error or unavailable; `problems`).
        `engine` holds the queue depth, free disk space and the last error the engine met."""
        engine_state = engine.health()
        body = {"status": "ok", "model": warmup.model, "version": __version__, "engine": engine_state}
        if not warmup.ready.is_set():
            body["status"] = "error" if warmup.error else "loading"
            if warmup.error:
                body["error"] = warmup.error
        elif not engine_state["can_work"]:
            body["status"] = "unavailable"
            body["error"] = "; ".join(engine_state["problems"])
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    router = build_router(service, engine, lambda: openai_model_ids(runner.catalog))
    app.include_router(router, prefix="/v1")
    app.include_router(router, include_in_schema=False)
    app.include_router(build_jobs_router(service, engine), prefix="/v1")
    app.include_router(build_hf_router(engine, warmup))
    app.include_router(build_a1111_router(engine, local_model))

    def file_content(image_id: str, expires: str | None = None, signature: str | None = None) -> Response:
        """A saved image by opaque id, through a signed link valid for 60 minutes."""
        if not signer.verify(image_id, expires, signature):
            raise NotFoundError("This link does not exist or has expired.")
        found = runner.workspace().read_image(image_id)
        if found is None:
            raise NotFoundError("This image does not exist.")
        name, data = found
        return Response(data, media_type=mimetypes.guess_type(name)[0] or "application/octet-stream")

    app.get("/v1/files/{image_id}/content", tags=["files"])(file_content)
    app.get("/files/{image_id}/content", include_in_schema=False)(file_content)

    async def image_generator(request: Request, q: str | None = None) -> JSONResponse:
        """The kdeps route: `q` is the prompt; answers `{"errors", "response": {"data": [{"file"}]}, "success"}`."""
        prompt = q
        if prompt is None and request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                body = {}
            prompt = body.get("q") if isinstance(body, dict) else None
        try:
            if not prompt:
                from ..errors import InvalidRequestError

                raise InvalidRequestError("Missing required parameter: 'q' (the prompt).", param="q")
            job = engine.submit(ImageRequest(prompt=prompt, model=local_model()))
            result = await wait_for_job(engine, job, request)
        except EaselError as exc:
            return JSONResponse({"errors": [{"code": exc.status, "message": exc.message}],
                                 "response": {"data": []}, "success": False}, status_code=exc.status)
        data = [{"file": "data:image/png;base64," + base64.b64encode(im.to_bytes()).decode()}
                for im in result.images]
        return JSONResponse({"errors": [{"code": 0, "message": ""}], "response": {"data": data}, "success": True})

    for method in ("GET", "POST"):
        app.add_api_route("/api/v1/image_generator", image_generator, methods=[method], tags=["kdeps"],
                          operation_id=f"image_generator_{method.lower()}")
    if settings.ui:
        mount_ui(app, engine, keys)
    return app


def mount_ui(app: FastAPI, engine: Engine, keys: list[str]) -> None:
    """The Gradio UI at /ui; with API keys configured, its login page takes any name and a key as password."""
    import gradio as gr

    from ..ui.app import build_ui, ui_cache

    def login(_user: str, password: str) -> bool:
        return key_is_valid(f"Bearer {password}", keys)

    gr.mount_gradio_app(app, build_ui(engine), path="/ui", root_path="/ui", auth=login if keys else None,
                        auth_message="Sign in with any name and one of the server's API keys as password.",
                        show_error=True, footer_links=["api"], max_file_size=MAX_UPLOAD_BYTES,
                        allowed_paths=[str(ui_cache(engine.runner.settings.home))])
