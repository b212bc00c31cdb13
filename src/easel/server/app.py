"""`create_app(settings)`: the FastAPI app behind `easel serve`. Its routes live at module level in their own
modules and read what they need (engine, runner, signer, ...) from `app.state`, which this module fills."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .._version import __version__
from ..config import Settings, get_settings
from ..engine.queue import Engine
from ..engine.runner import Runner
from ..errors import EaselError
from ..keys import key_is_valid
from ..providers.base import bucket_sizes
from . import a1111, a1111_control, comfyui, hf, jobs, kdeps, system
from . import errors as server_errors
from .files import UrlSigner, load_secret
from .middleware import ApiKeys, BodyLimit, CatchErrors, RequestId
from .openai import router as openai_router
from .openai.serving import DEFAULT_MAX_FILE_BYTES as MAX_UPLOAD_BYTES
from .openai.serving import ImagesService
from .webhooks import Webhooks


def create_app(settings: Settings | None = None, runner: Runner | None = None,
               clock: Callable[[], float] = time.time, warm: bool = True, engine: Engine | None = None) -> FastAPI:
    """Build the server. `clock` drives link expiry (tests inject one); `warm` loads the model at start; `engine`
    replaces the one built from the settings (a cluster's ingress passes the engine that sends jobs to its model
    replicas)."""
    settings = settings or get_settings()
    runner = engine.runner if engine is not None else runner or Runner(settings, allow_paths=False)
    engine = engine or Engine.from_settings(runner)
    local_model = settings.openai_model or settings.default_model  # what OpenAI's model names run on
    # a compiled model compiles once per shape: warmed at each batch size it runs (see providers.base.bucket)
    batches = tuple(bucket_sizes(settings.max_batch_images)) if settings.compile != "none" else (1,)
    warmup = system.ModelWarmup(runner, local_model, settings.warm_sizes, batches)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.start()
        if warm:
            warmup.start()
        else:
            warmup.ready.set()
        yield
        webhooks.stop()
        engine.stop()

    app = FastAPI(title="Easel", version=__version__, lifespan=lifespan,
                  description="Text to image: the OpenAI Images API, the image_generator route and jobs.")
    signer = UrlSigner(load_secret(settings.home / "server_secret", settings.server_secret), clock=clock)
    webhooks = Webhooks(_webhook_secret(settings), engine.store, settings.webhook_allow_private,
                        settings.webhook_attempts)
    app.state.settings, app.state.runner, app.state.engine, app.state.warmup = settings, runner, engine, warmup
    app.state.signer, app.state.local_model, app.state.webhooks = signer, local_model, webhooks
    app.state.images = ImagesService(runner, signer, local_model, settings.openai_edit_model)
    app.state.a1111 = a1111.A1111State(local_model)
    app.state.comfy = comfyui.ComfyState(settings.home / "comfy_inputs")

    for exc_type in (EaselError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(exc_type, server_errors.handle)
    # the frame, innermost first: body limits, API keys, the one error catch, request ids
    app.add_middleware(BodyLimit)
    app.add_middleware(ApiKeys, keys=settings.server_keys)
    app.add_middleware(CatchErrors)
    app.add_middleware(RequestId)
    if settings.cors_origins:  # outermost, so that refusals carry CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[o.strip() for o in settings.cors_origins.split(",")],
                           allow_methods=["*"], allow_headers=["*"], expose_headers=["x-request-id"])

    app.include_router(system.router)
    app.include_router(openai_router.router, prefix="/v1")
    app.include_router(openai_router.router, include_in_schema=False)  # for clients that forget the /v1
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(hf.router)
    app.include_router(a1111.router)
    app.include_router(a1111_control.controlnet_router)
    app.include_router(kdeps.router)
    app.include_router(comfyui.router)
    if settings.ui:
        mount_ui(app, engine, settings.server_keys)
    return app


def _webhook_secret(settings: Settings) -> bytes:
    """EASEL_WEBHOOK_SECRET as its bytes (any text), else the one created once in HOME/webhook_secret (hex)."""
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    return load_secret(settings.home / "webhook_secret").hex().encode()


def mount_ui(app: FastAPI, engine: Engine, keys: list[str]) -> None:
    """The Gradio UI at /ui; with API keys configured, its login page takes any name and a key as password."""
    import gradio as gr

    from ..ui.app import build_ui, ui_cache

    def login(_user: str, password: str) -> bool:
        return key_is_valid(f"Bearer {password}", keys)

    from ..ui.app import CSS

    gr.mount_gradio_app(app, build_ui(engine), path="/ui", root_path="/ui", auth=login if keys else None,
                        auth_message="Sign in with any name and one of the server's API keys as password.",
                        show_error=True, footer_links=["api"], max_file_size=MAX_UPLOAD_BYTES,
                        allowed_paths=[str(ui_cache(engine.runner.settings.home))], css=CSS)
