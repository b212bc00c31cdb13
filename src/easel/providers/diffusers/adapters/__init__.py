"""Adapters: each kind of add-on as one module behind one interface (`base.Adapter`)."""

from .base import Adapter, Call, ModelFiles
from .clip_skip import ClipSkip
from .controlnet import ControlNet
from .decoder import TinyDecoder
from .embeddings import Embeddings
from .ip_adapter import IpAdapter
from .lora import Lora
from .step_cache import StepCache
from .tokens import TokenDownsampling

__all__ = ["Adapter", "Call", "ClipSkip", "ControlNet", "Embeddings", "IpAdapter", "Lora", "ModelFiles", "StepCache",
           "TinyDecoder", "TokenDownsampling"]
