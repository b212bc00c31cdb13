"""The provider interface, and the registry that loads plugins through the `easel.providers` entry points.

A provider is one class with one method to implement, `run_batch(batch, progress)`. A package makes itself known
with an entry point in the group `easel.providers` that names a function `register(add, settings)`, which calls
`add` with what it brings: provider instances (configured from Easel's `Settings`), and the model families
(`ModelFamily`) and models (`ModelSpec`, whose `provider` names the provider that runs it) that clients may then
name. Easel's own providers register the same way.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from ..errors import ModelNotFoundError

if TYPE_CHECKING:
    import PIL.Image

    from ..catalog import ModelFamily, ModelSpec, OptionSpec
    from ..config import Settings
    from .diffusers.adapters import Adapter
    from ..types import ImageRequest

# on_step(step, total_steps, preview) with step counted from 1; `preview`, when not None, is a function that
# renders the current step's images at the given batch indices (a list of PIL images, or None) and costs time only
# when called
StepCallback = Callable[[int, int, Any], None]


@dataclasses.dataclass(frozen=True)
class Batch:
    """Checked requests that one provider call runs: one model, and for local models the same mode, size, steps,
    guidance, scheduler and options. Iterating gives (request, seeds) pairs, one seed per image to make."""

    spec: ModelSpec
    requests: list[ImageRequest]
    seeds: list[list[int]]
    # the hires fix's upscaled latents (one image's: channels, height, width) that a second pass starts from in
    # place of the request's image, where the model denoises them as they are
    latents: Any = None

    def __iter__(self) -> Iterator[tuple[ImageRequest, list[int]]]:
        return iter(zip(self.requests, self.seeds))

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def first(self) -> ImageRequest:
        """The batch's first request: what the requests share (mode, size, steps, ...) is read from it."""
        return self.requests[0]

    @property
    def all_seeds(self) -> list[int]:
        """Every image's seed, in the order of the requests."""
        return [s for group in self.seeds for s in group]

    def split(self, items: list) -> list[list]:
        """One list per request from one list per image (a pipeline's images, back in their requests)."""
        out, at = [], 0
        for group in self.seeds:
            out.append(items[at:at + len(group)])
            at += len(group)
        return out


def bucket(images: int) -> int:
    """The batch size a compiled model runs `images` images at: the next power of two (see `inputs.to_bucket`)."""
    return 1 << (images - 1).bit_length()


def bucket_sizes(up_to: int) -> list[int]:
    """Every batch size a compiled model runs for batches of 1 to `up_to` images."""
    return [1 << k for k in range(bucket(up_to).bit_length())]


class Progress:
    """What a running provider reports to (`step`) and asks whether its callers still want the images (`stopped`)."""

    def __init__(self, on_step: StepCallback | None = None, should_stop: Callable[[], bool] | None = None):
        self._on_step, self._should_stop = on_step, should_stop

    def step(self, step: int, total: int, preview: Callable[[list[int]], list | None] | None = None) -> None:
        """Step `step` of `total` is done (counted from 1); `preview(indices)` renders the images at those indices of
        the batch (counted over every request's images), if anyone asks."""
        if self._on_step is not None:
            self._on_step(step, total, preview)

    @property
    def stopped(self) -> bool:
        """True when every caller of the batch cancelled or ran out of time: stop at the next step."""
        return self._should_stop is not None and self._should_stop()


@dataclasses.dataclass
class ProviderOutput:
    """What a provider made for one request: one image per seed, in order."""

    images: list[PIL.Image.Image]
    warnings: list[str] = dataclasses.field(default_factory=list)
    revised_prompt: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded in each image's parameters
    image_details: list[dict[str, Any]] | None = None  # one per image: what only that image's parameters record
    # each image's final latents (channels, height, width), where the hires fix upscales latents and the model
    # has them in a form its image-to-image pipeline takes back; None otherwise
    latents: list[Any] | None = None


