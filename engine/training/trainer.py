"""LoraTrainer: peft LoRA training of a Stable Diffusion UNet, runnable in slices between generations."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from engine.lora import adapter_name_for
from engine.training import files
from engine.training.checkpoints import Checkpoints
from engine.training.config import TrainConfig
from engine.training.data import group_by_shape, load_examples, pick_batch
from engine.training.lora_model import (
    add_lora_adapters,
    diffusion_loss,
    load_training_pipeline,
)
from engine.training.results import ProgressFn, TrainOutput, TrainProgress
from engine.training.state import (
    PeftAttributes,
    PipelineState,
    capture,
    capture_peft_attributes,
    move,
    only_adapter,
    remove_adapter,
    restore,
)

log = logging.getLogger(__name__)

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


class LoraTrainer:
    """Trains a LoRA step by step, optionally inside a shared inference pipeline.

    While suspended the shared pipeline computes exactly what it did before `setup`; `finish` and
    `abort` remove the training adapter and leave any other resident adapters as they were.
    """

    def __init__(
        self, config: TrainConfig, pipe: Any | None = None, device: str | None = None
    ) -> None:
        self.config = config
        self.pipe = pipe
        self.shared = pipe is not None
        self.device = device
        self.adapter_name = "train_" + adapter_name_for(config.name)
        self.step = 0
        self.losses: list[float] = []
        self.options: dict[str, Any] = {}
        self._ready = False
        self._closed = False
        self._active = False
        self._saved: PipelineState | None = None
        self._peft_before: list[PeftAttributes] = []

    # ----------------------------------------------------------------- setup
    def setup(self) -> None:
        """Load data and model parts, cache latents/embeddings, add the adapter, resume if possible."""
        if self._ready:
            return
        cfg = self.config
        examples = load_examples(
            cfg.dataset_dir,
            cfg.resolution,
            buckets=cfg.buckets,
            trigger_word=cfg.trigger_word,
            template=cfg.caption_template,
        )
        if self.device is None and self.pipe is not None:
            # _execution_device sees through model-CPU-offload hooks (unet.device would say cpu).
            self.device = str(getattr(self.pipe, "_execution_device", self.pipe.unet.device))
        if self.device is None:
            from engine.optimizations import resolve_device

            self.device = resolve_device(cfg.device)
        self.options = opts = cfg.resolved(self.device)
        self.autocast_dtype = HALF.get(opts["mixed_precision"])
        if self.pipe is None:
            dtype = self.autocast_dtype or torch.float32
            self.pipe = load_training_pipeline(cfg.model, dtype, self.device)
        pipe = self.pipe
        self.unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        self.vae, self.text_encoder, self.tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
        self.modules = [self.unet, self.text_encoder]
        self.base_dtype = self.unet.conv_in.weight.dtype
        from diffusers import DDPMScheduler

        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"model: unsupported prediction type {self.prediction_type!r}")

        for module in (self.unet, self.vae, self.text_encoder):
            for name, param in module.named_parameters():
                if "lora_" not in name:
                    param.requires_grad_(False)
        found = capture(self.modules, self.unet)
        self._peft_before = [capture_peft_attributes(m) for m in self.modules]
        try:
            self.unet_params, self.te_params = add_lora_adapters(
                self.unet, self.text_encoder, cfg, self.adapter_name
            )
            restore(found, self.modules, self.unet, devices=False)
            self._enter(offload=False)
            try:
                self._cache(examples)
            finally:
                self.suspend()
            self._build_optimizer()
            self.checkpoints = Checkpoints(
                cfg, self.unet, self.text_encoder, self.adapter_name, bool(self.te_params)
            )
            files.remove_temp_dirs(cfg.output_dir)
            resumed = self.checkpoints.load_newest(self.optimizer, self.scaler, self.device)
            if resumed is not None:
                self.step, self.losses = resumed
        except BaseException:
            self._detach()
            raise
        self._ready = True
        log.info(
            "training %s: %d images, step %d/%d, device %s, %s",
            cfg.name,
            len(examples),
            self.step,
            cfg.max_steps,
            self.device,
            ", ".join(f"{k}={v}" for k, v in opts.items()),
        )

    @torch.no_grad()
    def _cache(self, examples: list[Any]) -> None:
        opts = self.options
        self.captions = [e.caption for e in examples]
        self.groups = group_by_shape([tuple(e.pixels.shape) for e in examples])
        vae_dtype = next(self.vae.parameters()).dtype
        self.scaling = float(self.vae.config.scaling_factor)
        self.shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        self.pixels = [e.pixels for e in examples]
        self.latent_stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        if opts["cache_latents"]:
            for px in self.pixels:
                dist = self.vae.encode(px[None].to(self.device, vae_dtype)).latent_dist
                self.latent_stats.append((dist.mean.float(), dist.std.float()))
            self.pixels = []
        ids = self.tokenizer(
            self.captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        self.input_ids = ids
        self.embeddings: list[torch.Tensor] = []
        if opts["cache_text_embeddings"]:
            cache: dict[str, torch.Tensor] = {}
            for caption, row in zip(self.captions, ids, strict=True):
                if caption not in cache:
                    cache[caption] = self.text_encoder(row[None].to(self.device))[0]
                self.embeddings.append(cache[caption])

    def _build_optimizer(self) -> None:
        cfg = self.config
        groups = [{"params": self.unet_params, "lr": cfg.lr}]
        if self.te_params:
            groups.append({"params": self.te_params, "lr": cfg.text_encoder_lr or cfg.lr})
        if self.options["use_8bit_adam"]:
            import bitsandbytes as bnb

            self.optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(groups, weight_decay=1e-2)
        else:
            self.optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
        fp16 = self.options["mixed_precision"] == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16 and self.device.startswith("cuda"))

    # ------------------------------------------------------- suspend / resume
    def resume(self) -> None:
        """Make the training adapter the only active one, trainable, in train mode."""
        self._enter(offload=self.options.get("offload_frozen", False))

    def _enter(self, offload: bool) -> None:
        if self._active:
            return
        self._saved = capture(self.modules, self.unet)
        self._vae_device = next(self.vae.parameters()).device
        only_adapter(self.modules, self.adapter_name)
        for module in self.modules:
            for param in module.parameters():
                param.requires_grad_(False)
        for param in self.unet_params + self.te_params:
            param.requires_grad_(True)
        self.unet.train()
        if self.te_params:
            self.text_encoder.train()
        if self.options["gradient_checkpointing"] and not self.unet.is_gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if offload:
            if self.options["cache_latents"]:
                move(self.vae, "cpu")
            if self.options["cache_text_embeddings"]:
                move(self.text_encoder, "cpu")
        self._active = True

    def suspend(self) -> None:
        """Hand the pipeline back for inference: training adapter off, eval mode, parts on device."""
        if not self._active or self._saved is None:
            return
        restore(self._saved, self.modules, self.unet)
        move(self.vae, self._vae_device)
        self._active = False

    # -------------------------------------------------------------- training
    def train_steps(
        self,
        n: int,
        cancel: threading.Event | None = None,
        progress: ProgressFn | None = None,
    ) -> TrainProgress:
        """Run up to `n` optimizer steps (fewer when cancelled or done); leaves the trainer suspended."""
        if not self._ready or self._closed:
            raise RuntimeError("LoraTrainer: call setup() first (and not after finish/abort)")
        cfg = self.config
        started, done_here = time.perf_counter(), 0
        self.resume()
        try:
            for _ in range(n):
                if self.step >= cfg.max_steps or (cancel is not None and cancel.is_set()):
                    break
                self.losses.append(self._train_one_step())
                self.step += 1
                done_here += 1
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.checkpoints.save(self.step, self.losses, self.optimizer, self.scaler)
                if progress is not None:
                    progress(self._progress(started, done_here))
        finally:
            self.suspend()
        return self._progress(started, done_here)

    def _progress(self, started: float, steps: int) -> TrainProgress:
        recent = self.losses[-50:]
        return TrainProgress(
            step=self.step,
            max_steps=self.config.max_steps,
            loss=self.losses[-1] if self.losses else None,
            avg_loss=sum(recent) / len(recent) if recent else None,
            seconds_per_step=(time.perf_counter() - started) / steps if steps else None,
            done=self.step >= self.config.max_steps,
        )

    def _batch(
        self, indices: list[int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (sampled from the cached distribution) and caption embeddings for a batch."""
        if self.latent_stats:
            mean = torch.cat([self.latent_stats[i][0] for i in indices])
            std = torch.cat([self.latent_stats[i][1] for i in indices])
            eps = torch.randn(mean.shape, generator=generator).to(self.device)
            latents = mean + std * eps
        else:
            px = torch.stack([self.pixels[i] for i in indices]).to(self.device)
            with torch.no_grad():
                latents = self.vae.encode(px.to(self.vae.dtype)).latent_dist.sample(generator)
            latents = latents.float()
        latents = (latents - self.shift) * self.scaling
        if self.embeddings:
            hidden = torch.cat([self.embeddings[i] for i in indices])
        else:
            ids = self.input_ids[indices].to(self.device)
            with torch.set_grad_enabled(bool(self.te_params)):
                hidden = self.text_encoder(ids)[0]
        return latents, hidden

    def _loss(
        self, latents: torch.Tensor, hidden: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return diffusion_loss(
            self.unet,
            self.noise_scheduler,
            latents,
            hidden,
            generator,
            device=self.device,
            base_dtype=self.base_dtype,
            autocast_dtype=self.autocast_dtype,
            prediction_type=self.prediction_type,
            min_snr_gamma=self.config.min_snr_gamma,
        )

    def _train_one_step(self) -> float:
        cfg = self.config
        # Every random draw of a step comes from (seed, step): a resumed run repeats it exactly.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        indices = pick_batch(self.groups, cfg.batch_size, gen)
        latents, hidden = self._batch(indices, gen)
        loss = self._loss(latents, hidden, gen)
        self.scaler.scale(loss).backward()
        params = self.unet_params + self.te_params
        if cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def evaluate_loss(self, samples: int = 16, seed: int = 12345) -> float:
        """Mean loss over a fixed set of (image, timestep, noise) draws: comparable across steps."""
        if not self._ready:
            raise RuntimeError("LoraTrainer: call setup() first")
        was_active = self._active
        self._enter(offload=False)
        try:
            self.unet.eval()
            gen = torch.Generator().manual_seed(seed)
            total = 0.0
            for _ in range(samples):
                latents, hidden = self._batch(pick_batch(self.groups, 1, gen), gen)
                total += float(self._loss(latents, hidden, gen))
            return total / samples
        finally:
            if not was_active:
                self.suspend()
            else:
                self.unet.train()

    # ------------------------------------------------------------- finishing
    def finish(self) -> TrainOutput:
        """Write final/ (diffusers file, kohya export, training.json, sample.png) and detach."""
        if not self._ready or self._closed:
            raise RuntimeError("LoraTrainer: call setup() first (and finish only once)")
        self.suspend()
        cfg = self.config
        if self.checkpoints.saved_step != self.step:
            self.checkpoints.save(self.step, self.losses, self.optimizer, self.scaler)
        target = cfg.output_dir / "final"
        kohya_name = f"{cfg.name}.safetensors"
        sample_ok = False
        with files.atomic_dir(target) as tmp:
            self.checkpoints.write_weights(tmp)
            unet, te = self.checkpoints.lora_state()
            meta = {
                "ss_network_module": "networks.lora",
                "ss_network_dim": str(cfg.rank),
                "ss_network_alpha": str(cfg.alpha),
                "ss_base_model_version": "sd_v1",
                "ss_output_name": cfg.name,
                "ss_training_comment": f"trigger word: {cfg.trigger_word}",
                "ss_steps": str(self.step),
            }
            files.export_kohya(tmp / kohya_name, unet, te, float(cfg.alpha or cfg.rank), meta)
            if cfg.sample_steps:
                sample_ok = self._write_sample(tmp / "sample.png")
            weights_sha = files.sha256_file(tmp / files.WEIGHT_NAME)
            info = {
                "name": cfg.name,
                "trigger_word": cfg.trigger_word,
                "base_model": cfg.model,
                "steps": self.step,
                "rank": cfg.rank,
                "alpha": cfg.alpha,
                "prediction_type": self.prediction_type,
                "resolved": self.options,
                "parameters": cfg.to_json(),
                "images": len(self.captions),
                "captions": sorted(set(self.captions)),
                "sha256": weights_sha,
                "loss_curve": self.losses,
            }
            (tmp / "training.json").write_text(json.dumps(info, indent=2))
        self._detach()
        return TrainOutput(
            output_dir=target,
            weights_path=target / files.WEIGHT_NAME,
            kohya_path=target / kohya_name,
            info_path=target / "training.json",
            sample_path=target / "sample.png" if sample_ok else None,
            rank=cfg.rank,
            alpha=float(cfg.alpha or cfg.rank),
            sha256=weights_sha,
            steps=self.step,
            trigger_word=cfg.trigger_word,
            loss_curve=list(self.losses),
        )

    def _write_sample(self, path: Path) -> bool:
        cfg = self.config
        saved = capture(self.modules, self.unet)
        only_adapter(self.modules, self.adapter_name)
        try:
            self.unet.eval()
            self.text_encoder.eval()
            image = self.pipe(
                cfg.sample_text,
                height=cfg.resolution,
                width=cfg.resolution,
                num_inference_steps=cfg.sample_steps,
                guidance_scale=cfg.sample_guidance,
                generator=torch.Generator("cpu").manual_seed(cfg.seed),
            ).images[0]
            image.save(path, format="PNG")
            return True
        except Exception:  # a sample is a nicety; the trained weights must still be written
            log.exception("could not generate the sample image")
            return False
        finally:
            restore(saved, self.modules, self.unet)

    def abort(self) -> None:
        """Stop training: keep the checkpoints written so far and detach from the pipeline."""
        if self._closed:
            return
        if hasattr(self, "modules"):
            self.suspend()
        self._detach()

    def _detach(self) -> None:
        if self._peft_before and hasattr(self, "modules"):
            for module, before in zip(self.modules, self._peft_before, strict=True):
                remove_adapter(module, self.adapter_name, before)
        self.optimizer = None  # type: ignore[assignment]
        self.latent_stats, self.embeddings, self.pixels = [], [], []
        self._closed = True
        if not self.shared:
            self.pipe = None


def train(config: TrainConfig, progress: ProgressFn | None = None) -> TrainOutput:
    """Run a whole training (setup, all steps, final export) and return the output files."""
    trainer = LoraTrainer(config)
    trainer.setup()
    try:
        while not trainer.train_steps(config.checkpoint_every or 100, progress=progress).done:
            pass
        return trainer.finish()
    except BaseException:
        trainer.abort()
        raise
