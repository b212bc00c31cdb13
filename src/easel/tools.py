"""Tools for agents: one call that makes an image with whichever model is configured and answers one line.

    from easel.tools import generate_image
    generate_image("a large red circle on the left on a blue background")
    # 'Saved 1 image to /home/me/.local/share/easel/images/20261122-...png (model builtin, seed 4109, 256x256).'

The model is `EASEL_DEFAULT_MODEL` unless `model=` names one (`openai:gpt-image-1`, `hf:org/name`, `builtin`,
a local folder). Errors come back as a line starting with "Error:" rather than an exception, which is what agent
frameworks pass on to the model best.
"""

from __future__ import annotations

from typing import Any

from .errors import EaselError


def describe(result) -> str:
    """One line naming every saved image, its model, seed and size, and any warning."""
    first = result.images[0]
    paths = ", ".join(im.path or "(not saved)" for im in result.images)
    seeds = ", ".join(str(im.parameters.get("seed")) for im in result.images)
    noun = "image" if len(result.images) == 1 else "images"
    line = (f"Saved {len(result.images)} {noun} to {paths} (model {result.model}, seed {seeds}, "
            f"{first.width}x{first.height}).")
    if result.revised_prompt:
        line += f" Revised prompt: {result.revised_prompt}"
    if result.warnings:
        line += " Warning: " + " ".join(result.warnings)
    return line


def generate_image(prompt: str, **options: Any) -> str:
    """Generate an image from `prompt`, save it in the workspace and return one line with its path.

    `options` are those of `easel.generate`: model, n, size, aspect, steps, guidance, seed, negative_prompt, ...
    """
    from .api import generate

    try:
        return describe(generate(prompt, **options))
    except EaselError as exc:
        return f"Error: {exc.message}"


def edit_image(image: str, prompt: str, mask: str | None = None, **options: Any) -> str:
    """Repaint the white part of `mask` (a path; without one, the image's transparent area) in the image at
    path `image`, save the result and return one line with its path."""
    from .api import edit

    try:
        return describe(edit(image, prompt, mask=mask, **options))
    except EaselError as exc:
        return f"Error: {exc.message}"
    except OSError as exc:
        return f"Error: cannot read {exc.filename}: {exc.strerror}."
