"""The commands that look after Easel: models, keys, history, jobs, show and providers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import (app, models_app, keys_app, _err, _fail, _runner, ListJson, RowsJson)


@models_app.callback()
def models(ctx: typer.Context, as_json: ListJson = False) -> None:
    """List known models and whether each is on this machine.

    Example: easel models
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..catalog import (CONTROLNET_MARKER, IP_ADAPTER_MARKER, UPSCALER_MARKER, lora_files, model_folders,
                          upscaler_files)

    runner = _runner()
    rows = []
    for spec in runner.catalog.listed():  # the catalog, plugins', the operator's folders and files, cached GGUFs
        kind = "gguf" if spec.gguf else "checkpoint" if spec.checkpoint else "model"
        about = spec.description + (f" GGUF: {spec.name}:Q4_0 (Q8_0, Q5_K_S, ...)" if spec.gguf_files else "")
        local = spec.is_available_locally()
        size = runner.footprint(spec) if local else {"size_gb": None, "fits": "unknown (not downloaded)"}
        rows.append({"name": spec.name, "kind": kind, "family": spec.family.name, "does": spec.family.does,
                     "source": spec.source, "base": spec.base, "local": local, "gated": spec.gated, **size,
                     "description": about})
    for name, path in lora_files(runner.settings.loras_folder).items():
        rows.append({"name": name, "kind": "lora", "family": "lora", "source": str(path), "local": True,
                     "gated": False, "description": f"LoRA: loras={{'{name}': 0.8}} or <lora:{name}:0.8>"})
    for name, path in lora_files(runner.settings.embeddings_folder).items():
        rows.append({"name": name, "kind": "embedding", "family": "embedding", "source": str(path), "local": True,
                     "gated": False, "description": f"textual-inversion embedding: write {name} in a prompt"})
    settings = runner.settings
    for kind, folder, marker, use in (
            ("controlnet", settings.controlnets_folder, CONTROLNET_MARKER, "--control {}:IMAGE"),
            ("ip-adapter", settings.ip_adapters_folder, IP_ADAPTER_MARKER, "--ip-adapter {}:IMAGE"),
            ("upscaler", settings.upscalers_folder, UPSCALER_MARKER, "easel upscale IMAGE --upscaler {}")):
        files = upscaler_files(folder) if kind == "upscaler" else {}
        for name in sorted({*model_folders(folder, marker), *files}):
            rows.append({"name": name, "kind": kind, "family": kind, "source": str(files.get(name, folder / name)),
                         "local": True, "gated": False, "description": use.format(name)})
    for name, why in sorted(runner.catalog.unusable.items()):  # the models folder's files that cannot run, once
        rows.append({"name": name, "kind": "unusable", "family": "-", "source": str(settings.models_folder / name),
                     "local": False, "gated": False, "description": f"cannot run: {why}"})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("model", "family", "does", "local", "size", "fits here", "source", "about")
    for r in rows:
        size = f"{r['size_gb']:.2f} GB" if r.get("size_gb") is not None else ""
        table.add_row(r["name"], r["family"], r.get("does", ""), "yes" if r["local"] else "no", size, r.get("fits", ""),
                      r["source"] + (" (gated)" if r["gated"] else ""), escape(r["description"]))
    Console().print(table)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Catalog name, hub id or checkpoint file.")]) -> None:
    """Download a model into the hub cache (resumable; uses the token from `easel keys set hf`); for a single-file
    checkpoint, the configuration it loads with offline (configs and tokenizers, no weights).

    Example: easel models pull sdxl-turbo
    """
    from ..api import pull_model

    try:
        path = pull_model(name)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    typer.echo(path)


@keys_app.command("set")
def keys_set(
    name: Annotated[str, typer.Argument(help="openai or hf (or another provider's name).")],
    value: Annotated[Optional[str], typer.Option("--value", help="The key (prompted for when not given).")] = None,
) -> None:
    """Store a key.

    Example: easel keys set hf
    """
    from ..config import get_settings
    from ..keys import set_key

    if value is None and not sys.stdin.isatty():  # `echo KEY | easel keys set openai`: no prompt, no warning
        value = sys.stdin.readline()
    secret = value or typer.prompt(f"Key for {name}", hide_input=True)
    set_key(get_settings().keys_path, name, secret.strip())
    typer.echo(f"Saved the {name} key to {get_settings().keys_path}")


@keys_app.command("list")
def keys_list() -> None:
    """List the names of stored keys (never the keys)."""
    from ..config import get_settings
    from ..keys import stored_keys

    for name in sorted(stored_keys(get_settings().keys_path)):
        typer.echo(name)


@keys_app.command("path")
def keys_path() -> None:
    """Print where keys are stored."""
    from ..config import get_settings

    typer.echo(get_settings().keys_path)


@app.command()
def history(
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many rows.")] = 20,
    search: Annotated[Optional[str], typer.Option("--search", "-s", help="Only prompts containing this.")] = None,
    as_json: RowsJson = False,
) -> None:
    """List recent generations, newest first.

    Example: easel history -n 5 --search circle
    """
    from ..config import get_settings
    from ..store import History

    rows = History(get_settings().history_location).recent(limit, search)
    if as_json:
        for r in rows:
            r["parameters"] = json.loads(r["parameters"])
            typer.echo(json.dumps(r))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("created", "model", "seed", "size", "prompt")
    table.add_column("path", overflow="fold")  # a path is whole or useless: wrapped, never cut
    for r in rows:
        table.add_row(r["created"][:19], r["model"], str(r["seed"]), f"{r['width']}x{r['height']}", r["prompt"],
                      r["path"] or "")
    Console().print(table)


@app.command()
def jobs(
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many rows.")] = 20,
    as_json: RowsJson = False,
) -> None:
    """List the server's recent jobs and their states, newest first.

    Example: easel jobs -n 5
    """
    from ..config import get_settings
    from ..engine.jobs import JobStore
    from ..store import History

    rows = JobStore(History(get_settings().history_location)).recent(limit)
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("created", "id", "state", "step", "error")
    for r in rows:
        error = json.loads(r["error"])["message"] if r["error"] else ""
        table.add_row(r["created"][:19], r["id"], r["state"], f"{r['step']}/{r['total_steps']}", error)
    Console().print(table)


@app.command()
def show(
    file: Annotated[Path, typer.Argument(help="An image Easel saved.")],
    as_json: Annotated[bool, typer.Option("--json", help="The parameters as JSON on stdout.")] = False,
) -> None:
    """Print the parameters an image was made with.

    Example: easel show ~/.local/share/easel/images/2026-01-01/...png
    """
    from PIL import Image

    from ..metadata import read_a1111_text, read_parameters

    try:
        image = Image.open(file)
    except OSError:
        _err(f"Error: {str(file)!r} is not an image file.")
        raise typer.Exit(2)
    params = read_parameters(image)
    if params is None:
        _err(f"Error: {str(file)!r} carries no Easel parameters.")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(params, indent=2, ensure_ascii=False))
    else:
        typer.echo(read_a1111_text(image) or json.dumps(params, indent=2))


@app.command()
def providers(as_json: ListJson = False) -> None:
    """List the installed providers (entry points of the `easel.providers` group).

    Example: easel providers
    """
    from ..config import get_settings
    from ..providers.base import ProviderRegistry

    registry = ProviderRegistry(get_settings())
    rows = [{"name": name, "about": registry.get(name).describe(),
             "class": f"{type(registry.get(name)).__module__}.{type(registry.get(name)).__name__}"}
            for name in registry.names()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['name']:<10} {row['about']}")
