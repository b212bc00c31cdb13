"""Model names and aliases -> family, source and defaults, read from `catalog.toml`."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tomllib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from .checkpoints import CHECKPOINT_SUFFIXES, checkpoint_family, gguf_file, is_checkpoint_name, is_gguf
from .errors import EaselError, InvalidRequestError, ModelNotFoundError
from .family_options import (BASE_OPTION, CACHE_OPTION, CLIP_SKIP_OPTION, DECODER_OPTION, MEMORY_OPTIONS,
                             TOKENS_OPTION, UNET_PIPELINES, OptionSpec)

log = logging.getLogger("easel.catalog")
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "builtin"
COMMON_GGUF_QUANTS = ("Q2_K", "Q3_K_S", "Q4_0", "Q4_1", "Q4_K_S", "Q5_0", "Q5_1", "Q5_K_S", "Q6_K", "Q8_0", "BF16",
                      "F16")
GGUF_QUANT_NAME = r"(I?Q[1-8]_(?:[01K]|NL|XS|XXS|S|M)(?:_[SML])?|BF16|F16|F32)"  # Q4_0, Q4_K_S, IQ4_XS, BF16, ...


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
    # the pipeline argument that must be above 1 for a negative prompt to count (classifier-free guidance is off
    # at 1 or below); None where that is not known (a remote service)
    negative_prompt_needs: str | None = None
    default_negative_prompt: str | None = None
    keeps_native_size: bool = False  # the pipeline draws at its own size and takes no width/height
    latent_space: str | None = None  # what step previews decode: "pixels", "vae", "vae-packed", None (no previews)
    # a tiny VAE (AutoencoderTiny, hub id): previews use it when it is cached, `decoder=tiny` for the images
    preview_decoder: str | None = None
    loras: bool = False  # its pipeline loads LoRA adapters (diffusers' load_lora_weights, peft)
    embeddings: bool = False  # its pipeline loads textual-inversion embeddings (load_textual_inversion)
    clip_skip: bool = False  # its CLIP text encoder may end early (A1111's clip skip: the `clip_skip` option)
    weights: bool = False  # it weighs prompt words as A1111 writes them (`(word:1.3)`, `[word]`, `BREAK`)
    prompt_style: str | None = None  # how a prompt enhancer writes for it: "tags" or "prose"; None: never rewritten
    # its ControlNet pipelines (diffusers) by mode, where it has them, and the class of its control models
    controlnet: dict[str, str] = dataclasses.field(default_factory=dict)
    controlnet_model: str = "ControlNetModel"
    ip_adapter: bool = False  # it takes IP-Adapter image prompts (load_ip_adapter)
    append_quality_words: bool = False
    quality_words: dict[str, str] = dataclasses.field(default_factory=dict)
    options: dict[str, OptionSpec] = dataclasses.field(default_factory=dict)
    denoiser: str | None = None  # its denoiser's class (diffusers), where the family's GGUF files load into it
    # "instruction": an edit without a mask follows the prompt ("make it winter"), its images the pipeline's own
    # input (`input_images` of them at most); None: such an edit is an image-to-image of the whole picture
    edits: str | None = None
    input_images: int = 1
    pipelines: dict[str, str] = dataclasses.field(default_factory=dict)  # pipeline class by mode, beside `pipeline`
    area_param: str | None = None  # the pipeline argument that takes the output's area (it sizes by area and aspect)
    edit_needs_mask: bool = False  # an edit must name its area (a mask, or the image's transparency)
    warning: str | None = None  # said with every image it makes (a pipeline Easel runs without knowing it)
    requires: tuple[str, ...] = ()  # modules its pipeline cannot load without (beyond Easel's own dependencies)
    # few-step LoRA presets by name (`speed=fast` is the first): lora ("org/repo/file" on the hub), weight, and the
    # scheduler, steps and guidance it needs
    speed: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # components its releases leave out, by name: (class, hub repository), loaded from there where a folder lacks
    # them (HiDream's fourth text encoder, Llama 3.1 8B Instruct)
    components: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def unet(self) -> bool:
        """Whether its denoiser is a UNet."""
        return self.pipeline in UNET_PIPELINES

    @property
    def does(self) -> str:
        """What it does, as a user reads it: "generate, edit by instruction (up to 3 images), inpaint"."""
        out = ["generate"] if "generate" in self.supports else []
        if "edit" in self.supports and self.edits == "instruction":
            out.append("edit by instruction" + (f" (up to {self.input_images} images)" if self.input_images > 1
                                                else ""))
            if self.provider != "diffusers" or "edit" in self.pipelines:
                out.append("inpaint")
        elif "edit" in self.supports:
            out.append("inpaint")
        if "vary" in self.supports:
            out.append("image-to-image")
        return ", ".join(out)


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
    # a GGUF denoiser: `file` in the hub repository `source` (or `source` a .gguf file), run with the rest of the
    # pipeline `base` (a hub id or folder); `gguf_files`: (repo, file pattern) of a catalog model's GGUF files
    file: str | None = None
    base: str | None = None
    gguf_files: tuple[str, str] | None = None

    @property
    def default_steps(self) -> int | None:
        return self.steps if self.steps is not None else self.family.steps

    @property
    def default_guidance(self) -> float | None:
        return self.guidance if self.guidance is not None else self.family.guidance

    @property
    def local_path(self) -> Path | None:
        """The folder (or single-file checkpoint) holding the weights when they are on this machine (Easel's
        package, or an absolute path that `resolve` or the operator gave); None for a hub id, which is never looked
        up on the server's disk."""
        if self.source.startswith("package:"):
            return PACKAGE_DIR / self.source.removeprefix("package:")
        path = Path(self.source)
        return path if path.is_absolute() else None

    @property
    def checkpoint(self) -> bool:
        """The weights are one file in the original layout (A1111's and ComfyUI's checkpoints)."""
        return self.local_path is not None and is_checkpoint_name(self.local_path.name) and not self.gguf

    @property
    def gguf(self) -> bool:
        """The denoiser is a GGUF file (on this machine, or `file` in a hub repository) and `base` the rest."""
        return (self.file or self.source).lower().endswith(".gguf")

    def is_available_locally(self) -> bool:
        """True when the weights are in a folder, a checkpoint file or the hub cache, so the model loads with no
        network (a checkpoint's configuration aside: see `DiffusersProvider.checkpoint_config`)."""
        if self.gguf:
            from huggingface_hub import try_to_load_from_cache

            here = self.local_path.is_file() if self.local_path else \
                isinstance(try_to_load_from_cache(self.source, self.file), str)
            return here and ModelSpec("base", self.family, self.base or "").is_available_locally()
        if self.checkpoint:
            return self.local_path.is_file()
        if self.local_path is not None:
            return (self.local_path / "model_index.json").is_file()
        if self.provider != "diffusers":
            return True
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(self.source, "model_index.json"), str)


