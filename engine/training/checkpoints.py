"""Checkpoints of a LoRA training run: atomic writes, and resuming from the newest one."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from engine.training import files
from engine.training.config import TrainConfig
from engine.training.lora_model import lora_state_dicts

log = logging.getLogger(__name__)


class Checkpoints:
    """The trained adapter's weights on disk: checkpoint-<step>/ folders under output_dir."""

    def __init__(
        self, config: TrainConfig, unet: Any, text_encoder: Any, adapter_name: str, train_te: bool
    ) -> None:
        self.config = config
        self.unet = unet
        self.text_encoder = text_encoder
        self.adapter_name = adapter_name
        self.train_te = train_te  # whether the text encoder carries trained LoRA weights too
        self.saved_step = -1  # the step of the newest complete checkpoint (-1: none yet)

    def lora_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The trained weights as peft state dicts (UNet, text encoder or None)."""
        return lora_state_dicts(self.unet, self.text_encoder, self.adapter_name, self.train_te)

    def write_weights(self, folder: Path) -> Path:
        """Write the trained weights as a diffusers LoRA file into `folder`; return its path."""
        unet, te = self.lora_state()
        te_config = self.text_encoder.peft_config[self.adapter_name].to_dict() if te else None
        return files.save_lora_file(
            folder, unet, te, self.unet.peft_config[self.adapter_name].to_dict(), te_config
        )

    def _state_json(self, step: int, losses: list[float]) -> dict[str, Any]:
        cfg = self.config
        return {
            "step": step,
            "losses": losses,
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "train_text_encoder": cfg.train_text_encoder,
            "seed": cfg.seed,
            "model": cfg.model,
        }

    def save(self, step: int, losses: list[float], optimizer: Any, scaler: Any) -> Path:
        """Write output_dir/checkpoint-<step>/ atomically (weights, optimizer state, loss curve)."""
        cfg = self.config
        target = cfg.output_dir / f"checkpoint-{step}"
        with files.atomic_dir(target) as tmp:
            self.write_weights(tmp)
            torch.save(
                {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()},
                tmp / files.OPTIMIZER_NAME,
            )
            # Written last: its presence (with the right step) marks a checkpoint complete.
            (tmp / files.STATE_NAME).write_text(json.dumps(self._state_json(step, losses)))
        self.saved_step = step
        if cfg.keep_checkpoints:
            for _, old in files.list_checkpoints(cfg.output_dir)[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved %s", target)
        return target

    def load_newest(
        self, optimizer: Any, scaler: Any, device: str
    ) -> tuple[int, list[float]] | None:
        """Load the newest checkpoint into the adapter, optimizer and scaler; (step, losses).

        None when there is none; ValueError when it is from a different run or model.
        """
        from peft.utils import set_peft_model_state_dict

        found = files.list_checkpoints(self.config.output_dir)
        if not found:
            return None
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
        opt = torch.load(folder / files.OPTIMIZER_NAME, map_location=device, weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scaler.load_state_dict(opt["scaler"])
        self.saved_step = step
        log.info("resuming %s from %s (step %d)", cfg.name, folder, step)
        return step, [float(x) for x in state.get("losses", [])][:step]
