"""The `easel` command line. Heavy libraries (torch, diffusers) load only inside the commands that need them, so
`easel --help` stays fast."""

from __future__ import annotations

import json
import sys
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
           "inpaint_full_res_padding": "--padding"}


_debug = False  # `easel --debug ...`: a failure that is not Easel's own shows its traceback


@app.callback()
def global_options(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected failure.")]
         = False) -> None:
    global _debug
    _debug = debug


def _fail(exc: Exception) -> None:
    """The CLI's one place that turns errors into a message and an exit code: Easel's own in the CLI's terms, any
    other as one line naming it (its traceback only with --debug)."""
    from .errors import EaselError, InvalidRequestError

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

    from .config import Settings

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
    from .api import default_runner

    return default_runner()


def _runner_for_jobs(local: bool):
    """The runner of generate, edit and vary: a running Easel server when one answers at EASEL_HOST (default
    127.0.0.1:8000), so that a call pays neither the imports nor the model load; else this process."""
    if not local:
        from .api import use_runner
        from .client import ServerClient, ServerRunner

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
        if as_json:
            p = im.parameters
            typer.echo(json.dumps({"path": im.path, "id": im.id, "prompt": p["prompt"], "seed": im.seed,
                                   "model": p["model"], "width": im.width, "height": im.height,
                                   "steps": p["num_inference_steps"], "guidance": p["guidance_scale"],
                                   "revised_prompt": p.get("revised_prompt"), "loras": p.get("loras", {}),
                                   "control": p.get("control", []), "warnings": result.warnings}))
        else:
            typer.echo(im.path)


Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Model name, alias, hub id or local folder.")]
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


def _controls(specs: list[str] | None) -> list:
    """`--control canny:edges.png:0.8` as ControlNet units (their images read here)."""
    from .api import load_image
    from .control import PREPROCESSORS, ControlUnit
    from .errors import InvalidRequestError

    units = []
    for spec in specs or []:
        name, _, rest = spec.partition(":")
        parts = rest.split(":")
        preprocessor = parts[2] if len(parts) > 2 else ("canny" if "canny" in name.lower() else "none")
        if not name or not parts[0] or len(parts) > 3 or preprocessor not in PREPROCESSORS:
            raise InvalidRequestError(f"`--control` must be NAME:IMAGE[:WEIGHT[:PREPROCESSOR]] (PREPROCESSOR one of "
                                      f"{', '.join(PREPROCESSORS)}) but is {spec!r}.", param="control")
        try:
            weight = float(parts[1]) if len(parts) > 1 and parts[1] else 1.0
        except ValueError:
            raise InvalidRequestError(f"`--control` takes a number as its weight but got {parts[1]!r}.",
                                      param="control") from None
        units.append(ControlUnit(model=name, image=load_image(Path(parts[0]), "control"), weight=weight,
                                 preprocessor=preprocessor))
    return units


def _ip_adapter(spec: str):
    """`--ip-adapter style:picture.png:0.7` as an image prompt (its image read here)."""
    from .api import load_image
    from .control import IPAdapter
    from .errors import InvalidRequestError

    name, _, rest = spec.partition(":")
    path, _, scale = rest.partition(":")
    if not name or not path:
        raise InvalidRequestError(f"`--ip-adapter` must be NAME:IMAGE[:SCALE] but is {spec!r}.", param="ip_adapter")
    try:
        value = float(scale) if scale else 0.6
    except ValueError:
        raise InvalidRequestError(f"`--ip-adapter` takes a number as its scale but got {scale!r}.",
                                  param="ip_adapter") from None
    return IPAdapter(name, load_image(Path(path), "ip_adapter"), value)


def _loras(specs: list[str] | None) -> dict:
    """`--lora name:0.8` (weight 1 when left out; a path may hold colons, so the weight is the last part)."""
    from .errors import InvalidRequestError

    out = {}
    for spec in specs or []:
        name, sep, weight = spec.rpartition(":")
        if not sep or not name or "/" in weight or "\\" in weight:
            name, weight = spec, "1"
        try:
            out[name] = float(weight)
        except ValueError:
            raise InvalidRequestError(f"`--lora` must be NAME or NAME:WEIGHT but is {spec!r}.", param="lora") from None
    return out


