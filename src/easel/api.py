"""The library front: `generate`, `edit` and `vary`, each one call that returns saved images."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metadata import prompt_of
from . import masks
from .types import ImageRequest, ImageResult, image_from_bytes

if TYPE_CHECKING:
    import PIL.Image

    from .engine.runner import Runner
    from .providers.base import StepCallback

_runner: Runner | None = None
_runner_lock = threading.Lock()


def default_runner() -> Runner:
    """The process-wide runner (settings from the environment); built on first use."""
    global _runner
    with _runner_lock:
        if _runner is None:
            from .engine.runner import Runner

            _runner = Runner()
        return _runner


def use_runner(runner) -> None:
    """Make `runner` the process-wide one (the CLI's, when it hands its jobs to a running server)."""
    global _runner
    with _runner_lock:
        _runner = runner


def reset_default_runner() -> None:
    """Forget the process-wide runner, so that changed settings (EASEL_HOME, ...) take effect."""
    global _runner
    from .catalog import default_catalog
    from .config import get_settings

    with _runner_lock:
        _runner = None
    get_settings.cache_clear()
    default_catalog.cache_clear()


def load_image(value: Any, param: str = "image") -> PIL.Image.Image:
    """A PIL image from a path, bytes, a file object or a PIL image."""
    import PIL.Image

    if isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, (str, Path)):
        try:
            data = Path(value).expanduser().read_bytes()
        except OSError as exc:
            from .errors import InvalidRequestError

            raise InvalidRequestError(f"`{param}`: cannot read {str(value)!r} ({exc.strerror or exc}).",
                                      param=param) from None
        return image_from_bytes(data, param)
    if isinstance(value, (bytes, bytearray)):
        return image_from_bytes(bytes(value), param)
    if isinstance(value, io.IOBase) or hasattr(value, "read"):
        return image_from_bytes(value.read(), param)
    from .errors import InvalidRequestError

    raise InvalidRequestError(f"`{param}` must be a path, bytes or a PIL image but is {type(value).__name__}.",
                              param=param)


REQUEST_FIELDS = ("enhance_prompt", "hires_scale", "hires_size", "hires_upscaler", "hires_strength",
                  "hires_steps")


def to_image_request(prompt: str, *, model, n, size, aspect, width, height, steps, guidance, seed,
                     negative_prompt, scheduler, output_format, options, **fields) -> ImageRequest:
    """The library's arguments as a request (its one mapping; the check comes after, in the runner). `loras`
    arrives among the keyword options and leaves them as the request's own field."""
    options = dict(options)
    loras = options.pop("loras", None)
    for name in REQUEST_FIELDS:  # the request's own fields among the keyword options
        if name in options:
            fields[name] = options.pop(name)
    if "control" in options:
        from .control import as_unit

        units = options.pop("control")
        fields["control"] = [as_unit(u, load_image) for u in units] if isinstance(units, (list, tuple)) else units
    if "ip_adapter" in options:
        from .control import as_ip_adapter

        fields["ip_adapter"] = as_ip_adapter(options.pop("ip_adapter"), load_image)
    return ImageRequest(
        prompt=prompt, model=model, num_images=n, size=size, aspect=aspect, width=width, height=height,
        num_inference_steps=steps, guidance_scale=guidance, seed=seed, negative_prompt=negative_prompt,
        scheduler=scheduler, output_format=output_format, extra=options, loras=loras if loras is not None else {},
        **fields,
    )


def generate(prompt: str, *, model: str | None = None, n: int = 1, size: str | None = None,
             aspect: str | None = None, width: int | None = None, height: int | None = None,
             steps: int | None = None, guidance: float | None = None, seed: int | None = None,
             negative_prompt: str | None = None, scheduler: str | None = None, output_format: str = "png",
             save: bool = True, out_dir: str | Path | None = None, on_step: StepCallback | None = None,
             **options: Any) -> ImageResult:
    """Generate `n` images from a text prompt and save them to the workspace.

    >>> result = easel.generate("a large red circle on the left on a blue background", seed=1)
    >>> result[0].path, result[0].seed

    `size` ("1024x768") or `aspect` ("16:9") set the shape; `loras={"watercolor": 0.8}` applies LoRAs (by name from
    EASEL_HOME/loras, or a .safetensors path; A1111's `<lora:name:0.8>` in the prompt too); `enhance_prompt=True`
    has the configured chat model rewrite the prompt (EASEL_PROMPT_ENHANCER_MODEL); `control=[{"model": "canny",
    "image": "edges.png", "preprocessor": "canny", "weight": 0.8}]` guides the composition with ControlNet (see
    `easel.control.ControlUnit`); `ip_adapter={"model": "ip-sd15", "image": "style.png", "scale": 0.6}` prompts
    with an image; `hires_scale=2` is A1111's hires fix (with `hires_upscaler`, `hires_strength`,
    `hires_steps`); other keyword arguments are
    options of the model's family (e.g. `true_cfg_scale=4.0` for Qwen-Image, `offload="model"`).
    """
    request = to_image_request(prompt, model=model, n=n, size=size, aspect=aspect, width=width, height=height,
                               steps=steps, guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                               scheduler=scheduler, output_format=output_format, options=options)
    return default_runner().run(request, save=save, out_dir=Path(out_dir) if out_dir else None, on_step=on_step)


