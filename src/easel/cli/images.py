"""The commands that make images: generate, edit, vary and upscale, and how their options become a request."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import (AsJson, Base, Controls, Count, Format, Guidance, Local, Loras, Model, Negative, Options, Out, Seed, Size,
               Steps, _err, _fail, _parse_value, _print_result, _runner_for_jobs, _settings, _StepProgress, app)


def _controls(specs: list[str] | None) -> list:
    """`--control canny:edges.png:0.8` as ControlNet units (their images read here)."""
    from ..api import load_image
    from ..control import PREPROCESSORS, ControlUnit
    from ..errors import InvalidRequestError

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
    from ..api import load_image
    from ..control import IPAdapter
    from ..errors import InvalidRequestError

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
    from ..errors import InvalidRequestError

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

    from ..errors import InvalidRequestError

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


def _base(base: str | None) -> dict:
    """`--base`: the `base` option of a GGUF model."""
    return {"base": base} if base else {}


# the library's parameters that a command's own option sets under another name
OWN_FLAGS = {"inpaint_full_res": "--only-masked", "inpaint_full_res_padding": "--padding", "n": "-n",
             "negative_prompt": "--negative", "output_format": "--format", "out_dir": "--out"}


@app.command()
def generate(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    model: Model = None,
    base: Base = None,
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
                                options={**_options(option), **_base(base)}, loras=_loras(lora))
        base = _with_addons(base, enhance, control, ip_adapter,
                            (hires, hires_upscaler, hires_strength, hires_steps) if hires is not None else None)
        if from_file is not None:
            base = _left_out(base, from_file)
        requests = [base.replace(prompt=p, seed=None if base.seed is None else base.seed + b * n)
                    for p in _prompts(prompt, prompts_file, base if from_file is not None else None)
                    for b in range(batches)]
        with _StepProgress(enabled=not as_json and sys.stderr.isatty()) as bar:
            results = _runner_for_jobs(local).run_many(requests, out_dir=out, on_step=bar.on_step)
    except Exception as exc:  # noqa: BLE001 - _fail names what is not Easel's
        _fail(exc)
    for result in results:
        _print_result(result, as_json)


def _with_addons(base, enhance: bool | None, control: list[str] | None, ip_adapter: str | None, hires: tuple | None):
    """`base` with the prompt rewrite asked for, ControlNet units, an image prompt and the hires fix, where given."""
    if enhance is not None:
        base = base.replace(enhance_prompt=enhance)
    if control:
        base = base.replace(control=_controls(control))
    if ip_adapter:
        base = base.replace(ip_adapter=_ip_adapter(ip_adapter))
    if hires is not None:
        scale, upscaler, strength, steps = hires
        base = base.replace(hires_scale=scale, hires_upscaler=upscaler, hires_strength=strength, hires_steps=steps)
    return base


def _prompts(prompt: str | None, prompts_file: Path | None, reproduced) -> list[str]:
    """The prompts to run: a file's lines, the PROMPT, or the prompt of the image `--from` reproduces."""
    if prompts_file is not None:
        return [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if prompt is not None:
        return [prompt]
    if reproduced is not None:
        return [reproduced.prompt]
    _err("Error: give a PROMPT, --prompts-file or --from.")
    raise typer.Exit(2)


def to_image_request(base, *, model, size, aspect, steps, guidance, seed, negative, scheduler, n, output_format,
                     options: dict, loras: dict):
    """The command line's options as a request (its one mapping), over `base` (the request of `--from`) where
    given; the prompt is filled in per line of `--prompts-file`."""
    from ..types import ImageRequest

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

    from ..errors import InvalidRequestError
    from ..metadata import read_parameters
    from ..request_json import from_record

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
    prompt: Annotated[str, typer.Argument(help="What the masked area should show, or with no mask what to change "
                                          "(\"make it winter\").")],
    mask: Annotated[Optional[Path], typer.Option("--mask", help="White = repaint. Default: the transparent part; "
                                                 "with none, what the prompt says, by instruction on a model that "
                                                 "edits that way, else to the whole picture.")] = None,
    more: Annotated[Optional[list[Path]], typer.Option("--image", help="Another input image, for a model that edits "
                                                       "from several (qwen-image-edit-plus, flux2-klein); repeatable.")]
    = None,
    mask_blur: Annotated[Optional[int], typer.Option("--mask-blur", help="Pixels over which the edit blends in "
                                                     "(default 4).")] = None,
    only_masked: Annotated[bool, typer.Option("--only-masked", help="The model sees only the masked area (plus "
                                              "--padding), at full resolution: for small areas.")] = False,
    padding: Annotated[int, typer.Option("--padding", help="Pixels around the masked area with --only-masked.")]
    = 32,
    model: Model = None,
    base: Base = None,
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
    """Repaint part of an image (inpainting), or edit it by instruction.

    Examples: easel edit scene.png "a green triangle" --mask mask.png;
    easel edit photo.png "make it winter" --model flux-kontext
    """
    from .. import api

    _run(local, as_json, lambda on_step: api.edit(
        [image, *more] if more else image, prompt, mask=mask, model=model, n=n, steps=steps, guidance=guidance,
        seed=seed, negative_prompt=negative, mask_blur=mask_blur, inpaint_full_res=only_masked,
        inpaint_full_res_padding=padding, output_format=output_format, out_dir=out, on_step=on_step,
        loras=_loras(lora), **_options(option, api.edit), **_base(base)))


def _run(local: bool, as_json: bool, call) -> None:
    """`call(on_step)`, a library call, with a progress bar, handed to a running server where one answers; its
    result printed, or its error (`_fail`)."""
    try:
        _runner_for_jobs(local)
        with _StepProgress(enabled=not as_json and sys.stderr.isatty()) as bar:
            result = call(bar.on_step)
    except Exception as exc:  # noqa: BLE001 - _fail names what is not Easel's
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
    base: Base = None,
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
    from .. import api

    _run(local, as_json, lambda on_step: api.vary(
        image, prompt or "", strength=strength, model=model, n=n, size=size, steps=steps, guidance=guidance,
        seed=seed, negative_prompt=negative, output_format=output_format, out_dir=out, on_step=on_step,
        loras=_loras(lora), **_options(option, api.vary), **_base(base)))


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
    local: Local = False,
) -> None:
    """Enlarge an image with an image filter or an upscaler model.

    Example: easel upscale picture.png --scale 4
    """
    try:
        bigger = _upscaled(image, scale, upscaler, tile, local)
        target = output or image.with_name(f"{image.stem}-x{scale:g}.png")
        bigger.save(target)
    except Exception as exc:  # noqa: BLE001 - _fail names what is not Easel's
        _fail(exc)
    typer.echo(str(target))


def _upscaled(image: Path, scale: float, upscaler: str, tile: int, local: bool):
    """The upscale as a job of a running server where one answers (its engine and its copy of the model; the job's
    image stays in its workspace, as every job's does), else in this process; a model given by path runs here."""
    import io

    from PIL import Image

    from ..api import load_image, upscale
    from ..catalog import names_a_file
    from ..client import ServerClient
    from ..types import ImageRequest

    client = None if local or names_a_file(upscaler) else ServerClient.find(_settings())
    if client is None:
        return upscale(image, scale=scale, upscaler=upscaler, tile=tile)
    request = ImageRequest(prompt="", mode="upscale", image=load_image(image), scale=scale, upscaler=upscaler,
                           tile=tile)
    [job] = client.generate([request])
    return Image.open(io.BytesIO(client.download(job["urls"][0])))