def _options(pairs: list[str] | None, command=None) -> dict:
    """`-o KEY=VALUE` pairs: options of the model's family. A key that `command` (the library function the command
    calls) takes as a parameter of its own has an option of the command: it is named, not passed twice."""
    import inspect

    from .errors import InvalidRequestError

    own = {name for name, p in inspect.signature(command).parameters.items()
           if p.kind is not p.VAR_KEYWORD} if command is not None else set()
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"`--option` must be KEY=VALUE but is {pair!r}.", param="option")
        if key.strip() in own:
            flag = OWN_FLAGS.get(key.strip(), "--" + key.strip().replace("_", "-"))
            raise InvalidRequestError(f"`--option {key.strip()}` is not an option of the model: use {flag}.",
                                      param="option")
        out[key.strip()] = _parse_value(value.strip())
    return out


# the library's parameters that a command's own option sets under another name
OWN_FLAGS = {"inpaint_full_res": "--only-masked", "inpaint_full_res_padding": "--padding", "n": "-n",
             "negative_prompt": "--negative", "output_format": "--format", "out_dir": "--out"}


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    model: Model = None,
    n: Count = 1,
    batches: Annotated[int, typer.Option("--batches", min=1, max=100, help="Run that many batches of -n images "
                                         "one after another (A1111's batch count), seeds following on.")] = 1,
    size: Size = None,
    aspect: Annotated[Optional[str], typer.Option("--aspect", help="Aspect preset, e.g. 16:9.")] = None,
    steps: Steps = None,
    guidance: Guidance = None,
    seed: Seed = None,
    negative: Negative = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="e.g. dpm++, euler_a, ddim.")] = None,
    output_format: Format = "png",
    out: Out = None,
    as_json: AsJson = False,
    local: Local = False,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts-file", help="One prompt a line.")] = None,
    from_file: Annotated[Optional[Path], typer.Option("--from", help="Reproduce the image in this file.")] = None,
    option: Options = None,
    lora: Loras = None,
    enhance: Annotated[Optional[bool], typer.Option("--enhance/--no-enhance", help="Have the configured chat model "
                       "rewrite the prompt (EASEL_PROMPT_ENHANCER_MODEL); default: short prompts, when one is.")]
    = None,
    control: Controls = None,
    ip_adapter: Annotated[Optional[str], typer.Option("--ip-adapter", help="An image prompt as NAME:IMAGE[:SCALE] "
                          "(NAME a folder of EASEL_HOME/ip_adapters, or a hub id; scale 0.6 when left out).")] = None,
    hires: Annotated[Optional[float], typer.Option("--hires", help="Hires fix: make the image at its size, upscale "
                     "it by this factor (1-4), then image-to-image at --hires-strength.")] = None,
    hires_upscaler: Annotated[str, typer.Option("--hires-upscaler", help="lanczos, bicubic, nearest or an upscaler "
                              "model of EASEL_HOME/upscalers.")] = "lanczos",
    hires_strength: Annotated[float, typer.Option("--hires-strength", help="The second pass's denoising "
                              "strength.")] = 0.55,
    hires_steps: Annotated[Optional[int], typer.Option("--hires-steps", help="The second pass's steps (default: "
                           "--steps).")] = None,
) -> None:
    """Generate images from a prompt and save them.

    Example: easel generate "a small yellow square at the top on a black background" -n 4 --seed 1
    """
    try:
        base = to_image_request(_request_from_file(from_file) if from_file is not None else None, model=model,
                                size=size, aspect=aspect, steps=steps, guidance=guidance, seed=seed,
                                negative=negative, scheduler=scheduler, n=n, output_format=output_format,
                                options=_options(option), loras=_loras(lora))
        if enhance is not None:
            base = base.replace(enhance_prompt=enhance)
        if control:
            base = base.replace(control=_controls(control))
        if ip_adapter:
            base = base.replace(ip_adapter=_ip_adapter(ip_adapter))
        if hires is not None:
            base = base.replace(hires_scale=hires, hires_upscaler=hires_upscaler, hires_strength=hires_strength,
                                hires_steps=hires_steps)
        if from_file is not None:
            base = _left_out(base, from_file)
        if prompts_file is not None:
            prompts = [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
        elif prompt is not None:
            prompts = [prompt]
        elif from_file is not None:
            prompts = [base.prompt]
        else:
            _err("Error: give a PROMPT, --prompts-file or --from.")
            raise typer.Exit(2)
        requests = [base.replace(prompt=p, seed=None if base.seed is None else base.seed + b * n)
                    for p in prompts for b in range(batches)]
        with _StepProgress(enabled=not as_json and sys.stderr.isatty()) as bar:
            results = _runner_for_jobs(local).run_many(requests, out_dir=out, on_step=bar.on_step)
    except Exception as exc:  # noqa: BLE001 - _fail names what is not Easel's
        _fail(exc)
    for result in results:
        _print_result(result, as_json)


def to_image_request(base, *, model, size, aspect, steps, guidance, seed, negative, scheduler, n, output_format,
                     options: dict, loras: dict):
    """The command line's options as a request (its one mapping), over `base` (the request of `--from`) where
    given; the prompt is filled in per line of `--prompts-file`."""
    from .types import ImageRequest

    base = base or ImageRequest(prompt="")
    overrides = {k: v for k, v in dict(
        model=model, size=size, aspect=aspect, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
        negative_prompt=negative, scheduler=scheduler).items() if v is not None}
    if size is not None or aspect is not None:
        base = base.replace(width=None, height=None)
    return base.replace(**overrides, num_images=n, output_format=output_format, extra={**base.extra, **options},
                        loras={**base.loras, **loras})


def _request_from_file(path: Path):
    """The request that made an image, from its embedded parameters (see `request_json.from_record`)."""
    from PIL import Image

    from .errors import InvalidRequestError
    from .metadata import read_parameters
    from .request_json import from_record

    try:
        params = read_parameters(Image.open(path))
    except OSError:
        raise InvalidRequestError(f"`--from` must be an image file but {str(path)!r} is not one.", param="from")
    if not params:
        raise InvalidRequestError(f"{str(path)!r} carries no Easel parameters.", param="from")
    if params.get("mode", "generate") != "generate":
        _err(f"Warning: {path.name} was made by {'an edit' if params['mode'] == 'edit' else 'a variation'} of an "
             "image that its record does not keep: this makes a new image from its prompt and settings.")
    return from_record(params)


def _left_out(request, source: Path):
    """`request` without the ControlNet units and image prompt whose images `--from` could not bring back (and that
    `--control` and `--ip-adapter` did not give again), each named in a warning: the image will differ."""
    for unit in request.control:
        if unit.image is None:
            _err(f"Warning: {source.name} was made with the ControlNet {unit.model!r} (weight {unit.weight}, "
                 f"preprocessor {unit.preprocessor}), whose guiding image its record does not keep: it is left out, "
                 f"so the image will differ. Give it again: --control {unit.model}:IMAGE:{unit.weight}:"
                 f"{unit.preprocessor}.")
    prompt = request.ip_adapter
    if prompt is not None and prompt.image is None:
        _err(f"Warning: {source.name} was made with the IP-Adapter {prompt.model!r} (scale {prompt.scale}), whose "
             f"image its record does not keep: it is left out, so the image will differ. Give it again: "
             f"--ip-adapter {prompt.model}:IMAGE:{prompt.scale}.")
        prompt = None
    return request.replace(control=[unit for unit in request.control if unit.image is not None], ip_adapter=prompt)


@app.command()
def edit(
    image: Annotated[Path, typer.Argument(help="The image to change.")],
    prompt: Annotated[str, typer.Argument(help="What the masked area should show.")],
    mask: Annotated[Optional[Path], typer.Option("--mask", help="White = repaint. Default: the transparent part "
                                                 "(or, with none, the whole picture as the prompt says).")] = None,
    mask_blur: Annotated[Optional[int], typer.Option("--mask-blur", help="Pixels over which the edit blends in "
                                                     "(default 4).")] = None,
    only_masked: Annotated[bool, typer.Option("--only-masked", help="The model sees only the masked area (plus "
                                              "--padding), at full resolution: for small areas.")] = False,
    padding: Annotated[int, typer.Option("--padding", help="Pixels around the masked area with --only-masked.")]
    = 32,
    model: Model = None,
    n: Count = 1,
    steps: Steps = None,
    guidance: Guidance = None,
    seed: Seed = None,
    negative: Negative = None,
    output_format: Format = "png",
    out: Out = None,
    as_json: AsJson = False,
    local: Local = False,
    option: Options = None,
    lora: Loras = None,
) -> None:
    """Repaint part of an image (inpainting).

    Example: easel edit scene.png "a green triangle" --mask mask.png
    """
    from . import api

    try:
        _runner_for_jobs(local)
        with _StepProgress(enabled=not as_json and sys.stderr.isatty()) as bar:
            result = api.edit(image, prompt, mask=mask, model=model, n=n, steps=steps, guidance=guidance, seed=seed,
                              negative_prompt=negative, mask_blur=mask_blur, inpaint_full_res=only_masked,
                              inpaint_full_res_padding=padding, output_format=output_format, out_dir=out,
                              on_step=bar.on_step, loras=_loras(lora), **_options(option, api.edit))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    _print_result(result, as_json)


@app.command()
def vary(
    image: Annotated[Path, typer.Argument(help="The image to vary.")],
    prompt: Annotated[Optional[str], typer.Argument(help="Steer the variations (default: the image's prompt).")]
    = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="0 keeps the image, 1 redraws it.")]
    = None,
    model: Model = None,
    n: Count = 1,
    size: Size = None,
    steps: Steps = None,
    guidance: Guidance = None,
    seed: Seed = None,
    negative: Negative = None,
    output_format: Format = "png",
    out: Out = None,
    as_json: AsJson = False,
    local: Local = False,
    option: Options = None,
    lora: Loras = None,
) -> None:
    """Make variations of an image (image-to-image).

    Example: easel vary circle.png --strength 0.5 -n 4
    """
    from . import api

    try:
        _runner_for_jobs(local)
        with _StepProgress(enabled=not as_json and sys.stderr.isatty()) as bar:
            result = api.vary(image, prompt or "", strength=strength, model=model, n=n, size=size, steps=steps,
                              guidance=guidance, seed=seed, negative_prompt=negative, output_format=output_format,
                              out_dir=out, on_step=bar.on_step, loras=_loras(lora), **_options(option, api.vary))
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    _print_result(result, as_json)


