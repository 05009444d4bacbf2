"""/admin model, /settings model and per-model LoRA checks, through the fake Discord."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from engine.metadata import parse_parameters
from tests.e2e_harness import answer, running, wait_result
from tests.test_e2e_lora import add_lora, refused
from tests.tiny_sd import save_tiny_pipeline


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny SD 1.x-like models differing in seed, and one with a wider text encoder."""
    root = tmp_path_factory.mktemp("models")
    return {
        "one": save_tiny_pipeline(root / "one", seed=0),
        "two": save_tiny_pipeline(root / "two", seed=7),
        "wide": save_tiny_pipeline(root / "wide", seed=0, cross_attention_dim=48),
    }


def _model_of(result) -> str:
    with Image.open(io.BytesIO(result.files[0].data)) as png:
        return parse_parameters(png.info["parameters"])["Model"]


async def test_admin_model_switches_between_jobs_and_each_png_names_its_model(
    world, models: dict[str, Path], tiny_lora: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_CHOICES", f"two={models['two']},wide={models['wide']}")
    async with running(world, models["one"]) as bot:
        await refused(await world.slash(world.alice, "admin model", {"name": "two"}), "Only")
        await refused(
            await world.slash(world.admin, "admin model", {"name": "nope"}),
            "Unknown model `nope`; choose one of: `one`, `two`, `wide`.",
        )
        # a job queued on each model while the queue is paused; /admin model in between
        await answer(await world.slash(world.admin, "admin pause"))
        first = await world.slash(world.alice, "imagine", {"prompt": "a red castle", "seed": 1})
        await first.wait_callback(30)  # deferred once the job is written with its model
        reply = await answer(await world.slash(world.admin, "admin model", {"name": "two"}))
        assert "The server's default model is now **two**" in reply.data["content"]
        second = await world.slash(world.bob, "imagine", {"prompt": "a red castle", "seed": 1})
        await answer(await world.slash(world.admin, "admin resume"))
        one_result, two_result = await wait_result(first), await wait_result(second)
        assert (_model_of(one_result), _model_of(two_result)) == ("one", "two")
        assert one_result.files[0].data != two_result.files[0].data
        assert bot.generator.model_name == "two"
        rows = await bot.storage.db.fetchall("SELECT user_id, model FROM jobs ORDER BY id")
        assert [(r["user_id"], r["model"]) for r in rows] == [
            (world.alice.id, "one"),
            (world.bob.id, "two"),
        ]

        # LoRAs and embeddings record their architecture and are refused on another one
        await answer(await add_lora(world, world.admin, tiny_lora, "ink"))
        assert (await bot.storage.loras.get_lora("ink")).base_width == 32
        emb = world.tmp / "zzneg.safetensors"
        save_file({"emb_params": torch.randn(1, 32)}, str(emb))
        attachment = world.fake.add_attachment("zzneg.safetensors", emb.read_bytes())
        await answer(
            await world.slash(world.admin, "embedding add", {"file": attachment, "name": "zzneg"})
        )
        await answer(await world.slash(world.admin, "admin model", {"name": "wide"}))
        it = await world.slash(world.alice, "imagine", {"prompt": "a castle <lora:ink:0.5>"})
        await refused(
            it, "The LoRA `ink` was made for two (32-wide text encoder), but this image would "
            "run on `wide` (48-wide text encoder)",
        )  # fmt: skip
        it = await world.slash(world.alice, "imagine", {"prompt": "a castle", "negative": "zzneg"})
        await refused(it, "The embedding `zzneg` was made for two")
        # the user's own model wins over the server's; unknown names are refused
        await refused(
            await world.slash(world.alice, "settings set", {"model": "three"}),
            "Unknown model `three`",
        )
        await answer(await world.slash(world.alice, "settings set", {"model": "ONE"}))
        assert (await bot.storage.users.get_user(world.alice.id)).model == "one"
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a castle <lora:ink:0.5>", "seed": 2}
        )
        assert _model_of(await wait_result(it)) == "one"
        # a channel default sits between the user's choice and the server's
        from cogs._imagine_request import build_request

        await answer(
            await world.slash(world.admin, "admin model", {"name": "two", "scope": "channel"})
        )
        ids = {"guild_id": world.guild.id, "channel_id": world.general.id}
        assert (await build_request(bot, world.bob.id, "x", **ids))["model"] == "two"
        assert (await build_request(bot, world.bob.id, "x", guild_id=world.guild.id))[
            "model"
        ] == "wide"
        assert (await build_request(bot, world.alice.id, "x", **ids))["model"] == "one"