def edit(image: Any, prompt: str, *, mask: Any = None, model: str | None = None, n: int = 1,
         size: str | None = None, steps: int | None = None, guidance: float | None = None, seed: int | None = None,
         negative_prompt: str | None = None, strength: float | None = None, mask_blur: int | None = None,
         scheduler: str | None = None, inpaint_full_res: bool = False, inpaint_full_res_padding: int = 32,
         output_format: str = "png", save: bool = True, out_dir: str | Path | None = None,
         on_step: StepCallback | None = None, **options: Any) -> ImageResult:
    """Repaint the white part of `mask` in `image` to match `prompt`, keeping the rest (inpainting).

    Without a mask, the image's fully transparent pixels are the area to repaint. With neither, a model that edits
    by instruction (FLUX.1 Kontext, Qwen-Image-Edit, FLUX.2) does what the prompt says ("make it winter"), and
    `image` may be a list of images where it takes several ("the cat of the first on the sofa of the second");
    any other model changes the whole picture as the prompt says (image-to-image). The edit blends in over
    `mask_blur` pixels (4); with `inpaint_full_res` the model sees only the painted area (plus
    `inpaint_full_res_padding`), at full resolution.
    """
    pictures = [load_image(one, "image") for one in (image if isinstance(image, (list, tuple)) else [image])]
    if not pictures:
        from .errors import InvalidRequestError

        raise InvalidRequestError("`image` must name at least one image.", param="image")
    picture = pictures[0]
    mask_image = load_image(mask, "mask") if mask is not None else masks.edit_area(picture)
    request = to_image_request(prompt, model=model, n=n, size=size, aspect=None, width=None, height=None,
                               steps=steps, guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                               scheduler=scheduler, output_format=output_format, options=options, mode="edit",
                               image=picture, mask=mask_image, strength=strength)
    request = request.replace(references=pictures[1:], mask_blur=mask_blur, inpaint_full_res=inpaint_full_res,
                              inpaint_full_res_padding=inpaint_full_res_padding)
    return default_runner().run(request, save=save, out_dir=Path(out_dir) if out_dir else None, on_step=on_step)


def vary(image: Any, prompt: str = "", *, model: str | None = None, n: int = 1, size: str | None = None,
         strength: float | None = None, steps: int | None = None, guidance: float | None = None,
         seed: int | None = None, negative_prompt: str | None = None, scheduler: str | None = None,
         output_format: str = "png", save: bool = True, out_dir: str | Path | None = None,
         on_step: StepCallback | None = None, **options: Any) -> ImageResult:
    """Variations of `image` (image-to-image): `strength` near 0 keeps it, 1 redraws it; `prompt` steers them."""
    picture = load_image(image, "image")
    request = to_image_request(prompt or prompt_of(picture), model=model, n=n, size=size, aspect=None,
                               width=None, height=None, steps=steps, guidance=guidance, seed=seed,
                               negative_prompt=negative_prompt, scheduler=scheduler, output_format=output_format,
                               options=options, mode="vary", image=picture, strength=strength)
    return default_runner().run(request, save=save, out_dir=Path(out_dir) if out_dir else None, on_step=on_step)


def pull_model(name: str) -> str:
    """Download a model's weights into the hub cache, or a checkpoint file's configuration into the configs folder;
    returns the folder."""
    from .config import get_settings
    from .keys import get_key
    from .providers.diffusers import pull_model as pull

    settings = get_settings()
    spec = default_runner().catalog.resolve(name)
    return pull(spec, token=get_key(settings.keys_path, "hf"), configs_dir=settings.configs_folder)


def upscale(image, *, scale: float = 2.0, upscaler: str = "lanczos", tile: int = 256) -> PIL.Image.Image:
    """`image` (a path, bytes or PIL image) `scale` times as large: by an image filter (lanczos, bicubic, nearest)
    or an upscaler model (a folder of EASEL_HOME/upscalers, or a hub id: SD's x4 upscaler), which works on tiles of
    `tile` pixels of the image (0: all at once), blended where they overlap."""
    request = ImageRequest(prompt="", mode="upscale", image=load_image(image), scale=scale, upscaler=upscaler,
                           tile=tile)
    return default_runner().run(request, save=False)[0].image