@models_app.callback()
def models(ctx: typer.Context, as_json: ListJson = False) -> None:
    """List known models and whether each is on this machine.

    Example: easel models
    """
    if ctx.invoked_subcommand is not None:
        return
    from .catalog import (CONTROLNET_MARKER, IP_ADAPTER_MARKER, UPSCALER_MARKER, lora_files, model_folders,
                          upscaler_files)

    runner = _runner()
    rows = []
    for spec in runner.catalog.models.values():  # the catalog, plugins' models, the operator's folders and files
        rows.append({"name": spec.name, "kind": "checkpoint" if spec.checkpoint else "model",
                     "family": spec.family.name, "source": spec.source, "local": spec.is_available_locally(),
                     "gated": spec.gated, "description": spec.description})
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
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("model", "family", "local", "source", "about")
    for r in rows:
        table.add_row(r["name"], r["family"], "yes" if r["local"] else "no",
                      r["source"] + (" (gated)" if r["gated"] else ""), escape(r["description"]))
    Console().print(table)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Catalog name, hub id or checkpoint file.")]) -> None:
    """Download a model into the hub cache (resumable; uses the token from `easel keys set hf`); for a single-file
    checkpoint, the configuration it loads with offline (configs and tokenizers, no weights).

    Example: easel models pull sdxl-turbo
    """
    from .api import pull_model

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
    from .config import get_settings
    from .keys import set_key

    if value is None and not sys.stdin.isatty():  # `echo KEY | easel keys set openai`: no prompt, no warning
        value = sys.stdin.readline()
    secret = value or typer.prompt(f"Key for {name}", hide_input=True)
    set_key(get_settings().keys_path, name, secret.strip())
    typer.echo(f"Saved the {name} key to {get_settings().keys_path}")


