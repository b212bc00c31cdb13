"""The commands that serve Easel: serve (the HTTP server, or a Ray Serve cluster), ui and mcp."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import (app, _err, _fail, _settings)


@app.command()
def mcp(
    transport: Annotated[str, typer.Option("--transport", help="stdio (for a local agent) or http (streamable "
                                           "HTTP at /mcp).")] = "stdio",
    host: Annotated[str, typer.Option("--host", help="Interface for http; 127.0.0.1 unless told otherwise.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port for http.")] = 8765,
) -> None:
    """Serve the MCP tools generate_image, edit_image and list_models.

    Example (an agent's MCP config): {"command": "easel", "args": ["mcp"]}
    """
    from ..mcp_server import serve as serve_mcp
    from ..server.auth import check_bind

    settings = _settings()
    if transport == "http":
        try:
            check_bind(host, settings.server_keys)
        except ValueError as exc:
            _err(f"Error: {exc}".replace(", or pass --insecure", ""))
            raise typer.Exit(2) from None
    try:
        serve_mcp(transport, host, port)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


def _serve(host: str, port: int, model: str | None, insecure: bool, ui: bool | None = None,
           cluster: dict | None = None) -> None:
    import os

    from ..server.auth import check_bind

    overrides: dict = {"default_model": model} if model else {}
    if ui is not None:
        overrides["ui"] = ui
    settings = _settings(**overrides, **{k: v for k, v in (cluster or {}).items() if v is not None and k != "address"})
    try:
        warning = check_bind(host, settings.server_keys, insecure)
    except ValueError as exc:
        _err(f"Error: {exc}")
        raise typer.Exit(2) from None
    if warning:
        _err(warning)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if cluster is not None:
        _serve_cluster(settings, host, port, cluster.get("address"))
        return
    import uvicorn

    from ..server.app import create_app

    try:
        app = create_app(settings)
    except Exception as exc:  # noqa: BLE001 - a start-up error (a clashing model folder) is a message, not a trace
        _fail(exc)
    if settings.ui:
        _err(f"Web UI: http://{host}:{port}/ui/" + (" (sign in with an API key)" if settings.server_keys else ""))
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _serve_cluster(settings, host: str, port: int, address: str | None) -> None:
    try:
        from ..serving.ray import run_cluster
    except ImportError:
        _err("Error: --ray needs Ray Serve: pip install 'easel[ray]'")
        raise typer.Exit(2) from None
    _err("Note: Ray listens on every network interface of this machine, whatever --host says; run the cluster "
         "behind a firewall or in a private network.")
    _err(f"Easel on Ray Serve: http://{host}:{port}/ (Ctrl+C stops the cluster it started)")
    try:
        run_cluster(settings, host, port, address)
    except Exception as exc:  # noqa: BLE001 - a start-up error is a message, not a trace
        _fail(exc)


Host = Annotated[str, typer.Option("--host", help="Interface to bind; 127.0.0.1 unless told otherwise.")]
ServedModel = Annotated[Optional[str], typer.Option("--model", "-m", help="Default model (and the one behind "
                                                    "dall-e-*/gpt-image-*): a name, or a folder of yours.")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback host without API keys.")]


@app.command()
def serve(host: Host = "127.0.0.1", port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
          model: ServedModel = None, insecure: Insecure = False,
          ray: Annotated[bool, typer.Option("--ray", help="Serve on a Ray Serve cluster: an ingress and one "
                                            "model deployment per model (needs easel[ray]).")] = False,
          address: Annotated[Optional[str], typer.Option("--address", help="With --ray: join this Ray cluster "
                                                         "(ray://host:10001 or auto) instead of starting one.")]
          = None,
          replicas: Annotated[Optional[int], typer.Option("--replicas", min=1, help="With --ray: replicas per "
                                                          "model.")] = None,
          autoscale: Annotated[Optional[str], typer.Option("--autoscale", help="With --ray: MIN:MAX replicas per "
                                                           "model, scaled on ongoing requests.")] = None,
          gpus_per_replica: Annotated[Optional[float], typer.Option("--gpus-per-replica", min=0, help="With --ray: "
                                                                    "GPUs per model replica (0.5 shares one).")]
          = None,
          ingress_replicas: Annotated[Optional[int], typer.Option("--ingress-replicas", min=1, help="With --ray: "
                                                                  "HTTP ingress replicas (more than one needs "
                                                                  "EASEL_DATABASE_URL).")] = None) -> None:
    """Serve the OpenAI Images API (/v1/images/...), the HF and A1111 routes, jobs, /health and the web UI (/ui).

    Example: EASEL_API_KEYS=sk-local-1 easel serve --port 8000
    Example: easel serve --ray --replicas 2 --gpus-per-replica 1
    """
    cluster = {"address": address, "ray_replicas": replicas, "ray_autoscale": autoscale,
               "ray_gpus_per_replica": gpus_per_replica, "ray_ingress_replicas": ingress_replicas}
    if not ray and any(v is not None for v in cluster.values()):
        _err("Error: --address, --replicas, --autoscale, --gpus-per-replica and --ingress-replicas go with --ray.")
        raise typer.Exit(2)
    _serve(host, port, model, insecure, cluster=cluster if ray else None)


@app.command()
def ui(host: Host = "127.0.0.1", port: Annotated[int, typer.Option("--port", help="TCP port.")] = 7860,
       model: ServedModel = None, insecure: Insecure = False) -> None:
    """Open the web UI (generate, compare, edit, history) at http://127.0.0.1:7860/ui/, with the whole API beside it.

    Example: easel ui
    """
    _serve(host, port, model, insecure, ui=True)
