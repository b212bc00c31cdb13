"""IP-Adapter image prompts: the adapter loaded into the denoiser for one call only (a UNet that holds one needs an
image prompt in every call), its image encoder loaded once and kept with the pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ....catalog import IP_ADAPTER_MARKER
from ....errors import InvalidRequestError
from .. import fit
from ..errors import does_not_fit, refuse
from .base import Adapter, Call, ModelFiles


class IpAdapter(Adapter):
    kind = "ip-encoder"
    param = "ip_adapter"

    def __init__(self, folder: Path | None, loader):
        self.folder, self.loader = folder, loader

    def fits(self, family) -> bool:
        return family.ip_adapter

    def uses(self, requests):
        return requests[0].ip_adapter

    def model_folder(self, name: str, download: bool = True) -> Path | None:
        """An IP-Adapter's folder: its weights (one .safetensors) beside its `image_encoder`."""
        return self.loader.named_folder(name, self.folder, IP_ADAPTER_MARKER, "IP-Adapter", "ip_adapter", download)

    def check(self, model: ModelFiles, uses) -> None:
        adapter = self.model_folder(uses.model, download=False)
        refuse(fit.ip_adapter_misfit(uses.model, adapter, model.denoiser, model.spec.name), "ip_adapter")

    @contextlib.contextmanager
    def enter(self, call: Call, uses) -> Iterator[dict[str, Any]]:
        folder = self.model_folder(uses.model)
        weights = sorted(folder.glob("*.safetensors"))
        if len(weights) != 1:
            raise InvalidRequestError(f"The IP-Adapter {uses.model!r} needs one .safetensors file beside its "
                                      f"image_encoder (it has {len(weights)}).", param="ip_adapter")
        pipe, key = call.pipe, (self.kind, str(folder))
        encoder = call.loaded.derived.get(key)
        if encoder is not None:
            pipe.register_modules(image_encoder=encoder)
        try:
            pipe.load_ip_adapter(str(folder), subfolder="", weight_name=weights[0].name,
                                 image_encoder_folder="image_encoder")
        except Exception as exc:  # noqa: BLE001 - not an IP-Adapter, or one for another architecture
            with contextlib.suppress(Exception):
                pipe.unload_ip_adapter()
            raise does_not_fit(f"The IP-Adapter {uses.model!r}", exc, "ip_adapter") from None
        call.loaded.derived[key] = pipe.image_encoder
        call.loaded.touch(key)
        try:
            pipe.set_ip_adapter_scale(uses.scale)
            yield {"ip_adapter_image": uses.image.convert("RGB")}
        finally:
            pipe.unload_ip_adapter()  # the next call runs as if no adapter had ever been loaded
