"""Settings from the environment (EASEL_*), a `.env` file in the working directory, and defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .catalog import DEFAULT_MODEL


def _default_home() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("easel", appauthor=False))


class Settings(BaseSettings):
    """Easel's configuration; every field can be set as EASEL_<NAME> in the environment or in `.env`."""

    model_config = SettingsConfigDict(env_prefix="EASEL_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Workspace: images, history, keys.")
    default_model: str = Field(DEFAULT_MODEL, description="Model used when a request names none.")
    device: str | None = Field(None, description="cuda, mps or cpu; chosen automatically when unset.")
    dtype: str | None = Field(None, description="float32, float16 or bfloat16; per family when unset.")
    max_cached_pipelines: int = Field(2, ge=1, description="Pipelines kept loaded (least recently used go).")
    moderation: bool = Field(True, description="Apply the content policy to prompts (off: EASEL_MODERATION=0).")
    api_keys: str = Field("", description="Comma-separated keys the server accepts; empty = no auth.")
    models_dir: Path | None = Field(None, description="Folder whose diffusers pipeline folders are served by "
                                    "name (default: HOME/models).")
    loras_dir: Path | None = Field(None, description="Folder of LoRA files (.safetensors) that requests name "
                                   "(default: HOME/loras).")
    embeddings_dir: Path | None = Field(None, description="Folder of textual-inversion embeddings (.safetensors) "
                                        "that prompts use by name (default: HOME/embeddings).")
    controlnets_dir: Path | None = Field(None, description="Folder of ControlNet models that requests name "
                                         "(default: HOME/controlnets).")
    ip_adapters_dir: Path | None = Field(None, description="Folder of IP-Adapters that requests name "
                                         "(default: HOME/ip_adapters).")
    upscalers_dir: Path | None = Field(None, description="Folder of upscaler models that requests name "
                                       "(default: HOME/upscalers).")
    configs_dir: Path | None = Field(None, description="Folder of the pipeline configurations single-file "
                                     "checkpoints load with (default: HOME/configs).")
    openai_model: str | None = Field(None, description="Easel model behind dall-e-2/3 and gpt-image-*.")
    openai_edit_model: str | None = Field(None, description="Easel model behind edits that name dall-e-2 or "
                                          "gpt-image-* (one that edits by instruction: flux-kontext, "
                                          "qwen-image-edit, flux2-klein); default: the openai_model.")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS; empty = CORS off.")
    max_queue: int = Field(32, ge=1, description="Jobs that may wait; more are answered 429.")
    max_batch_images: int = Field(8, ge=1, description="Images the engine runs in one model call.")
    batch_wait_ms: float = Field(20.0, ge=0, description="How long a batch waits for compatible jobs.")
    job_timeout_s: float = Field(600.0, gt=0, description="A running job is stopped after this long.")
    keep_finished_s: float = Field(60.0, ge=0, description="How long a finished job stays in memory (its record "
                                   "and images stay on disk).")
    min_free_disk_mb: float = Field(64.0, ge=0, description="Below this much free space in the workspace, new "
                                    "jobs are refused (507) and /health says 503.")
    max_cache_gb: float = Field(0.0, ge=0, description="Memory bound on loaded pipelines in GB; 0 = no bound.")
    idle_unload_s: float = Field(0.0, ge=0, description="After this many seconds without a job, the server releases "
                                 "its loaded models (and their GPU memory); the next job loads them again. 0: never.")
    quantize: Literal["none", "fp8", "int8", "int8_dynamic", "nf4"] = Field(
        "none", description="Store local models' denoiser weights in less memory (a request's `quantize` option "
        "wins): fp8 keeps them as float8 and computes each layer in the model's dtype (layerwise casting); int8 as "
        "8-bit integers (torchao, weight-only); int8_dynamic computes the Linear layers in int8 on a CPU (faster); nf4 "
        "as 4-bit NormalFloat (bitsandbytes, CUDA only).")
    gguf_bases: str = Field("", description="Comma-separated family=model pairs naming the pipeline (text encoders, "
                            "VAE, configuration) the models folder's GGUF denoisers of a family run with, e.g. "
                            "flux=/srv/FLUX.1-dev; unset: the release each file was made from (flux-dev, ...).")
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = Field(
        "none", description="torch.compile local models' denoiser and VAE decoder (a request's `compile` option "
        "overrides it); reduce-overhead suits a GPU server.")
    channels_last: bool = Field(False, description="Channels-last memory layout for local models' convolutions.")
    fuse_qkv: bool = Field(False, description="Fused QKV attention projections for local models.")
    decoder: Literal["full", "tiny"] = Field("full", description="tiny: local models decode with their family's tiny "
                                             "autoencoder where it is in the hub cache (a request's `decoder` "
                                             "overrides it).")
    step_cache: str = Field("none", description="Step caching for local models where it fits (deepcache[:N] on UNet "
                            "models, first_block[:T] or taylorseer[:N] on transformer ones); a request's `cache` "
                            "overrides it.")
    tokens: str = Field("none", description="Token downsampling for local UNet models (todo[:F[:L]]: the "
                        "highest-resolution self-attention attends to its tokens downsampled F times each way); a "
                        "request's `tokens` overrides it.")
    host: str = Field("127.0.0.1:8000", description="The Easel server that `easel generate/edit/vary` hand their "
                      "jobs to when it answers (host:port or a URL); off: always run in-process.")
    warm_sizes: str = Field("", description="Comma-separated sizes (512x512,1024x768) the server runs once at start, "
                            "so that no client's request pays for compiling them.")
    ui: bool = Field(True, description="Mount the web UI at /ui on `easel serve` (off: EASEL_UI=0).")
    prompt_enhancer_model: str | None = Field(None, description="A chat model that rewrites short prompts into "
                                              "detailed ones (revised_prompt); unset: prompts stay as written.")
    prompt_enhancer_url: str | None = Field(None, description="Its OpenAI-compatible endpoint (e.g. "
                                            "http://127.0.0.1:11434/v1); unset: OpenAI's.")
    prompt_enhancer_key: str | None = Field(None, description="Its API key (else `easel keys set enhancer`).")
    prompt_enhancer_timeout_s: float = Field(15.0, gt=0, le=300, description="How long a rewrite may take; "
                                             "past it the prompt is used as written, with a warning.")
    enhance_prompts: Literal["off", "short", "all"] = Field("short", description="Which prompts the chat model "
                                                            "rewrites unless a request says: short ones, all, none.")
    openai_base_url: str | None = Field(None, description="OpenAI-compatible server for `openai:` models "
                                        "(default: OPENAI_BASE_URL, else api.openai.com).")
    hf_base_url: str | None = Field(None, description="Server speaking the HF inference protocol for `hf:` "
                                    "models (POST {base}/models/{id}); default: Hugging Face's router.")
    hf_provider: str = Field("auto", description="Hugging Face inference provider for `hf:` models.")
    remote_timeout_s: float = Field(300.0, gt=0, description="Timeout of one call to a remote service.")
    database_url: str | None = Field(None, description="PostgreSQL (postgresql://user@host/db) for the history and "
                                     "the job records, shared by a cluster's replicas; unset: SQLite in the home.")
    server_secret: str | None = Field(None, description="Hex key that signs image links; a cluster's replicas share "
                                      "it (unset: one created in HOME/server_secret).")
    webhook_secret: str | None = Field(None, description="Key that signs webhook calls (HMAC-SHA256; unset: one "
                                       "created in HOME/webhook_secret, which receivers are given).")
    webhook_allow_private: bool = Field(False, description="Allow webhook URLs on loopback or private addresses "
                                        "(a receiver on this machine or its network).")
    webhook_attempts: int = Field(5, ge=1, le=20, description="Times a webhook call is tried (pauses of 1, 2, 4, "
                                  "... s between).")
    ray_models: str = Field("", description="`easel serve --ray`: comma-separated models with a model deployment "
                            "each (default: the server's model).")
    ray_replicas: int = Field(1, ge=1, description="Replicas per model deployment (without ray_autoscale).")
    ray_autoscale: str = Field("", description="MIN:MAX replicas per model, scaled by Ray Serve on ongoing requests.")
    ray_gpus_per_replica: float | None = Field(None, ge=0, description="GPUs per model replica, fractions allowed "
                                               "(default: 1 where the cluster has GPUs, else 0: the CPU).")
    ray_cpus_per_replica: float = Field(1.0, ge=0, description="CPUs per model replica.")
    ray_ingress_replicas: int = Field(1, ge=1, description="Replicas of the HTTP ingress (more than one needs "
                                      "EASEL_DATABASE_URL and a shared EASEL_HOME).")
    ray_retries: int = Field(3, ge=0, description="Times a job is sent again when its model replica dies.")
    ray_num_gpus: float | None = Field(None, ge=0, description="GPUs of the local Ray cluster that `easel serve "
                                       "--ray` starts (default: those Ray detects).")
    ray_upscale_delay_s: float = Field(30.0, ge=0, description="Load that lasts this long adds a replica.")
    ray_downscale_delay_s: float = Field(600.0, ge=0, description="Idleness that lasts this long removes one.")
    hf_max_wait_s: float = Field(300.0, ge=0, description="How long to wait for a remote model to load.")

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, raw: str) -> str:
        from .keys import parse_keys

        parse_keys(raw)  # a malformed list fails here, at start-up, not later as "no auth"
        return raw

    @field_validator("ray_autoscale")
    @classmethod
    def _autoscale_parse(cls, raw: str) -> str:
        if raw:
            low, sep, high = raw.partition(":")
            if not (sep and low.strip().isdigit() and high.strip().isdigit()):
                raise ValueError(f"must be MIN:MAX (two whole numbers, e.g. 1:4), not {raw!r}")
            if int(low) > int(high) or int(high) < 1:
                raise ValueError(f"must have MIN <= MAX and MAX >= 1, not {raw!r}")
        return raw

    @property
    def autoscale_range(self) -> tuple[int, int] | None:
        """EASEL_RAY_AUTOSCALE as (MIN, MAX), or None for a fixed number of replicas."""
        if not self.ray_autoscale:
            return None
        low, _, high = self.ray_autoscale.partition(":")
        return int(low), int(high)

    @property
    def server_keys(self) -> list[str]:
        """The keys clients must present (empty: no auth)."""
        from .keys import parse_keys

        return parse_keys(self.api_keys)

    def folder(self, kind: str) -> Path:
        """Where files of a kind of `easel.addons.FOLDERS` are: its `<kind>_dir` setting, else HOME/<kind>."""
        return getattr(self, f"{kind}_dir") or self.home / kind

    @property
    def models_folder(self) -> Path:
        return self.folder("models")

    @property
    def loras_folder(self) -> Path:
        """Where LoRAs named by a request are: `<name>.safetensors`."""
        return self.folder("loras")

    @property
    def controlnets_folder(self) -> Path:
        """ControlNet models by name: diffusers folders (`config.json` and its weights), as the hub has them."""
        return self.folder("controlnets")

    @property
    def ip_adapters_folder(self) -> Path:
        """IP-Adapters by name: a folder with the adapter's weights (.safetensors) and its `image_encoder`."""
        return self.folder("ip_adapters")

    @property
    def upscalers_folder(self) -> Path:
        """Upscaler models by name: diffusers pipeline folders (SD's x4 upscaler)."""
        return self.folder("upscalers")

    @property
    def configs_folder(self) -> Path:
        """Pipeline configurations (configs and tokenizers, no weights) that single-file checkpoints load with,
        one folder per kind of checkpoint (`v1`, `xl_base`, `sd35_medium`, `flux-dev`, ...), filled by
        `easel models pull CHECKPOINT`."""
        return self.folder("configs")

    @property
    def embeddings_folder(self) -> Path:
        """Where textual-inversion embeddings are: `<name>.safetensors`, used by writing `name` in a prompt."""
        return self.folder("embeddings")

    @property
    def history_location(self) -> Path | str:
        """Where the history and the job records live: the PostgreSQL database when one is set, else SQLite in
        the workspace."""
        return self.database_url or self.home / "history.db"

    @property
    def keys_path(self) -> Path:
        return self.home / "keys.json"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