@keys_app.command("list")
def keys_list() -> None:
    """List the names of stored keys (never the keys)."""
    from .config import get_settings
    from .keys import stored_keys

    for name in sorted(stored_keys(get_settings().keys_path)):
        typer.echo(name)


@keys_app.command("path")
def keys_path() -> None:
    """Print where keys are stored."""
    from .config import get_settings

    typer.echo(get_settings().keys_path)


@app.command()
def upscale(
    image: Annotated[Path, typer.Argument(help="The image to enlarge.")],
    scale: Annotated[float, typer.Option("--scale", help="How many times larger (1-8).")] = 2.0,
    upscaler: Annotated[str, typer.Option("--upscaler", help="lanczos, bicubic, nearest, or an upscaler model of "
                        "EASEL_HOME/upscalers (SD's x4 upscaler) or the hub.")] = "lanczos",
    output: Annotated[Optional[Path], typer.Option("--output", help="Where to write it (default: beside the "
                      "image, as NAME-x2.png).")] = None,
    tile: Annotated[int, typer.Option("--tile", help="An upscaler model works on tiles of this many pixels of the "
                    "image, blended where they overlap (0: all at once).")] = 256,
) -> None:
    """Enlarge an image with an image filter or an upscaler model.

    Example: easel upscale picture.png --scale 4
    """
    from .api import upscale as enlarge

    try:
        bigger = enlarge(image, scale=scale, upscaler=upscaler, tile=tile)
        target = output or image.with_name(f"{image.stem}-x{scale:g}.png")
        bigger.save(target)
    except Exception as exc:  # noqa: BLE001 - _fail names what is not Easel's
        _fail(exc)
    typer.echo(str(target))


