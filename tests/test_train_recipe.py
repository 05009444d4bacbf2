"""Per-model training recipes (lora_recipe.json) and /train's choice of settings and captions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cogs._checks import UserFacingError
from cogs._train_setup import (
    MAX_LR,
    alt_caption,
    caption_lines,
    choose_settings,
)
from engine.prepare_dataset import DEFAULT_TEMPLATE
from engine.train_lora import build_parser, config_from_args
from engine.train_lora import main as cli_main
from engine.training.recipe import RECIPE_FILE, TrainingRecipe, read_recipe


def model_folder(tmp_path: Path, recipe: object | None = None) -> Path:
    """A folder that passes for a diffusers model, with an optional recipe file (raw if str)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    if recipe is not None:
        text = recipe if isinstance(recipe, str) else json.dumps(recipe)
        (folder / RECIPE_FILE).write_text(text)
    return folder


def cli_config(folder: Path | str, *flags: str):
    """The TrainConfig the command line builds for this model and flags."""
    args = build_parser().parse_args(
        ["--dataset_dir", "d", "--output_dir", "o", "--model", str(folder), *flags]
    )
    return config_from_args(args)


def test_no_recipe_keeps_todays_defaults(tmp_path: Path) -> None:
    for model in (model_folder(tmp_path), "runwayml/stable-diffusion-v1-5"):
        assert read_recipe(str(model)).values == {}
        config = cli_config(model)
        assert (config.lr, config.max_steps, config.rank, config.resolution) == (
            1e-4,
            1000,
            4,
            512,
        )
        assert config.caption_template == DEFAULT_TEMPLATE


def test_demo_model_ships_the_model_card_recipe() -> None:
    recipe = read_recipe("demo")
    assert recipe.values["lr"] == 2e-3 and recipe.values["rank"] == 8
    assert recipe.values["max_steps"] == 1000 and recipe.values["resolution"] == 64
    assert "{trigger}" in recipe.values["caption_template"]
    config = cli_config("demo")
    assert (config.lr, config.rank, config.max_steps, config.resolution) == (2e-3, 8, 1000, 64)


def test_cli_flags_override_the_recipe(tmp_path: Path) -> None:
    recipe = {"lr": 2e-3, "max_steps": 700, "rank": 8, "resolution": 64}
    folder = model_folder(tmp_path, {**recipe, "caption_template": "a {trigger} thing"})
    config = cli_config(folder)
    assert (config.lr, config.max_steps, config.rank, config.resolution) == (2e-3, 700, 8, 64)
    assert config.sample_text == "a sks thing"
    config = cli_config(
        folder,
        *("--lr", "5e-4", "--max_steps", "30", "--rank", "2", "--resolution", "128"),
        *("--caption_template", "art by {trigger}"),
    )
    assert (config.lr, config.max_steps, config.rank, config.resolution) == (5e-4, 30, 2, 128)
    assert config.caption_template == "art by {trigger}"


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"lr": "fast"}, "lr: must be a number"),
        ({"lr": 5.0}, "lr: must be a number between"),
        ({"rank": 0}, "rank: must be an integer between 1 and 128"),
        ({"max_steps": 2.5}, "max_steps: must be an integer"),
        ({"resolution": 100}, "resolution: must be a multiple of 8"),
        ({"caption_template": "a photo"}, "caption_template: must contain {trigger}"),
        ({"learning_rate": 1e-3}, "unknown setting 'learning_rate'"),
        ([1, 2], "must be a JSON object"),
        ("{not json", "not readable JSON"),
    ],
)
def test_a_bad_recipe_is_a_clear_error(tmp_path: Path, recipe: object, message: str) -> None:
    folder = model_folder(tmp_path, recipe)
    with pytest.raises(ValueError, match=message) as info:
        read_recipe(str(folder))
    assert RECIPE_FILE in str(info.value)


def test_cli_reports_a_bad_recipe_in_one_line(tmp_path: Path, capsys) -> None:
    folder = model_folder(tmp_path, {"rank": 500})
    argv = ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]
    assert cli_main([*argv, "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and RECIPE_FILE in err and "rank" in err
    assert "\n" not in err


def choose(recipe: dict[str, object] | None = None, **options: object):
    """choose_settings with the bot's stock limits and no options unless given."""
    given = {"steps": None, "rank": None, "learning_rate": None, "caption": None, **options}
    return choose_settings(
        TrainingRecipe(dict(recipe or {})),
        default_steps=500,
        max_steps=3000,
        max_rank=32,
        default_resolution=512,
        **given,  # type: ignore[arg-type]
    )


def test_train_settings_come_from_options_then_recipe_then_bot() -> None:
    plain = choose()
    assert (plain.max_steps, plain.rank, plain.lr, plain.resolution) == (500, 4, 1e-4, 512)
    assert plain.caption_template == DEFAULT_TEMPLATE
    recipe = read_recipe("demo").values
    demo = choose(recipe)
    assert (demo.max_steps, demo.rank, demo.lr, demo.resolution) == (1000, 8, 2e-3, 64)
    mine = choose(recipe, steps=20, rank=2, learning_rate=5e-4, caption="  {trigger}   art ")
    assert (mine.max_steps, mine.rank, mine.lr) == (20, 2, 5e-4)
    assert mine.caption_template == "{trigger} art"
    capped = choose({"max_steps": 9000, "rank": 64})
    assert (capped.max_steps, capped.rank) == (3000, 32)


@pytest.mark.parametrize("lr", [0.5, MAX_LR * 1.01, 1e-9, 0.0, -1e-4])
def test_out_of_range_learning_rate_is_refused(lr: float) -> None:
    with pytest.raises(UserFacingError, match=r"learning rate must be between 1e-06 and 0\.01"):
        choose(read_recipe("demo").values, learning_rate=lr)


def test_caption_template_needs_the_trigger_placeholder() -> None:
    with pytest.raises(UserFacingError, match=r"caption must contain `\{trigger\}`"):
        choose(caption="a photo of my cat")


def test_alt_text_becomes_the_caption_with_the_trigger_word() -> None:
    def attachment(description: str | None) -> SimpleNamespace:
        return SimpleNamespace(description=description)

    described = attachment("a large  zwx circle\nin the center")
    assert alt_caption(described, "zwx") == "a large zwx circle in the center"
    assert alt_caption(described, "ZWX") == "a large zwx circle in the center"
    assert alt_caption(attachment("a pink circle"), "zwx") == "zwx, a pink circle"
    assert alt_caption(attachment("zwxy circle"), "zwx") == "zwx, zwxy circle"
    assert alt_caption(attachment(None), "zwx") is None
    assert alt_caption(attachment("   "), "zwx") is None


def test_caption_list_fits_its_budget() -> None:
    captions = [f"caption {i} " + "x" * 300 for i in range(10)]
    text = caption_lines(captions, 500)
    assert len(text) <= 500 and text.endswith("more") and text.count("• `") >= 3
    short = caption_lines(["a", "b"], 500)
    assert short == "• `a`\n• `b`"
