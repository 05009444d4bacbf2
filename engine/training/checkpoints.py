"""Checkpoints of a LoRA training run: atomic writes, and resuming from the newest one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from engine.training import files
from engine.training.lora_model import lora_state_dicts

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoint part of LoraTrainer (mixed in; uses its models, optimizer and config)."""

    def lora_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The trained weights as peft state dicts (UNet, text encoder or None)."""
        return lora_state_dicts(
            self.unet, self.text_encoder, self.adapter_name, bool(self.te_params)
        )

    def _write_weights(self, folder: Path) -> Path:
        unet, te = self.lora_state()
        te_config = self.text_encoder.peft_config[self.adapter_name].to_dict() if te else None
        return files.save_lora_file(
            folder, unet, te, self.unet.peft_config[self.adapter_name].to_dict(), te_config
        )

    def _state_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "step": self.step,
            "losses": self.losses,
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "train_text_encoder": cfg.train_text_encoder,
            "seed": cfg.seed,
            "model": cfg.model,
        }

    def save_checkpoint(self) -> Path:
        """Write output_dir/checkpoint-<step>/ atomically (weights, optimizer state, loss curve)."""
        cfg = self.config
        target = cfg.output_dir / f"checkpoint-{self.step}"
        with files.atomic_dir(target) as tmp:
            self._write_weights(tmp)
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()},
                tmp / files.OPTIMIZER_NAME,
            )
            # Written last: its presence (with the right step) marks a checkpoint complete.
            (tmp / files.STATE_NAME).write_text(json.dumps(self._state_json()))
        self._checkpointed_step = self.step
        if cfg.keep_checkpoints:
            for _, old in files.list_checkpoints(cfg.output_dir)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", target)
        return target

    def _load_newest_checkpoint(self) -> None:
        from peft.utils import set_peft_model_state_dict

        found = files.list_checkpoints(self.config.output_dir)
        if not found:
            return
        step, folder = found[-1]
        state = json.loads((folder / files.STATE_NAME).read_text())
        cfg = self.config
        mismatch = [
            f"{key} {state.get(key)!r}"
            for key, mine in (
                ("rank", cfg.rank),
                ("alpha", cfg.alpha),
                ("train_text_encoder", cfg.train_text_encoder),
            )
            if state.get(key) != mine
        ]
        if mismatch:
            raise ValueError(
                f"output_dir: {folder} is from a different run ({', '.join(mismatch)}); "
                "use a new output_dir or delete the old checkpoints"
            )
        unet_sd, te_sd = files.read_lora_file(folder / files.WEIGHT_NAME)
        for module, sd in ((self.unet, unet_sd), (self.text_encoder, te_sd)):
            if not sd:
                continue
            result = set_peft_model_state_dict(module, sd, adapter_name=self.adapter_name)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"output_dir: {folder} does not match this model")
        opt = torch.load(folder / files.OPTIMIZER_NAME, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scaler.load_state_dict(opt["scaler"])
        self.step = step
        self.losses = [float(x) for x in state.get("losses", [])][:step]
        self._checkpointed_step = step
        log.info("resuming %s from %s (step %d)", cfg.name, folder, step)
