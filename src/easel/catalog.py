"""Model names and aliases -> family, source and defaults, read from `catalog.toml`."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "builtin"

# diffusers pipeline class -> Easel family, for models that are not in the catalog
_CLASS_FAMILIES = {
    "ShapesPipeline": "builtin",
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "FluxPipeline": "flux",
    "QwenImagePipeline": "qwen-image",
}


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option of a model family, accepted in `ImageRequest.extra`."""

    name: str
    type: str
    description: str = ""
    ge: float | None = None
    le: float | None = None


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """How to run one kind of pipeline, with the defaults its authors recommend."""

    name: str
    size: tuple[int, int]
    size_step: int
    max_side: int
    negative_prompt: bool
    max_prompt_chars: int
    schedulers: tuple[str, ...]
    supports: tuple[str, ...]
    aspects: dict[str, tuple[int, int]]
    provider: str = "diffusers"
    pipeline: str = ""
    steps: int | None = None  # None: the remote service decides
    guidance: float | None = None
    dtype: str = "float32"
    takes: tuple[str, ...] = ("steps", "guidance", "seed")  # request fields the model honours
    cfg_param: str = "guidance_scale"
    default_negative_prompt: str | None = None
    offload: str | None = None
    append_quality_words: bool = False
    quality_words: dict[str, str] = dataclasses.field(default_factory=dict)
    options: dict[str, OptionSpec] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model Easel can run: its name, family, where its weights come from, and its defaults."""

    name: str
    family: ModelFamily
    source: str
    provider: str = "diffusers"
    gated: bool = False
    description: str = ""
    aliases: tuple[str, ...] = ()
    steps: int | None = None
    guidance: float | None = None

    @property
    def default_steps(self) -> int | None:
        return self.steps if self.steps is not None else self.family.steps

    @property
    def default_guidance(self) -> float | None:
        return self.guidance if self.guidance is not None else self.family.guidance

    @property
    def local_path(self) -> Path | None:
        """The folder holding the weights when they come from a folder (not from the hub)."""
        if self.source.startswith("package:"):
            return PACKAGE_DIR / self.source.removeprefix("package:")
        path = Path(self.source).expanduser()
        return path if path.is_dir() else None

    def is_available_locally(self) -> bool:
        """True when the weights are in a folder or the hub cache, so the model loads with no network."""
        if self.local_path is not None:
            return (self.local_path / "model_index.json").is_file()
        if self.provider != "diffusers":
            return True
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(self.source, "model_index.json"), str)


# memory options every diffusers family accepts (the built-in model is too small to need them)
MEMORY_OPTIONS = {
    "offload": OptionSpec("offload", "str", "none, model or sequential CPU offload (accelerators only)."),
    "attention_slicing": OptionSpec("attention_slicing", "bool", "Compute attention in slices to save memory."),
    "vae_slicing": OptionSpec("vae_slicing", "bool", "Decode a batch one image at a time."),
    "vae_tiling": OptionSpec("vae_tiling", "bool", "Decode large images in tiles."),
}


def _family(name: str, raw: dict[str, Any]) -> ModelFamily:
    raw = dict(raw)
    options = {k: OptionSpec(name=k, **v) for k, v in raw.pop("options", {}).items()}
    if name != "builtin" and raw.get("provider", "diffusers") == "diffusers":
        options = {**MEMORY_OPTIONS, **options}
    return ModelFamily(
        name=name,
        size=tuple(raw.pop("size")),
        schedulers=tuple(raw.pop("schedulers")),
        supports=tuple(raw.pop("supports")),
        aspects={k: tuple(v) for k, v in raw.pop("aspects").items()},
        takes=tuple(raw.pop("takes", ("steps", "guidance", "seed"))),
        options=options,
        **raw,
    )


class ModelCatalog:
    """The known models and families; `resolve` also accepts any hub id or local pipeline folder."""

    def __init__(self, data: dict[str, Any]):
        self.families = {name: _family(name, raw) for name, raw in data["families"].items()}
        self.models: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        for name, raw in data["models"].items():
            raw = dict(raw)
            spec = ModelSpec(
                name=name,
                family=self.families[raw.pop("family")],
                aliases=tuple(raw.pop("aliases", ())),
                **raw,
            )
            self.models[name] = spec
            for alias in (name, *spec.aliases):
                self._aliases[alias.lower()] = name

    @classmethod
    def load(cls, path: Path | None = None) -> ModelCatalog:
        with open(path or PACKAGE_DIR / "catalog.toml", "rb") as f:
            return cls(tomllib.load(f))

    def resolve(self, name: str | None, allow_paths: bool = True) -> ModelSpec:
        """A catalog name or alias, `openai:MODEL` or `hf:ORG/NAME` (remote), a local pipeline folder, or a hub id
        `org/name` (run locally)."""
        if name is None or name == "":
            name = os.environ.get("EASEL_DEFAULT_MODEL") or DEFAULT_MODEL
        key = name.strip()
        if key.lower() in self._aliases:
            return self.models[self._aliases[key.lower()]]
        prefix, _, remote = key.partition(":")
        if prefix in ("openai", "hf") and remote:
            return self._remote(prefix, remote.strip())
        path = Path(key).expanduser()
        if allow_paths and path.is_dir():
            family = self.family_of_folder(path)
            return ModelSpec(name=str(path.resolve()), family=family, source=str(path.resolve()))
        if _looks_like_hub_id(key):
            return ModelSpec(name=key, family=self._family_of_hub_id(key), source=key)
        known = ", ".join(sorted(self.models))
        folder = ", or a local pipeline folder" if allow_paths else ""
        raise ModelNotFoundError(f"Unknown model {name!r}: use one of {known}, openai:MODEL, hf:ORG/NAME, a hub id "
                                 f"such as org/name{folder}.", param="model")

    def _remote(self, prefix: str, model: str) -> ModelSpec:
        if prefix == "hf":
            if not (_looks_like_hub_id(model) or _looks_like_hub_id(f"x/{model}")):
                raise ModelNotFoundError(f"`hf:` takes a model id such as org/name but got {model!r}.",
                                         param="model")
            family = self.families["hf-inference"]
        elif model in ("dall-e-2", "dall-e-3"):
            family = self.families[f"openai-{model}"]
        else:
            family = self.families["openai-gpt-image" if model.startswith("gpt-image") else "openai-compatible"]
        return ModelSpec(name=f"{prefix}:{model}", family=family, source=model, provider=family.provider)

    def family_of_folder(self, path: Path) -> ModelFamily:
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelNotFoundError(
                f"{str(path)!r} is not a diffusers pipeline folder (it has no model_index.json).", param="model"
            )
        class_name = json.loads(index.read_text()).get("_class_name", "")
        return self.families[_CLASS_FAMILIES.get(class_name, "generic")]

    def _family_of_hub_id(self, repo_id: str) -> ModelFamily:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "model_index.json")
        if isinstance(cached, str):
            return self.family_of_folder(Path(cached).parent)
        return self.families["generic"]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") and " " not in p for p in parts)


@lru_cache(maxsize=1)
def default_catalog() -> ModelCatalog:
    return ModelCatalog.load()
