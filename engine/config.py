"""Engine settings: sections filled from the environment and `.env`, one prefix per section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import SettingsConfigDict

from engine.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES, canonical_scheduler_name
from engine.settings_base import ENV_FILE as ENV_FILE
from engine.settings_base import ConfigError as ConfigError
from engine.settings_base import SettingsSection, load_sections

DEFAULT_MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_NEGATIVE_PROMPT = (
    "lowres, worst quality, low quality, blurry, jpeg artifacts, watermark, text, signature, "
    "deformed, bad anatomy, extra limbs"
)
Precision = Literal["auto", "fp32", "fp16", "bf16"]
StepCache = Literal["auto", "0", "2", "3", "4", "5"]
VramPreset = Literal["auto", "none", "2gb", "3gb", "4gb", "6gb", "8gb"]
WeightStorage = Literal["auto", "off", "fp8"]
# Bounds of a request, shared by the settings, request validation and the Discord options.
MIN_STEPS, MAX_STEPS = 1, 150
MIN_CFG, MAX_CFG = 0, 30
MAX_NUM_IMAGES = 8


class ModelConfig(SettingsSection):
    """Which model to load and how (env prefix MODEL_)."""

    model_config = SettingsConfigDict(env_prefix="MODEL_")

    model_id: str = Field(
        DEFAULT_MODEL_ID,
        validation_alias=AliasChoices("model_id", "MODEL_ID"),
        description="Hub id, local diffusers folder, single-file .safetensors, or 'demo'",
    )
    precision: Precision = Field(
        "auto",
        description="auto (fp16 on CUDA; on a CPU bf16 where it computes bf16 natively, else "
        "fp32), fp32, fp16, bf16",
    )
    cache_dir: Path = Field(Path("models/cache"), description="Where downloaded weights are cached")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    allow_ckpt: bool = Field(False, description="Allow pickle .ckpt files (they can run code)")
    safety_checker: bool = Field(
        False, description="Load the NSFW safety checker when the model has one"
    )
    local_files_only: bool = Field(False, description="Never contact the model hub")
    single_file_config: str = Field(
        "", description="Folder or hub id with component configs for single-file checkpoints"
    )
    choices: str = Field(
        "",
        description="Models users may pick, name=source,...: hub ids, folders or .safetensors "
        "files (MODEL_ID is always allowed and is the default)",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda", "mps"} or (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            return value
        raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")

    @field_validator("choices")
    @classmethod
    def _check_choices(cls, value: str) -> str:
        from engine.model_choices import parse_model_choices

        parse_model_choices(value)
        return value


class OptimizationConfig(SettingsSection):
    """Memory and speed switches (env prefix OPT_); a VRAM preset fills those not set explicitly."""

    model_config = SettingsConfigDict(env_prefix="OPT_")

    vram_preset: VramPreset = Field("auto", description="auto, none, 2gb, 3gb, 4gb, 6gb, 8gb")
    enable_attention_slicing: bool = Field(False, description="Compute attention in slices")
    enable_vae_slicing: bool = Field(False, description="Decode batch images one at a time")
    enable_vae_tiling: bool = Field(
        False, description="Let the VAE work in tiles when GPU memory needs it"
    )
    enable_model_cpu_offload: bool = Field(
        False, description="Keep only the active model on the GPU"
    )
    enable_sequential_cpu_offload: bool = Field(False, description="Stream weights layer by layer")
    enable_group_offload: bool = Field(
        False, description="Stream weights layer by layer with CUDA stream prefetch (group offload)"
    )
    weight_storage: WeightStorage = Field(
        "auto",
        description="auto (what the VRAM preset says: fp8 for 2gb and 3gb; off on a CPU), off, "
        "fp8 (UNet and VAE weights stored in float8, computed in the working precision: about "
        "half their memory; on a CPU it saves RAM but is slower)",
    )
    enable_xformers: bool = Field(
        True, description="Use xformers attention when installed (else SDPA)"
    )
    enable_torch_compile: bool = Field(False, description="torch.compile the UNet (slow first run)")
    channels_last: bool = Field(False, description="channels-last memory format for the UNet")
    tiny_vae: str = Field("", description="Tiny autoencoder (TAESD) folder or hub id for previews")
    tiny_vae_decode: bool = Field(False, description="Also decode final images with the tiny VAE")
    step_cache: StepCache = Field(
        "auto",
        description="Step caching (DeepCache, an optional extra): auto (every 3rd step on a CPU "
        "when installed), 0 (off) or N (a full UNet pass every N steps)",
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="Torch threads for CPU inference; 0: OMP_NUM_THREADS if set, else the physical "
        "cores",
    )


class GenerationConfig(SettingsSection):
    """Defaults for each generation (env prefix GEN_)."""

    model_config = SettingsConfigDict(env_prefix="GEN_")
    # Fast mode became the draft tier: its variables still set the draft settings.
    renamed = {
        "GEN_OUTPUT_DIR": "output_dir",
        "GEN_FAST_LORA": "draft_lora",
        "GEN_FAST_STEPS": "draft_steps",
        "GEN_FAST_GUIDANCE": "draft_guidance",
    }

    width: int = Field(512, description="Image width in pixels, a multiple of 8 in [64, 2048]")
    height: int = Field(512, description="Image height in pixels, a multiple of 8 in [64, 2048]")
    num_inference_steps: int = Field(25, description=f"Denoising steps, {MIN_STEPS}-{MAX_STEPS}")
    guidance_scale: float = Field(
        7.5, description=f"Classifier-free guidance (CFG), {MIN_CFG}-{MAX_CFG}"
    )
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, description="Default negative prompt")
    scheduler: str = Field(DEFAULT_SCHEDULER, description="Sampler: " + ", ".join(SCHEDULER_NAMES))
    num_images: int = Field(1, description=f"Images per request, 1-{MAX_NUM_IMAGES}")
    # The bot's storage owns the images folder and the LoRA folder (it writes both), so these read
    # its variables by name: one setting each for the bot and `python -m engine`, and engine/
    # never imports storage/. GEN_OUTPUT_DIR was this folder's own name before the merge.
    output_dir: Path = Field(
        Path("outputs"),
        validation_alias="STORAGE_OUTPUTS_DIR",
        description="Where the command line saves PNGs (the bot: under it, by day)",
    )
    lora_dir: Path = Field(
        Path("models/lora"),
        validation_alias="STORAGE_LORA_DIR",
        description="Where <lora:NAME:w> in a prompt looks for NAME/final, NAME or NAME.safetensors",
    )
    draft_lora: str = Field(
        "latent-consistency/lcm-lora-sdv1-5",
        description="Few-step LoRA of drafts (LCM-LoRA; TCD or Hyper-SD with "
        "GEN_DRAFT_SAMPLER=TCD): a file, a folder or a hub id",
    )
    draft_sampler: Literal["LCM", "TCD"] = Field(
        "LCM", description="Sampler of drafts: LCM (LCM-LoRA) or TCD (TCD and Hyper-SD LoRAs)"
    )
    upscaler: str = Field(
        "", description="Upscale model (.pth/.safetensors, Real-ESRGAN class); empty: Lanczos"
    )
    draft_steps: int = Field(4, ge=1, le=12, description="Steps of a draft (LCM: 4-8)")
    draft_guidance: float = Field(
        1.0,
        ge=0,
        le=3,
        description="CFG of a draft; 1 or less runs one UNet batch and no negative prompt",
    )
    draft_default: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Draft when a request does not say: auto (on CPU-only hosts), on, off",
    )
    max_loras: int = Field(
        3, ge=0, le=6, description="LoRAs per request from <lora:name:w> tags, on top of /lora use"
    )

    @field_validator("width", "height")
    @classmethod
    def _check_size(cls, value: int) -> int:
        check_size(value)
        return value

    @field_validator("num_inference_steps")
    @classmethod
    def _check_steps(cls, value: int) -> int:
        check_range(value, MIN_STEPS, MAX_STEPS)
        return value

    @field_validator("guidance_scale")
    @classmethod
    def _check_cfg(cls, value: float) -> float:
        check_range(value, MIN_CFG, MAX_CFG)
        return value

    @field_validator("num_images")
    @classmethod
    def _check_num(cls, value: int) -> int:
        check_range(value, 1, MAX_NUM_IMAGES)
        return value

    @field_validator("scheduler")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        return canonical_scheduler_name(value)


class QueueConfig(SettingsSection):
    """The job queue and the engine thread (env prefix QUEUE_)."""

    model_config = SettingsConfigDict(env_prefix="QUEUE_")
    # The engine makes the progress events and decodes the previews, and the bot shows every one it
    # gets, so the queue's settings decide both (the bot had its own pair, which could only hide
    # previews already paid for).
    renamed = {"BOT_PROGRESS_PREVIEWS": "previews", "BOT_EDIT_INTERVAL_S": "progress_interval_s"}

    per_user_cap: int = Field(3, ge=1, le=100, description="Waiting jobs allowed per user")
    global_cap: int = Field(100, ge=1, le=10000, description="Waiting jobs allowed in total")
    admin_priority: bool = Field(False, description="Serve admins' jobs before others'")
    progress_interval_s: float = Field(
        1.5, ge=0, le=60, description="Min seconds between progress events and message edits"
    )
    previews: bool = Field(True, description="Show a small preview image while generating")
    preview_size: int = Field(128, ge=32, le=512, description="Longest side of previews in pixels")
    max_attempts: int = Field(3, ge=1, le=10, description="Runs of a job before it is given up")
    train_slice_steps: int = Field(
        10, ge=1, le=1000, description="Training steps between /imagine jobs"
    )


class WorkersConfig(SettingsSection):
    """Where jobs run: the local engine thread or a pool of Ray workers (env prefix WORKERS_)."""

    model_config = SettingsConfigDict(env_prefix="WORKERS_")

    backend: Literal["local", "ray"] = Field(
        "local", description="local (one engine thread in the bot) or ray (one worker per GPU)"
    )
    ray_address: str = Field(
        "", description="Empty: a private Ray inside the bot; auto or host:port: join a cluster"
    )
    count: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Ray workers; empty: one per GPU (else per node), PCs joining later too",
    )
    affinity_window: int = Field(
        3, ge=0, le=100, description="Most times a job is overtaken for a worker holding a LoRA"
    )
    cache_dir: Path = Field(
        Path("models/worker-cache"),
        description="Where a Ray worker keeps the LoRAs and source images it was sent",
    )


def check_size(value: int) -> None:
    """Raise ValueError unless value is a multiple of 8 in [64, 2048]."""
    if value % 8 or not 64 <= value <= 2048:
        raise ValueError(f"must be a multiple of 8 between 64 and 2048 (got {value})")


def check_range(value: float, low: float, high: float) -> None:
    """Raise ValueError unless low <= value <= high."""
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high} (got {value})")


class AppConfig(BaseModel):
    """All engine settings: `config.model`, `config.optimization`, `config.generation`."""

    model_config = {"protected_namespaces": ()}

    model: ModelConfig = Field(default_factory=ModelConfig)
    optimization: OptimizationConfig = Field(default_factory=OptimizationConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)


SECTIONS: dict[str, type[SettingsSection]] = {
    "model": ModelConfig,
    "optimization": OptimizationConfig,
    "generation": GenerationConfig,
    "queue": QueueConfig,
    "workers": WorkersConfig,
}


def load_config(env_file: str | Path | None = ENV_FILE) -> AppConfig:
    """Read AppConfig from the environment (and `.env`), with readable errors for bad values."""
    return AppConfig(**load_sections(SECTIONS, env_file))
