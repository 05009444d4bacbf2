"""Train a LoRA for the base model on a prepared folder of images.

Usage: python -m engine.train_lora --dataset_dir data/train --output_dir models/lora/NAME \
    [--model PATH_OR_ID] [--trigger_word sks] [--max_steps 1000 --rank 4 --lr 1e-4] [...]

--max_steps, --rank, --lr, --resolution and --caption_template default to the model folder's
recipe (lora_recipe.json, e.g. models/demo) when it has one, else to the values shown in --help.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.training.config import TrainConfig, default_model_id
from engine.training.recipe import read_recipe
from engine.training.results import TrainOutput, TrainProgress
from engine.training.trainer import LoraTrainer, train

log = logging.getLogger(__name__)

__all__ = ["LoraTrainer", "TrainConfig", "TrainOutput", "TrainProgress", "main", "train"]


def _auto_bool(text: str) -> bool | str:
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false or auto (got {text!r})")


RECIPE = " (a model folder's lora_recipe.json sets its own)"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (names as in the diffusers training scripts)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset_dir", type=Path, required=True, help="prepared images + captions")
    p.add_argument("--output_dir", type=Path, required=True, help="e.g. models/lora/NAME")
    p.add_argument("--model", default=None, help="base model (default: MODEL_ID setting)")
    p.add_argument("--name", default="", help="LoRA name (default: output folder name)")
    p.add_argument("--trigger_word", default="sks")
    p.add_argument(
        "--caption_template", default=None, help="caption without sidecar, with {trigger}" + RECIPE
    )
    p.add_argument("--max_steps", type=int, default=None, help="default: 1000" + RECIPE)
    p.add_argument("--rank", type=int, default=None, help="default: 4" + RECIPE)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-4" + RECIPE)
    p.add_argument("--text_encoder_lr", type=float, default=None)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--resolution", type=int, default=None, help="default: 512" + RECIPE)
    p.add_argument("--buckets", action="store_true", help="aspect-ratio buckets, no square crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every", type=int, default=250, help="0: only the final weights")
    p.add_argument("--keep_checkpoints", type=int, default=0, help="0: keep all")
    p.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--train_text_encoder", action="store_true")
    p.add_argument("--min_snr_gamma", type=float, default=0.0, help="0: off; 5 is usual")
    p.add_argument("--gradient_checkpointing", type=_auto_bool, default="auto")
    p.add_argument("--cache_latents", type=_auto_bool, default="auto")
    p.add_argument("--cache_text_embeddings", type=_auto_bool, default="auto")
    p.add_argument("--offload_frozen", type=_auto_bool, default="auto")
    p.add_argument("--use_8bit_adam", type=_auto_bool, default="auto")
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--device", default="auto")
    p.add_argument("--sample_prompt", default="")
    p.add_argument("--sample_steps", type=int, default=25, help="0: no sample image")
    p.add_argument("--sample_guidance", type=float, default=7.5)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed arguments over the model's recipe (ValueError names a problem)."""
    given: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "verbose" and v is not None
    }
    recipe = read_recipe(given.get("model") or default_model_id())
    return TrainConfig(**{**recipe.values, **given})


def main(argv: list[str] | None = None) -> int:
    """Command line: exit 0 when done, 2 with one line on bad input, 1 on a training failure."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
        if not config.dataset_dir.is_dir():
            raise ValueError(f"dataset_dir: not a folder: {config.dataset_dir}")
        every = max(1, config.max_steps // 20)

        def report(p: TrainProgress) -> None:
            if p.step % every == 0 or p.done:
                print(f"step {p.step}/{p.max_steps} loss {p.avg_loss:.4f}", flush=True)

        output = train(config, progress=report)
    except (ValueError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {output.weights_path} (sha256 {output.sha256[:12]})")
    print(f"kohya/A1111 export: {output.kohya_path}")
    if output.sample_path:
        print(f"sample: {output.sample_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
