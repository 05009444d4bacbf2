"""TrainConfig: every LoRA training setting, checked before any work starts."""

from __future__ import annotations

import importlib.util
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.prepare_dataset import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
Auto = bool | Literal["auto"]
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_model_id() -> str:
    """The base model of the engine settings (MODEL_ID), the training default."""
    from engine.config import ModelConfig

    return ModelConfig().model_id


@dataclass
class TrainConfig:
    """Settings of one LoRA training run; bad values raise ValueError naming the parameter.

    The "auto" switches resolve per device (see `resolved`): gradient checkpointing, 8-bit Adam
    and moving the frozen VAE/text encoder off the GPU are GPU-only savings; latents and caption
    embeddings are cached on every device, since encoding them once is also the CPU's biggest
    saving (no per-step VAE encoder pass) and costs only a few MB of RAM.
    """

    dataset_dir: Path
    output_dir: Path
    model: str = field(default_factory=default_model_id)
    name: str = ""
    trigger_word: str = "sks"
    caption_template: str = DEFAULT_TEMPLATE
    max_steps: int = 1000
    rank: int = 4
    alpha: float | None = None
    lr: float = 1e-4
    text_encoder_lr: float | None = None
    batch_size: int = 1
    resolution: int = 512
    buckets: bool = False
    seed: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 0
    mixed_precision: MixedPrecision = "auto"
    train_text_encoder: bool = False
    min_snr_gamma: float = 0.0
    gradient_checkpointing: Auto = "auto"
    cache_latents: Auto = "auto"
    cache_text_embeddings: Auto = "auto"
    offload_frozen: Auto = "auto"
    max_grad_norm: float = 1.0
    use_8bit_adam: Auto = "auto"
    device: str = "auto"
    sample_prompt: str = ""
    sample_steps: int = 25
    sample_guidance: float = 7.5

    def __post_init__(self) -> None:
        self.dataset_dir = Path(self.dataset_dir)
        self.output_dir = Path(self.output_dir)
        if not self.name:
            self.name = self.output_dir.name or "lora"
        if self.alpha is None:
            self.alpha = float(self.rank)
        self.validate()
        self.alpha = float(self.alpha)

    def validate(self) -> None:
        """Raise ValueError('<parameter>: ...') for the first bad value."""
        check_values(
            {
                "max_steps": self.max_steps,
                "rank": self.rank,
                "resolution": self.resolution,
                "lr": self.lr,
            }
        )
        check_caption_template(self.caption_template)
        _int_range("batch_size", self.batch_size, 1, 64)
        _int_range("checkpoint_every", self.checkpoint_every, 0, 20000)
        _int_range("keep_checkpoints", self.keep_checkpoints, 0, 1000)
        _int_range("sample_steps", self.sample_steps, 0, 150)
        _int_range("seed", self.seed, 0, 2**63 - 1)
        _float_range("alpha", self.alpha, 1e-6, 1e4)
        if self.text_encoder_lr is not None:
            _float_range("text_encoder_lr", self.text_encoder_lr, 1e-8, 1.0)
        _float_range("min_snr_gamma", self.min_snr_gamma, 0.0, 1000.0)
        _float_range("max_grad_norm", self.max_grad_norm, 0.0, 1e6)
        _float_range("sample_guidance", self.sample_guidance, 0.0, 30.0)
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(
                f"mixed_precision: must be one of auto, no, fp16, bf16 (got {self.mixed_precision!r})"
            )
        for key in (
            "gradient_checkpointing",
            "cache_latents",
            "cache_text_embeddings",
            "offload_frozen",
            "use_8bit_adam",
        ):
            if getattr(self, key) not in (True, False, "auto"):
                raise ValueError(f"{key}: must be true, false or auto (got {getattr(self, key)!r})")
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"name: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                f"(got {self.name!r})"
            )
        if not self.trigger_word.strip():
            raise ValueError("trigger_word: must not be empty")
        if not str(self.model).strip():
            raise ValueError("model: must name a base model (hub id, folder or file)")

    def resolved(self, device: str) -> dict[str, Any]:
        """The concrete values of the auto switches and the precision on `device`."""
        on_gpu = device.startswith("cuda")
        precision = self.mixed_precision
        if precision == "auto":
            precision = "fp16" if on_gpu else "no"
        elif precision != "no" and not on_gpu:
            log.info("mixed precision %s needs a GPU; training in fp32 on %s", precision, device)
            precision = "no"
        if precision == "bf16":
            import torch

            if not torch.cuda.is_bf16_supported():
                log.warning("this GPU has no bf16 support; using fp16")
                precision = "fp16"
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None

        def pick(value: Auto, auto: bool) -> bool:
            return auto if value == "auto" else bool(value)

        return {
            "mixed_precision": precision,
            "gradient_checkpointing": pick(self.gradient_checkpointing, on_gpu),
            "cache_latents": pick(self.cache_latents, True),
            "cache_text_embeddings": pick(self.cache_text_embeddings, True)
            and not self.train_text_encoder,
            "offload_frozen": pick(self.offload_frozen, on_gpu),
            "use_8bit_adam": pick(self.use_8bit_adam, on_gpu and has_bnb) and has_bnb and on_gpu,
        }

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        data = asdict(self)
        data["dataset_dir"] = str(self.dataset_dir)
        data["output_dir"] = str(self.output_dir)
        return data

    @property
    def sample_text(self) -> str:
        """The prompt of the final sample image (the caption template with the trigger word)."""
        return self.sample_prompt or self.caption_template.replace("{trigger}", self.trigger_word)


def check_values(values: dict[str, Any]) -> None:
    """Check the settings a recipe or a command may give (max_steps, rank, resolution, lr)."""
    for key, value in values.items():
        if key == "max_steps":
            _int_range(key, value, 1, 20000)
        elif key == "rank":
            _int_range(key, value, 1, 128)
        elif key == "lr":
            _float_range(key, value, 1e-8, 1.0)
        elif key == "resolution":
            _int_range(key, value, 64, 2048)
            if value % 8:
                raise ValueError(f"resolution: must be a multiple of 8 (got {value})")


def check_caption_template(template: Any) -> None:
    """A caption template is text holding the {trigger} placeholder."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"caption_template: must be text (got {template!r})")
    if "{trigger}" not in template:
        raise ValueError(
            f"caption_template: must contain {{trigger}}, where the trigger word goes "
            f"(got {template!r})"
        )


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: must be an integer between {low} and {high} (got {value!r})")


def _float_range(name: str, value: Any, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ValueError(f"{name}: must be a number between {low:g} and {high:g} (got {value!r})")