class Provider(abc.ABC):
    """Runs requests for the models of one kind (`name` matches `ModelSpec.provider`)."""

    name: str = ""

    @abc.abstractmethod
    def run_batch(self, batch: Batch, progress: Progress) -> list[ProviderOutput]:
        """Make the batch's images: one `ProviderOutput` per request, with one image per seed, in order. The
        requests are checked (concrete values only); report each step to `progress` and stop early when
        `progress.stopped`. A provider that makes one request at a time loops over `batch`."""

    def check(self, spec: ModelSpec, request: ImageRequest) -> None:
        """Refuse before queueing what the model would refuse (after the common checks): raise
        InvalidRequestError naming the parameter."""
        from ..upscalers import HIRES_UPSCALERS

        if request.hires_scale and request.hires_upscaler not in HIRES_UPSCALERS:
            self.upscale(None, 1, request.hires_upscaler)

    def upscale(self, image, scale: float, name: str, tile: int = 256, progress: Progress | None = None):
        """`image` through the upscaler model `name` (its caller resizes the result to the size it wants), reporting
        each tile to `progress`. A provider that runs upscaler models says so here; the engine routes upscale jobs
        (mode "upscale") and the hires fix's model upscale to it."""
        from ..errors import UnsupportedError

        raise UnsupportedError(f"The {self.name} provider runs no upscaler models ({name!r}); use one of lanczos, "
                               "bicubic, nearest.", param="hires_upscaler")

    def warm(self, spec: ModelSpec) -> None:
        """Get `spec` ready before its first request (a server calls this at start); nothing by default."""

    def release(self) -> int:
        """Let go of every loaded model, so that its memory (and an accelerator's) is free for other programs; the
        next request loads what it needs again. Returns the bytes it held; nothing to release by default."""
        return 0

    def footprint(self, spec: ModelSpec) -> dict[str, Any]:
        """How much memory `spec` needs and whether it fits on this machine (`easel models`); unknown by default."""
        return {"size_gb": None, "fits": "unknown"}

    def memory(self) -> dict[str, Any]:
        """The memory its device has in use and free, and what its loaded models hold (`/health`)."""
        return {}

    def describe(self) -> str:
        """One line for `easel providers`: what it runs and how it is configured."""
        return self.__doc__.strip().splitlines()[0] if self.__doc__ else ""


class ProviderRegistry:
    """Provider instances by name, filled from the `easel.providers` entry points on first use."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self._providers: dict[str, Provider] = {}
        self._families: dict[str, ModelFamily] = {}
        self._models: dict[str, ModelSpec] = {}
        self._adapters: list[Adapter] = []
        self._loaded = False

    def add(self, item: Provider | ModelFamily | ModelSpec | Adapter) -> None:
        """Add a provider, a model family, a model or an adapter kind (what a plugin's `register` is given as
        `add`)."""
        from ..catalog import ModelFamily, ModelSpec
        from .diffusers.adapters import Adapter

        if isinstance(item, Provider):
            self._providers[item.name] = item
        elif isinstance(item, ModelFamily):
            self._families[item.name] = item
        elif isinstance(item, ModelSpec):
            self._models[item.name] = item
        elif isinstance(item, Adapter):
            self._adapters.append(item)
        else:
            raise TypeError(f"add() takes a Provider, a ModelFamily, a ModelSpec or an Adapter, not "
                            f"{type(item).__name__}")

    def plugin_catalog(self) -> tuple[list[ModelFamily], list[ModelSpec], list[tuple[OptionSpec, Callable]]]:
        """The families and models that plugins added, and the request options of their adapter kinds with the
        test of the families each fits."""
        self._load()
        options = [(adapter.option, adapter.fits) for adapter in self._adapters if adapter.option is not None]
        return list(self._families.values()), list(self._models.values()), options

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.settings is None:
            from ..config import get_settings

            self.settings = get_settings()
        added_before = dict(self._providers)  # providers added by hand take the place of installed ones
        for ep in entry_points(group="easel.providers"):
            ep.load()(self.add, self.settings)
        self._providers.update(added_before)
        for adapter in self._adapters:  # a plugin's adapter kind, to the providers that take adapters
            for provider in self._providers.values():
                if hasattr(provider, "use_adapter"):
                    provider.use_adapter(adapter)

    def get(self, name: str) -> Provider:
        self._load()
        if name not in self._providers:
            known = ", ".join(sorted(self._providers))
            raise ModelNotFoundError(f"No provider {name!r} is installed (installed: {known}).", param="model")
        return self._providers[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._providers)

    def release(self) -> int:
        """Every provider started so far releases its loaded models; the bytes they held."""
        return sum(provider.release() for provider in list(self._providers.values()))
