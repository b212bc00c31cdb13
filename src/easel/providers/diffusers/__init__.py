"""Local diffusers pipelines, Easel's built-in model included, in rooms: `provider` (check, and each batch as a
numbered script), `loading` (the one loader), `cache` (loaded pipelines and the memory ledger), `adapters` (each
kind of add-on behind one interface), `inputs`, `prompt_weights`, `previews`, `outputs`, `upscalers`, `errors`
and `fit` (an add-on's family read from its files)."""

from .adapters import Adapter, Call
from .errors import pipeline_errors
from .loading import checkpoint_config, pick_device, pick_dtype, pull_model, quiet_libraries
from .provider import DiffusersProvider, register

__all__ = ["Adapter", "Call", "DiffusersProvider", "checkpoint_config", "pick_device", "pick_dtype",
           "pipeline_errors", "pull_model", "quiet_libraries", "register"]
