"""/train's settings: the model's recipe under the admin's options, the job's settings, captions."""

from __future__ import annotations

import re
from dataclasses import dataclass

import discord

from cogs._checks import UserFacingError
from cogs._ui import clip
from engine.prepare_dataset import DEFAULT_TEMPLATE
from engine.training.config import TrainConfig
from engine.training.recipe import TrainingRecipe
from scheduling.jobs import TrainSpec

DEFAULT_RANK = 4
DEFAULT_LR = 1e-4
# Learning rates an admin may set on /train: SD v1.5 LoRAs train at 1e-4..1e-3, the demo model
# at 2e-3; far above 1e-2 the weights blow up, far below 1e-6 nothing is learned.
MIN_LR = 1e-6
MAX_LR = 1e-2
MAX_CAPTION_CHARS = 1024  # Discord's limit for an attachment's description (alt text)
SHOWN_CAPTION_CHARS = 90
MAX_CONTENT = 2000  # Discord's limit for a message's content
PROOF_SEED = 0  # the seed of the before/after images


@dataclass(frozen=True)
class TrainChoices:
    """The settings of one /train run, after the recipe, the options and the host's limits."""

    max_steps: int
    rank: int
    lr: float
    resolution: int
    caption_template: str


def choose_settings(
    recipe: TrainingRecipe,
    *,
    steps: int | None,
    rank: int | None,
    learning_rate: float | None,
    caption: str | None,
    default_steps: int,
    max_steps: int,
    max_rank: int,
    default_resolution: int,
) -> TrainChoices:
    """Options given beat the model's recipe, which beats the bot's defaults; bad → refusal."""
    chosen_steps = (
        steps if steps is not None else min(recipe.get("max_steps", default_steps), max_steps)
    )
    if not 1 <= chosen_steps <= max_steps:
        raise UserFacingError(f"Steps must be between 1 and {max_steps} (got {chosen_steps}).")
    chosen_rank = rank if rank is not None else min(recipe.get("rank", DEFAULT_RANK), max_rank)
    if not 1 <= chosen_rank <= max_rank:
        raise UserFacingError(f"Rank must be between 1 and {max_rank} (got {chosen_rank}).")
    lr = learning_rate if learning_rate is not None else recipe.get("lr", DEFAULT_LR)
    if learning_rate is not None and not MIN_LR <= learning_rate <= MAX_LR:
        raise UserFacingError(
            f"The learning rate must be between {MIN_LR:g} and {MAX_LR:g} "
            f"(got {learning_rate:g}); leave it out to use this model's default ({lr_default(recipe):g})."
        )
    template = (
        check_template(caption)
        if caption is not None
        else recipe.get("caption_template", DEFAULT_TEMPLATE)
    )
    return TrainChoices(
        max_steps=chosen_steps,
        rank=chosen_rank,
        lr=float(lr),
        resolution=int(recipe.get("resolution", default_resolution)),
        caption_template=template,
    )


def lr_default(recipe: TrainingRecipe) -> float:
    """The learning rate /train uses when none is given."""
    return float(recipe.get("lr", DEFAULT_LR))


def check_template(text: str) -> str:
    """An admin's caption template: one line holding {trigger}; else a refusal saying why."""
    template = " ".join(text.split())
    if "{trigger}" not in template:
        raise UserFacingError(
            "The caption must contain `{trigger}` where the trigger word goes, for example "
            "`a photo of {trigger}`; it is the caption of every image without alt text."
        )
    return template


def has_word(text: str, word: str) -> bool:
    """Whether `word` appears in `text` as a whole word (any case)."""
    pattern = rf"(?<![\w-]){re.escape(word)}(?![\w-])"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def alt_caption(attachment: discord.Attachment, trigger_word: str) -> str | None:
    """An attachment's alt text as its caption, with the trigger word put first if missing."""
    text = " ".join((attachment.description or "").split())[:MAX_CAPTION_CHARS]
    if not text:
        return None
    return text if has_word(text, trigger_word) else f"{trigger_word}, {text}"


def caption_lines(captions: list[str], budget: int) -> str:
    """The captions as bullet lines, each shortened, all within `budget` characters."""
    lines: list[str] = []
    used = 0
    for index, caption in enumerate(captions):
        shown = clip(caption.replace("`", "'"), SHOWN_CAPTION_CHARS)
        line = f"• `{shown}`"
        reserve = 0 if index == len(captions) - 1 else len("• … and 99 more") + 1
        if used + len(line) + 1 + reserve > budget:
            lines.append(f"• … and {len(captions) - index} more")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def train_spec(config: TrainConfig) -> TrainSpec:
    """The job's training spec (the base model comes from the engine when it runs)."""
    return TrainSpec(
        name=config.name,
        dataset_dir=str(config.dataset_dir),
        output_dir=str(config.output_dir),
        trigger_word=config.trigger_word,
        max_steps=config.max_steps,
        rank=config.rank,
        lr=config.lr,
        resolution=config.resolution,
        caption_template=config.caption_template,
        sample_prompt=config.sample_prompt,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
        sample_steps=config.sample_steps,
    )


def proof_seed(spec: TrainSpec) -> int:
    """The seed of the before/after picture: the training's own seed."""
    return PROOF_SEED if spec.seed is None else spec.seed