@app.command()
def history(
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many rows.")] = 20,
    search: Annotated[Optional[str], typer.Option("--search", "-s", help="Only prompts containing this.")] = None,
    as_json: RowsJson = False,
) -> None:
    """List recent generations, newest first.

    Example: easel history -n 5 --search circle
    """
    from .config import get_settings
    from .store import History

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
    from .config import get_settings
    from .engine.jobs import JobStore
    from .store import History

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

    from .metadata import read_a1111_text, read_parameters

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
    from .config import get_settings
    from .providers.base import ProviderRegistry

    registry = ProviderRegistry(get_settings())
    rows = [{"name": name, "about": registry.get(name).describe(),
             "class": f"{type(registry.get(name)).__module__}.{type(registry.get(name)).__name__}"}
            for name in registry.names()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['name']:<10} {row['about']}")


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
    from .mcp_server import serve as serve_mcp
    from .server.auth import check_bind

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

    from .server.auth import check_bind

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

    from .server.app import create_app

    try:
        app = create_app(settings)
    except Exception as exc:  # noqa: BLE001 - a start-up error (a clashing model folder) is a message, not a trace
        _fail(exc)
    if settings.ui:
        _err(f"Web UI: http://{host}:{port}/ui/" + (" (sign in with an API key)" if settings.server_keys else ""))
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def _serve_cluster(settings, host: str, port: int, address: str | None) -> None:
    try:
        from .serving.ray import run_cluster
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
