"""Refusals in the user's words over the wire: option names as /imagine shows them, privately,
before anything is queued; LoRA problems name the user's file or LoRA; nothing raw after queueing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e_harness import answer, ephemeral, running
from tests.test_e2e_lora import add_lora, refused

INTERNAL = ("num_inference_steps", "guidance_scale", "num_images", "scheduler", "GEN_", "Error")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"steps": 0}, "`steps`: must be between 1 and 150 (got 0)."),
        ({"cfg": 99.0}, "`cfg`: must be between 0 and 30 (got 99.0)."),
        ({"count": 0}, "`count`: must be between 1 and 8 (got 0)."),
        ({"sampler": "foo"}, "`sampler`: unknown sampler 'foo'; choose one of: DPM++ 2M Karras"),
        ({"negative": "a AND b"}, "`negative`: `AND` (mixing two prompts"),
        (
            {"draft": True},
            "`draft`: drafts are not available on this bot now (their LoRA is not on this "
            "machine); leave draft off.",
        ),
    ],
)
async def test_imagine_refusals_name_the_option_and_queue_nothing(
    world, tiny_model_dir: Path, options: dict, expected: str
) -> None:
    # A hub id that is in no cache, with the hub switched off (HF_HUB_OFFLINE in conftest).
    async with running(
        world, tiny_model_dir, generation={"draft_lora": "nobody/missing-lcm-lora"}
    ) as bot:
        it = await world.slash(world.alice, "imagine", {"prompt": "a cat", **options})
        text = await refused(it, expected)
        assert not any(word in text for word in INTERNAL), text
        assert await bot.storage.jobs_for_user(world.alice.id) == []


async def test_too_many_lora_tags_say_so_without_the_setting(
    world, tiny_model_dir: Path, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    async with running(world, tiny_model_dir, generation={"max_loras": 1}) as bot:
        for name, path in (("ink", tiny_lora), ("oil", tiny_lora_b)):
            await bot.storage.loras.add_lora(name, path=str(path.parent), owner_id=world.admin.id)
        it = await world.slash(world.alice, "imagine", {"prompt": "a cat <lora:ink> <lora:oil>"})
        text = await refused(it, "`prompt`: at most 1 LoRA in one prompt (got 2: ink, oil).")
        assert "GEN_MAX_LORAS" not in text
        assert await bot.storage.jobs_for_user(world.alice.id) == []


async def test_lora_upload_refusals_name_the_uploaded_file(
    world, tiny_model_dir: Path, foreign_lora: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    full = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(full))
    async with running(world, tiny_model_dir) as bot:
        text = await refused(
            await add_lora(world, world.admin, full, "full", filename="my_model.safetensors"),
            "`my_model.safetensors` is not a usable LoRA: it holds no LoRA weights",
        )
        assert "pytorch_lora_weights" not in text
        text = await refused(
            await add_lora(world, world.admin, foreign_lora, "other", filename="sdxl.safetensors"),
            f"`sdxl.safetensors` is not a LoRA for this bot's base model "
            f"(`{bot.generator.model_name}`): this LoRA "
            "does not fit the loaded model (it was made for another base model).",
        )
        assert "state_dict" not in text and "check_" not in text
        assert await bot.storage.loras.list_loras() == []


async def failure_text(it) -> str:
    """The ❌ edit of a job that failed after it was queued."""
    event = await it.wait_for(
        lambda e: e.kind == "edit_original" and "❌" in str(e.payload.get("content")), timeout=90
    )
    return event.payload["content"]


async def test_a_job_whose_lora_does_not_fit_names_the_lora(
    world, tiny_model_dir: Path, foreign_lora: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        # Registered without a recorded base model, so only the load itself can tell.
        await bot.storage.loras.add_lora("wide", path=str(foreign_lora.parent))
        assert ephemeral(await answer(await world.slash(world.alice, "lora use", {"name": "wide"})))
        text = await failure_text(await world.slash(world.alice, "imagine", {"prompt": "a cat"}))
        assert (
            "LoRA `wide` does not fit the loaded model (it was made for another base model)" in text
        )
        assert "pytorch_lora_weights" not in text and "state_dict" not in text


async def test_an_unexpected_error_after_queueing_is_told_plainly(
    world, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(world, tiny_model_dir) as bot:

        def broken(*args, **kwargs):
            raise ValueError("tensor shape (4, 48) vs (4, 32) in attn2.to_k")

        monkeypatch.setattr(bot.generator, "run", broken)
        text = await failure_text(await world.slash(world.alice, "imagine", {"prompt": "a cat"}))
        assert "Something went wrong while making this image; the error was logged." in text
        assert "tensor" not in text and "ValueError" not in text