def _family(name: str, raw: dict[str, Any]) -> ModelFamily:
    raw = dict(raw)
    options = {k: OptionSpec(name=k, **v) for k, v in raw.pop("options", {}).items()}
    local = raw.get("provider", "diffusers") == "diffusers"
    if name != "builtin" and local:
        options = {**MEMORY_OPTIONS, "decoder": DECODER_OPTION, "cache": CACHE_OPTION, **options}
    if raw.get("denoiser"):
        options["base"] = BASE_OPTION
    if raw.get("clip_skip"):
        options["clip_skip"] = CLIP_SKIP_OPTION
    if local and raw.get("pipeline") in UNET_PIPELINES:
        options["tokens"] = TOKENS_OPTION
    if raw.get("speed"):
        names = ", ".join(raw["speed"])
        options["speed"] = OptionSpec("speed", "str", f"fast, or a few-step LoRA preset by name ({names}): its LoRA "
                                      "from the hub, with the scheduler, steps and guidance it needs.")
    if local and raw.get("negative_prompt"):
        raw.setdefault("negative_prompt_needs", raw.get("cfg_param", "guidance_scale"))
    return ModelFamily(
        name=name,
        size=tuple(raw.pop("size")),
        schedulers=tuple(raw.pop("schedulers")),
        supports=tuple(raw.pop("supports")),
        aspects={k: tuple(v) for k, v in raw.pop("aspects").items()},
        takes=tuple(raw.pop("takes", ("steps", "guidance", "seed"))),
        requires=tuple(raw.pop("requires", ())),
        components={name: tuple(where) for name, where in raw.pop("components", {}).items()},
        options=options,
        **raw,
    )


