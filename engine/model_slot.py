"""ModelSlot: the one resident model (load, optimizations, memory rungs, sampler, tiny VAE)."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import torch

from engine import vae_tiles
from engine.config import AppConfig
from engine.cpu import apply_cpu_threads
from engine.embeddings import text_encoder_width
from engine.errors import EngineError
from engine.model_choices import ModelCatalog
from engine.optimizations import (
    FP8_STORAGE,
    VAE_SLICING_TILING,
    AttentionProcessors,
    apply_memory_level,
    attention_processors,
    compile_unet,
    configure_pipeline,
    configured_offloads,
    describe_rungs,
    memory_rungs,
    next_placement_level,
    offers_fp8,
    place_on_device,
    precision_name,
    release_device,
    resolve_device,
    resolve_dtype,
)
from engine.outputs import SafetyChecker
from engine.pipeline import (
    ModelSource,
    load_pipeline,
    offline,
    read_model_defaults,
    resolve_model_source,
)
from engine.preview import preview_or_none
from engine.schedulers import make_scheduler
from engine.vram import resolve_optimizations
from engine.weight_storage import apply_weight_storage, stored_fp8

log = logging.getLogger(__name__)

# The out-of-memory ladder on a CPU or before a load: each rung adds one saving to those below
# it. A load puts the slot's own ladder in memory_rungs (with fp8 storage on a GPU, see load).
MEMORY_RUNGS = memory_rungs()


class ModelSlot:
    """Holds the resident pipeline with its device, precision, optimizations and memory level."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        model = config.model
        self.models = ModelCatalog(model.model_id, model.choices, model.cache_dir)
        self.pipe: Any = None
        self.source: ModelSource | None = None
        self.device = "cpu"
        self.dtype = torch.float32
        self.preset = "none"
        self.applied: list[str] = []
        self.model_defaults: dict[str, Any] = {}
        self.model_name = ""
        self.safety: SafetyChecker | None = None
        self.tiny_vae: Any = None
        self.scheduler_name = ""  # the sampler on the pipeline now ("" right after a load)
        self.memory_level = 0  # -1 after a failed change: the next set_memory_level applies in full
        self.memory_floor = 0  # the level the model needed to load; never stepped below
        self.memory_rungs = MEMORY_RUNGS
        self.load_notice = ""  # what the last load had to give up to fit, until a job reports it
        self._base_scheduler_config: dict[str, Any] = {}
        self._opt: Any = None
        self._attention: AttentionProcessors = {}

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded."""
        return self.pipe is not None

    @property
    def text_width(self) -> int | None:
        """The loaded text encoder's width (768 SD 1.x, 1024 SD 2.x): the architecture family."""
        return None if self.pipe is None else text_encoder_width(self.pipe)

    def load(self, name: str | None = None) -> None:
        """Load a model (a MODEL_CHOICES name; None: MODEL_ID) with the device and memory settings."""
        cfg = self.config
        model_id = self.models.source(name) if name else cfg.model.model_id
        source = resolve_model_source(model_id, cfg.model.allow_ckpt)
        self.device = resolve_device(cfg.model.device)
        self.dtype = resolve_dtype(cfg.model.precision, self.device)
        if self.device == "cpu":
            threads, why = apply_cpu_threads(cfg.optimization.cpu_threads)
            log.info("torch threads: %d (%s)", threads, why)
        opt, self.preset = resolve_optimizations(cfg.optimization, self.device)
        started = time.perf_counter()
        pipe = load_pipeline(
            source,
            dtype=self.dtype,
            cache_dir=cfg.model.cache_dir,
            local_files_only=cfg.model.local_files_only,
            safety_checker=cfg.model.safety_checker,
            single_file_config=cfg.model.single_file_config or None,
            allow_ckpt=cfg.model.allow_ckpt,
        )
        if getattr(pipe, "safety_checker", None) is not None:
            # Run the checker ourselves so flagged images are marked, not blacked out.
            self.safety = SafetyChecker(
                pipe.safety_checker, pipe.feature_extractor, self.device, self.dtype
            )
            pipe.safety_checker = None
        self._base_scheduler_config = dict(pipe.scheduler.config)
        # Before the rungs and the placement: offers_fp8 reads it, and the offload hooks placed
        # next must hold the float8 weights, not the originals.
        self.applied = apply_weight_storage(pipe, opt.weight_storage, self.dtype)
        self.applied += configure_pipeline(pipe, opt, self.device)
        rungs = memory_rungs(fp8=offers_fp8(pipe, self.device), skip=configured_offloads(opt))
        attention = attention_processors(pipe)
        level, placed = self._place(pipe, opt, rungs, attention, self.models.resolve(name))
        self.applied += placed + compile_unet(pipe, opt)
        # Before the pipeline is published: a failed tiny VAE load leaves no half-loaded model.
        self.tiny_vae = self._load_tiny_vae(pipe, opt)
        self._opt = opt
        self._attention = attention
        self.memory_rungs = rungs
        self.memory_level = self.memory_floor = level
        self.load_notice = self._notice(self.models.resolve(name), rungs[:level])
        self.pipe = pipe
        self.source = source
        self.model_defaults = read_model_defaults(source)
        self.model_name = self.models.resolve(name)
        self.models.remember_width(self.model_name, text_encoder_width(pipe))
        self.scheduler_name = ""
        log.info(
            "loaded %s on %s (%s, preset %s%s) in %.1fs",
            self.model_name,
            self.device,
            precision_name(self.dtype),
            self.preset,
            (", " + ", ".join(self.applied)) if self.applied else "",
            time.perf_counter() - started,
        )

    def unload(self) -> None:
        """Free the pipeline and its memory (GPU memory included)."""
        self.pipe = None
        self.safety = None
        self.load_notice = ""
        self._attention = {}
        self.tiny_vae = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _place(
        self,
        pipe: Any,
        opt: Any,
        rungs: tuple[str, ...],
        attention: AttentionProcessors,
        model: str,
    ) -> tuple[int, list[str]]:
        """Put the pipeline on the device; when it does not fit, climb the ladder (load-time).

        Only rungs that change where the weights live or their size can help a load; the level
        reached includes the cheaper rungs below it, as on the out-of-memory ladder.
        Returns the level and what was applied.
        """
        level = 0
        while True:
            try:
                if level == 0:
                    return 0, place_on_device(pipe, opt, self.device)
                active = rungs[:level]
                # What it stores in fp8 is named in the level's entry (the rung list).
                apply_memory_level(pipe, opt, self.device, active, attention, self.dtype)
                return level, [f"memory level {level} at load ({describe_rungs(active)})"]
            except torch.cuda.OutOfMemoryError:
                release_device(pipe, self.device)
                up = next_placement_level(rungs, level)
                if up is None:
                    raise EngineError(
                        f"The model {model} does not fit in this GPU's memory even with every "
                        f"saving ({describe_rungs(rungs[:-1])}). Free GPU memory (close other "
                        "programs that use it), choose a smaller model, or run on the CPU "
                        "(MODEL_DEVICE=cpu)."
                    ) from None
                log.warning(
                    "%s does not fit in GPU memory at memory level %d; trying level %d (%s)",
                    model,
                    level,
                    up,
                    describe_rungs(rungs[:up]),
                )
                level = up

    def _notice(self, model: str, active: tuple[str, ...]) -> str:
        """What the user is told once when the model needed savings to load ("" when none)."""
        if not active:
            return ""
        log.warning(
            "%s loaded at memory level %d (%s): generation is slower; a smaller OPT_VRAM_PRESET "
            "starts there without the failed tries",
            model,
            len(active),
            describe_rungs(active),
        )
        return (
            f"The model {model} did not fit in the GPU's memory as configured, so it was loaded "
            f"with {describe_rungs(active)}: images take longer until it is loaded again."
        )

    def take_load_notice(self) -> str:
        """The load's notice, once: "" after the first call (and when the load needed nothing)."""
        notice, self.load_notice = self.load_notice, ""
        return notice

    def next_memory_level(self, level: int) -> int:
        """The level above `level`, past a rung in effect already (fp8 storage kept from before)."""
        level += 1
        rungs = self.memory_rungs
        if level < len(rungs) and rungs[level - 1] == FP8_STORAGE and self.fp8_kept:
            level += 1
        return level

    @property
    def fp8_kept(self) -> bool:
        """Whether the UNet's weights are stored in fp8 now (at any memory level)."""
        return self.pipe is not None and stored_fp8(getattr(self.pipe, "unet", None))

    def _load_tiny_vae(self, pipe: Any, opt: Any) -> Any:
        """Load the tiny autoencoder (TAESD) when configured; optionally make it the decoder."""
        if not opt.tiny_vae:
            return None
        from diffusers import AutoencoderTiny

        try:
            tiny = AutoencoderTiny.from_pretrained(
                opt.tiny_vae,
                dtype=self.dtype,
                cache_dir=str(self.config.model.cache_dir),
                local_files_only=self.config.model.local_files_only or offline(),
                use_safetensors=None if self.config.model.allow_ckpt else True,
            )
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"tiny VAE {opt.tiny_vae!r} is not available offline; download it once "
                f"(e.g. madebyollin/taesd) or clear OPT_TINY_VAE ({type(exc).__name__})"
            ) from exc
        tiny.to(self.device).eval()
        if opt.tiny_vae_decode:
            pipe.vae = tiny
            self.applied.append("tiny VAE decode")
        return tiny

    def preview(self, latents: Any, max_side: int = 128) -> Any:
        """A small image of the first latent: the tiny VAE when loaded, else a linear guess."""
        if self.tiny_vae is None or latents is None:
            return preview_or_none(latents, max_side)
        with torch.no_grad():
            decoded = self.tiny_vae.decode(latents[:1].to(self.tiny_vae.dtype)).sample
        from PIL import Image

        array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
        image = Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
        image.thumbnail((max_side, max_side))
        return image

    def select_scheduler(self, name: str) -> None:
        """Put the sampler `name` on the pipeline (built from the model's own scheduler config)."""
        if name != self.scheduler_name:
            self.pipe.scheduler = make_scheduler(name, self._base_scheduler_config)
            self.scheduler_name = name

    def vae_tiling_mode(self, upscale: bool) -> str:
        """ALWAYS after running out of memory; WHEN_NEEDED with the setting or for an upscale."""
        if VAE_SLICING_TILING in self.memory_rungs[: self.memory_level]:
            return vae_tiles.ALWAYS
        wanted = upscale or (self._opt is not None and self._opt.enable_vae_tiling)
        return vae_tiles.WHEN_NEEDED if wanted else vae_tiles.OFF

    def vae_tile_size(self, width: int, height: int, images: int, upscale: bool) -> int | None:
        """The tile side (px) for this run's VAE encode/decode, or None to run them whole."""
        vae = self.pipe.vae
        at_once = 1 if getattr(vae, "use_slicing", False) else images
        mode = self.vae_tiling_mode(upscale)
        return vae_tiles.tile_size(vae, self.device, width, height, at_once, mode)

    def set_memory_level(self, level: int) -> None:
        """Apply the first `level` rungs of `memory_rungs` on top of the configured settings.

        Never below the floor the model needed to load. fp8 weight storage, once on, stays on
        at lower levels until the model is loaded again (the float8 copies replaced the weights).
        """
        level = max(self.memory_floor, min(level, len(self.memory_rungs)))
        if level == self.memory_level or not self.loaded:
            self.memory_level = level
            return
        if self.memory_level == 0:
            # What is in use now (xformers, SDPA, custom) is what stepping back down restores.
            self._attention = attention_processors(self.pipe)
        active = self.memory_rungs[:level]
        self.memory_level = -1  # until it is all applied: a failed change is redone in full
        lasting = apply_memory_level(
            self.pipe, self._opt, self.device, active, self._attention, self.dtype
        )
        self.memory_level = level
        log.info("memory level %d (%s)", level, describe_rungs(active) or "as configured")
        if lasting:
            self.applied += lasting
            log.warning(
                "%s: UNet and VAE weights now stored in fp8; they stay so at lower memory levels until "
                "the model is loaded again",
                self.model_name,
            )
