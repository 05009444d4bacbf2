"""A model folder's recommended LoRA recipe (lora_recipe.json): the training defaults it needs.

A model that is not a local folder, or a folder without the file, has no recipe: the callers
(`python -m engine.train_lora`, `/train`) then keep their own defaults.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError

log = logging.getLogger(__name__)

RECIPE_FILE = "lora_recipe.json"
# The keys a recipe may set; each is a TrainConfig field of the same name.
RECIPE_KEYS = ("lr", "max_steps", "rank", "resolution", "caption_template")


@dataclass(frozen=True)
class TrainingRecipe:
    """The training settings a model recommends (only those its recipe file names)."""

    values: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def get(self, key: str, default: Any = None) -> Any:
        """The recipe's value for a TrainConfig field, or `default` when it sets none."""
        return self.values.get(key, default)


def model_folder(model: str) -> Path | None:
    """The local diffusers folder of a model reference ('demo', a path), or None (hub, file)."""
    from engine.pipeline import resolve_model_source

    try:
        source = resolve_model_source(model)
    except EngineError:
        return None  # the training itself reports a missing model, with the full reason
    return Path(source.location) if source.kind == "folder" else None


def read_recipe(model: str) -> TrainingRecipe:
    """The recipe of a model's folder; no file → an empty recipe; a bad file → ValueError."""
    folder = model_folder(model)
    if folder is None or not (folder / RECIPE_FILE).is_file():
        return TrainingRecipe()
    path = folder / RECIPE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    try:
        values = check_recipe(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    log.info("training recipe of %s: %s", folder.name, values)
    return TrainingRecipe(values, path)


def check_recipe(data: Any) -> dict[str, Any]:
    """The recipe values of a parsed file; ValueError('<key>: ...') for the first bad one."""
    from engine.training.config import check_caption_template, check_values

    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    unknown = sorted(set(data) - set(RECIPE_KEYS) - {"notes"})
    if unknown:
        raise ValueError(
            f"unknown setting {unknown[0]!r} (a recipe may set {', '.join(RECIPE_KEYS)})"
        )
    values = {key: data[key] for key in RECIPE_KEYS if key in data}
    if isinstance(values.get("lr"), int) and not isinstance(values["lr"], bool):
        values["lr"] = float(values["lr"])
    check_values(values)
    if "caption_template" in values:
        check_caption_template(values["caption_template"])
    return values