class ModelCatalog:
    """The known models and families; `resolve` also accepts any hub id or local pipeline folder."""

    def __init__(self, data: dict[str, Any]):
        self.families = {name: _family(name, raw) for name, raw in data["families"].items()}
        # a pipeline folder's class -> its family (the first family of a class: sd15 before sd-turbo)
        self._class_families = {"ShapesPipeline": "builtin"}
        for name, family in self.families.items():
            if family.provider == "diffusers" and family.pipeline.isidentifier() and \
                    family.pipeline != "DiffusionPipeline":
                self._class_families.setdefault(family.pipeline, name)
        self.models: dict[str, ModelSpec] = {}
        self._aliases: dict[str, str] = {}
        self._broken: dict[str, EaselError] = {}  # operator's checkpoints that cannot run, by name: why
        self.unusable: dict[str, str] = {}  # files and folders of the models folder left out, by file name: why
        for name, raw in data["models"].items():
            raw = dict(raw)
            gguf = raw.pop("gguf", None)
            spec = ModelSpec(
                name=name,
                family=self.families[raw.pop("family")],
                aliases=tuple(raw.pop("aliases", ())),
                gguf_files=(gguf["repo"], gguf["file"]) if gguf else None,
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
        """A catalog name or alias (operator folders included), `openai:MODEL` or `hf:ORG/NAME` (remote), a hub id
        `org/name` (run locally), or, with `allow_paths` only, a local pipeline folder.

        Without `allow_paths` (a server's clients) a name never touches the server's disk: a hub id is loaded from
        the hub cache or the hub, never from a folder of the same name."""
        if name is None or name == "":
            name = DEFAULT_MODEL  # callers with settings pass `settings.default_model` (EASEL_DEFAULT_MODEL)
        if not isinstance(name, str):
            raise InvalidRequestError(f"`model` must be a string but is {name!r}.", param="model")
        key = name.strip()
        if key.lower() in self._aliases:
            return self.models[self._aliases[key.lower()]]
        if key.lower() in self._broken:
            raise self._broken[key.lower()]
        prefix, _, remote = key.partition(":")
        if prefix in ("openai", "hf") and remote:
            return self._remote(prefix, remote.strip())
        model, _, quant = key.rpartition(":")
        if model.lower() in self._aliases and self.models[self._aliases[model.lower()]].gguf_files:
            return self.gguf_spec(self.models[self._aliases[model.lower()]], quant)
        if allow_paths and "\x00" not in key and Path(key).expanduser().is_dir():
            path = Path(key).expanduser().resolve()
            return ModelSpec(name=str(path), family=self.family_of_folder(path), source=str(path))
        if allow_paths and "\x00" not in key and is_checkpoint_name(key) and Path(key).expanduser().is_file():
            return self.checkpoint_spec(str(Path(key).expanduser().resolve()), Path(key).expanduser())
        if is_hub_id(key):
            return ModelSpec(name=key, family=self._family_of_hub_id(key), source=key)
        known = ", ".join(sorted(self.models))
        folder = ", a local pipeline folder or a checkpoint file" if allow_paths else ""
        raise ModelNotFoundError(f"Unknown model {name!r}: use one of {known}, openai:MODEL, hf:ORG/NAME, a hub id "
                                 f"such as org/name{folder}.", param="model")

    def _copy(self) -> ModelCatalog:
        copy = ModelCatalog.__new__(ModelCatalog)
        copy.families, copy.models, copy._aliases = dict(self.families), dict(self.models), dict(self._aliases)
        copy._class_families = self._class_families
        copy._broken, copy.unusable = dict(self._broken), dict(self.unusable)
        return copy

    def with_models(self, families: list[ModelFamily], models: list[ModelSpec],
                    options: list[tuple[OptionSpec, Callable[[ModelFamily], bool]]] = ()) -> ModelCatalog:
        """A copy with more families and models (what plugins add), and more request options for the families
        each one fits (a plugin's adapter kinds); a plugin's model named like a known one is refused, so that
        installing a package never changes what an existing name runs."""
        copy = self._copy()
        copy.families.update({family.name: family for family in families})
        for spec in models:
            taken = [n for n in (spec.name, *spec.aliases) if n.lower() in copy._aliases]
            if taken:
                raise ValueError(f"A plugin's model {spec.name!r} takes the name {taken[0]!r} of a known model.")
            copy.models[spec.name] = spec
            for alias in (spec.name, *spec.aliases):
                copy._aliases[alias.lower()] = spec.name
        for option, fits in options:
            for name, family in list(copy.families.items()):
                if fits(family):
                    copy.families[name] = dataclasses.replace(family, options={**family.options, option.name: option})
        if options:
            copy.models = {name: dataclasses.replace(spec, family=copy.families.get(spec.family.name, spec.family))
                           for name, spec in copy.models.items()}
        return copy

    def with_folders(self, folders: dict[str, Path], aliases: dict[str, str] | None = None) -> ModelCatalog:
        """A copy that also serves these pipeline folders and checkpoint files by name (the operator's models);
        `aliases` maps more names (the operator's own spelling of a path) to them."""
        copy = self._copy()
        for name, path in folders.items():
            if name.lower() in copy._aliases:
                raise ModelNotFoundError(f"The model {str(path)!r} is named {name!r}, like a model Easel already "
                                         "knows: rename it.", param="model")
            if path.is_file():  # a checkpoint: by its stem, and by its file name as A1111 lists it
                try:
                    copy.models[name] = self.checkpoint_spec(name, path)
                except EaselError as exc:  # one broken file must not take every model down; naming it says why
                    log.debug("models folder: %s cannot run: %s", path.name, exc.message)  # `easel models` says it
                    copy._broken[name.lower()] = copy._broken[path.name.lower()] = exc
                    copy.unusable[path.name] = exc.message
                    continue
                copy._aliases[path.name.lower()] = name
            else:
                path = path.resolve()
                copy.models[name] = ModelSpec(name=name, family=self.family_of_folder(path), source=str(path),
                                              description=f"pipeline folder {path.name}")
            copy._aliases[name.lower()] = name
        for alias, name in (aliases or {}).items():
            copy._aliases.setdefault(alias.strip().lower(), name)
        return copy

    def _remote(self, prefix: str, model: str) -> ModelSpec:
        if prefix == "hf":
            if not (is_hub_id(model) or is_hub_id(f"x/{model}")):
                raise ModelNotFoundError(f"`hf:` takes a model id such as org/name but got {model!r}.",
                                         param="model")
            family = self.families["hf-inference"]
        elif model in ("dall-e-2", "dall-e-3"):
            family = self.families[f"openai-{model}"]
        else:
            family = self.families["openai-gpt-image" if model.startswith("gpt-image") else "openai-compatible"]
        return ModelSpec(name=f"{prefix}:{model}", family=family, source=model, provider=family.provider)

    def listed(self) -> list[ModelSpec]:
        """Every model by name (the catalog, plugins', the operator's folders and files), and each catalog model's
        GGUF files that are in the hub cache (`flux-dev:Q4_0` after `easel models pull flux-dev:Q4_0`)."""
        from huggingface_hub import try_to_load_from_cache

        cached = [self.gguf_spec(spec, quant) for spec in self.models.values() if spec.gguf_files
                  for quant in COMMON_GGUF_QUANTS if isinstance(try_to_load_from_cache(
                      spec.gguf_files[0], spec.gguf_files[1].format(quant=quant)), str)]
        return [*self.models.values(), *cached]

    def gguf_spec(self, model: ModelSpec, quant: str) -> ModelSpec:
        """`model`'s denoiser as one of its GGUF files (`flux-dev:Q4_0`), with the rest of `model`'s pipeline."""
        if not re.fullmatch(GGUF_QUANT_NAME, quant):
            raise ModelNotFoundError(f"{model.name}:{quant} names no GGUF file: after the colon comes a quantization "
                                     f"type such as Q4_0, Q4_K_S, Q5_K_M, Q8_0 or BF16, not {quant!r}.", param="model")
        repo, pattern = model.gguf_files
        return ModelSpec(name=f"{model.name}:{quant}", family=model.family, source=repo,
                         file=pattern.format(quant=quant), base=model.source, gated=model.gated,
                         steps=model.steps, guidance=model.guidance,
                         description=f"{model.name}'s denoiser as GGUF {quant} ({repo}), the rest from {model.source}")

    def checkpoint_spec(self, name: str, path: Path, base: ModelSpec | None = None) -> ModelSpec:
        """A single-file checkpoint, its family read from its tensors' names; a GGUF denoiser with the pipeline
        `base`, else that of the release it was made from."""
        if is_gguf(path):
            info = gguf_file(path)
            release = self.models[info.base_model]
            spec = ModelSpec(name=name, family=self.families[info.family], source=str(path.resolve()),
                             base=release.source, steps=release.steps, guidance=release.guidance,
                             description=f"{info.family} GGUF {info.quant} {path.name} ({release.name}'s denoiser)")
            return with_base(spec, base) if base is not None else spec
        family = self.families[checkpoint_family(path)]
        return ModelSpec(name=name, family=family, source=str(path.resolve()),
                         description=f"{family.name} checkpoint {path.name}")

    def family_of_folder(self, path: Path) -> ModelFamily:
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelNotFoundError(
                f"{str(path)!r} is not a diffusers pipeline folder (it has no model_index.json).", param="model"
            )
        try:
            info = json.loads(index.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            raise ModelNotFoundError(f"{str(path)!r} has a model_index.json that cannot be read.",
                                     param="model") from None
        class_name = info.get("_class_name", "") if isinstance(info, dict) else ""
        if class_name in self._class_families:
            return self.families[self._class_families[class_name]]
        return generic_family(self.families["generic"], class_name)

    def _family_of_hub_id(self, repo_id: str) -> ModelFamily:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "model_index.json")
        if isinstance(cached, str):
            return self.family_of_folder(Path(cached).parent)
        return self.families["generic"]


def generic_family(generic: ModelFamily, class_name: str) -> ModelFamily:
    """A pipeline class Easel has no family for, run with the defaults its `__call__` declares (steps, guidance,
    size, whether it reads a negative prompt) where it declares them, and a warning that says so."""
    return dataclasses.replace(generic, **_declared_defaults(class_name))


@lru_cache(maxsize=64)
def _declared_defaults(class_name: str) -> dict[str, Any]:
    import inspect

    import diffusers

    cls = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    if not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        return {"warning": f"{class_name or 'this pipeline'} is not a diffusers pipeline class Easel knows: it runs "
                           "with generic defaults"}
    params = inspect.signature(cls.__call__).parameters
    declared = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    changes: dict[str, Any] = {"pipeline": class_name}
    if isinstance(declared.get("num_inference_steps"), int):
        changes["steps"] = declared["num_inference_steps"]
    if "guidance_scale" not in params and "true_cfg_scale" in params:
        changes["cfg_param"] = "true_cfg_scale"
    cfg = changes.get("cfg_param", "guidance_scale")
    if isinstance(declared.get(cfg), (int, float)) and not isinstance(declared.get(cfg), bool):
        changes["guidance"] = float(declared[cfg])
    if isinstance(declared.get("width"), int) and isinstance(declared.get("height"), int):
        changes["size"] = (declared["width"], declared["height"])
        changes["aspects"] = {"1:1": changes["size"]}
    changes["negative_prompt"] = "negative_prompt" in params
    changes["negative_prompt_needs"] = cfg if "negative_prompt" in params else None
    used = ", ".join(f"{k} {changes[k]}" for k in ("steps", "guidance") if k in changes)
    changes["warning"] = (f"{class_name} runs as a generic diffusers pipeline: Easel has no family for it, so its "
                          f"defaults are those its signature declares ({used or 'none'}) and Easel's own otherwise")
    return changes


def with_base(spec: ModelSpec, base: ModelSpec) -> ModelSpec:
    """A GGUF denoiser run with the text encoders, VAE and configuration of `base`, a pipeline of its family."""
    if not spec.gguf:
        raise InvalidRequestError(f"`base` is for GGUF denoisers, and {spec.name} is a whole pipeline.", param="base")
    if base.gguf or base.checkpoint or base.provider != "diffusers" or \
            base.family.name not in (spec.family.name, "generic"):
        what = "a GGUF file" if base.gguf else "a single-file checkpoint" if base.checkpoint else \
            f"a {base.family.name} model"
        raise InvalidRequestError(f"`base` must be a {spec.family.name} pipeline (a catalog model, hub id or pipeline "
                                  f"folder) but {base.name!r} is {what}.", param="base")
    return dataclasses.replace(spec, base=base.source, gated=spec.gated or base.gated)


def is_hub_id(name: str) -> bool:
    """`org/name` as the hub spells repository ids (letters, digits, `-_.`, no `--` or `..`, at most 96
    characters); anything else (a path, `~/x`, `org/na$me`) is not one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1 or any(part.startswith(".") for part in name.split("/")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def operator_catalog(base: ModelCatalog, settings) -> ModelCatalog:
    """`base` plus the models the operator named: each pipeline folder and single-file checkpoint in the models
    folder (by its folder name or the file's stem), and the default model or the one behind OpenAI's names where
    those are folders or checkpoints (by name, and by the operator's own spelling). Clients reach these by name; a
    path a client names is never opened."""
    folders: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    root = settings.models_folder
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.suffix.lower() in CHECKPOINT_SUFFIXES and path.is_file():
                folders[path.stem] = path
                continue
            try:
                base.family_of_folder(path)
            except ModelNotFoundError as exc:  # one broken folder must not take every model down
                if (path / "model_index.json").exists():
                    skipped[path.name] = exc.message  # said by `easel models`, not by every command
                continue
            folders[path.name] = path
    aliases: dict[str, str] = {}
    for configured in (settings.default_model, settings.openai_model, settings.openai_edit_model):
        if not configured or configured.strip().lower() in base._aliases:
            continue
        path = Path(configured.strip()).expanduser()
        if not (path.is_dir() or (path.is_file() and is_checkpoint_name(path.name))):
            continue
        known = next((n for n, p in folders.items() if p.resolve() == path.resolve()), None)
        name = known or (path.resolve().stem if path.is_file() else path.resolve().name)
        folders[name] = path
        aliases[configured] = name
    catalog = base.with_folders(folders, aliases) if folders else base._copy()
    catalog.unusable.update(skipped)
    return _with_gguf_bases(catalog, settings.gguf_bases) if settings.gguf_bases.strip() else catalog


def _with_gguf_bases(catalog: ModelCatalog, bases: str) -> ModelCatalog:
    """The operator's GGUF files run with the pipeline named for their family (`EASEL_GGUF_BASES`)."""
    named: dict[str, ModelSpec] = {}
    for pair in filter(None, (p.strip() for p in bases.split(","))):
        family, _, model = pair.partition("=")
        if family.strip() not in catalog.families or not model.strip():
            raise ValueError(f"EASEL_GGUF_BASES takes family=model pairs (families: flux, sd3, qwen-image) but has "
                             f"{pair!r}.")
        named[family.strip()] = catalog.resolve(model.strip())
    copy = catalog._copy()
    for name, spec in catalog.models.items():
        base = named.get(spec.family.name)
        if spec.gguf and spec.local_path is not None and base is not None:
            copy.models[name] = catalog.checkpoint_spec(name, spec.local_path, base)
    return copy


# what an upscale job (mode "upscale") runs on: the diffusers provider's upscaler models and image filters
UPSCALE = ModelFamily(name="upscale", size=(512, 512), size_step=1, max_side=16384, negative_prompt=False,
                      max_prompt_chars=1000, schedulers=(), supports=("upscale",), aspects={}, takes=())


def upscale_spec(upscaler: str) -> ModelSpec:
    """The model an upscale job names: its upscaler (never a path of the catalog's)."""
    return ModelSpec(name=upscaler, family=UPSCALE, source=f"upscale:{upscaler}", provider="diffusers")


@lru_cache(maxsize=1)
def default_catalog() -> ModelCatalog:
    return ModelCatalog.load()


def names_a_file(name: str) -> bool:
    """A LoRA named by a path (`~/x.safetensors`, `./x`, `C:\\x`) rather than by its name in the loras folder."""
    return any(c in name for c in "/\\:\0") or name.startswith((".", "~"))


def lora_files(folder: Path | None) -> dict[str, Path]:
    """The LoRAs of a loras folder by name (the file's stem): `<lora:name:weight>` and `loras={name: weight}`; the
    same for a folder of textual-inversion embeddings, whose names are words of a prompt."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.safetensors")) if p.is_file()}


# what marks a folder of each kind of add-on model (ControlNets, upscaler pipelines, IP-Adapters)
CONTROLNET_MARKER, UPSCALER_MARKER, IP_ADAPTER_MARKER = "config.json", "model_index.json", "image_encoder/config.json"


def model_folders(folder: Path | None, marker: str) -> list[str]:
    """The names of the model folders in `folder` (each holding `marker`), sorted; none where it does not exist."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / marker).is_file())


UPSCALER_FILES = (".pth", ".pt", ".safetensors")  # single-file upscalers (ESRGAN family, loaded by spandrel)


def upscaler_files(folder: Path | None) -> dict[str, Path]:
    """The single-file upscaler models of an upscalers folder (Real-ESRGAN, 4x-UltraSharp, ...) by their stem."""
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in UPSCALER_FILES and p.is_file()}


def upscaler_names(folder: Path | None) -> list[str]:
    """Every upscaler model of an upscalers folder: pipeline folders (SD x4) and single files (ESRGAN family)."""
    return sorted({*model_folders(folder, UPSCALER_MARKER), *upscaler_files(folder)})
