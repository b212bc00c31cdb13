"""The `easel` command line: the app, its shared options and the one place errors become messages; the commands
are in `images` (generate, edit, vary, upscale), `admin` (models, keys, history, jobs, show, providers) and
`serving` (serve, ui, mcp). Heavy libraries (torch, diffusers) load only inside the commands that need them, so
`easel --help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    help="Easel: text to image with any model, from the command line.\n\n"
    "Example: easel generate \"a large red circle on the left on a blue background\" --seed 7",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List and download models.", invoke_without_command=True)
keys_app = typer.Typer(help="Store API keys for remote providers and the hub (0600 keys.json).", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")


def _err(message: str) -> None:
    typer.echo(message, err=True)


# Easel's parameter names -> the options that set them, so that an error names what the user typed
OPTIONS = {"num_inference_steps": "--steps", "guidance_scale": "--guidance", "n": "-n", "negative_prompt": "--negative",
           "output_format": "--format", "model": "--model", "seed": "--seed", "size": "--size", "aspect": "--aspect",
           "scheduler": "--scheduler", "strength": "--strength", "mask": "--mask", "mask_blur": "--mask-blur",
           "inpaint_full_res_padding": "--padding", "control": "--control", "ip_adapter": "--ip-adapter",
           "hires_scale": "--hires", "hires_upscaler": "--hires-upscaler", "hires_strength": "--hires-strength",
           "hires_steps": "--hires-steps", "from": "--from", "loras": "--lora"}


_debug = False  # `easel --debug ...`: a failure that is not Easel's own shows its traceback


@app.callback()
def global_options(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected failure.")]
         = False) -> None:
    global _debug
    _debug = debug


def _fail(exc: Exception) -> None:
    """The CLI's one place that turns errors into a message and an exit code: Easel's own in the CLI's terms, any
    other as one line naming it (its traceback only with --debug)."""
    from ..errors import EaselError, InvalidRequestError

    if isinstance(exc, EaselError):
        _err(f"Error: {exc.renamed(OPTIONS).message}")
        raise typer.Exit(2 if isinstance(exc, InvalidRequestError) else 1)
    if _debug or isinstance(exc, (typer.Exit, KeyboardInterrupt)):
        raise exc
    _err(f"Error: {type(exc).__name__}: {exc} (run `easel --debug ...` to see where it came from)")
    raise typer.Exit(1)


def _settings(**overrides):
    """Settings from the environment; a malformed one (EASEL_API_KEYS=",") is an error message, not a traceback."""
    from pydantic import ValidationError

    from ..config import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            name = "EASEL_" + "_".join(str(p) for p in error["loc"]).upper()
            _err(f"Error: {name}: {error['msg'].removeprefix('Value error, ')}")
        raise typer.Exit(2) from None


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _runner():
    from ..api import default_runner

    return default_runner()


def _runner_for_jobs(local: bool):
    """The runner of generate, edit and vary: a running Easel server when one answers at EASEL_HOST (default
    127.0.0.1:8000), so that a call pays neither the imports nor the model load; else this process."""
    if not local:
        from ..api import use_runner
        from ..client import ServerClient, ServerRunner

        settings = _settings()
        client = ServerClient.find(settings)
        if client is not None:
            use_runner(ServerRunner(client, settings))
    return _runner()


class _StepProgress:
    """A rich progress bar over denoising steps, fed by the pipeline's step callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            from rich.console import Console

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.progress.__enter__()
            self.task = self.progress.add_task("loading model", total=None)
        return self

    def on_step(self, step: int, total: int, preview=None) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description="denoising", completed=step, total=total)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)


def _print_result(result, as_json: bool) -> None:
    for warning in result.warnings:
        _err(f"Warning: {warning}")
    for im in result.images:
        path = str(Path(im.path).resolve()) if im.path else None  # the same whether it ran here or on a server
        if as_json:
            p = im.parameters
            typer.echo(json.dumps({"path": path, "id": im.id, "prompt": p["prompt"], "seed": im.seed,
                                   "model": p["model"], "width": im.width, "height": im.height,
                                   "steps": p["num_inference_steps"], "guidance": p["guidance_scale"],
                                   "revised_prompt": p.get("revised_prompt"), "loras": p.get("loras", {}),
                                   "control": p.get("control", []), "ip_adapter": p.get("ip_adapter"),
                                   "hires": p.get("hires"), "warnings": result.warnings}))
        else:
            typer.echo(path)


Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name, alias, hub id or local folder.")]
Base = Annotated[Optional[str], typer.Option("--base", help="For a GGUF model: the pipeline of its family whose text "
                                             "encoders and VAE it runs with (name, hub id or folder).")]
Count = Annotated[int, typer.Option("-n", "--n", help="How many images (1-10).")]
Size = Annotated[Optional[str], typer.Option("--size", help="WIDTHxHEIGHT, e.g. 1024x768.")]
Steps = Annotated[Optional[int], typer.Option("--steps", help="Denoising steps (model default when unset).")]
Guidance = Annotated[Optional[float], typer.Option("--guidance", help="Guidance scale (true CFG for Qwen-Image).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed of the first image; the next ones use seed+1...")]
Negative = Annotated[Optional[str], typer.Option("--negative", help="Negative prompt.")]
Format = Annotated[str, typer.Option("--format", help="png, jpeg or webp.")]
Out = Annotated[Optional[Path], typer.Option("--out", help="Folder for the images (default: the workspace).")]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")]
Local = Annotated[bool, typer.Option("--local", help="Run in this process even when an Easel server answers at "
                                     "EASEL_HOST (default 127.0.0.1:8000; EASEL_HOST=off never asks one).")]
ListJson = Annotated[bool, typer.Option("--json", help="The list as one JSON array on stdout.")]
RowsJson = Annotated[bool, typer.Option("--json", help="One JSON object per row on stdout.")]
Options = Annotated[Optional[list[str]], typer.Option(
    "--option", "-o", help="A model-family option as KEY=VALUE, e.g. -o true_cfg_scale=4 -o offload=model.")]


Loras = Annotated[Optional[list[str]], typer.Option(
    "--lora", help="A LoRA as NAME[:WEIGHT] (a file of EASEL_HOME/loras, or a .safetensors path), repeatable; "
    "<lora:name:weight> in the prompt works too.")]


Controls = Annotated[Optional[list[str]], typer.Option(
    "--control", help="A ControlNet unit as NAME:IMAGE[:WEIGHT[:PREPROCESSOR]], repeatable: NAME a folder of "
    "EASEL_HOME/controlnets (or a hub id), PREPROCESSOR none, canny or invert (canny when NAME says canny).")]


from . import images, admin, serving  # noqa: E402, F401 - their commands join `app`


def main() -> None:
    app()
