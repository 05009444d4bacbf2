"""/lora end to end: an admin uploads a LoRA, members switch it on and off, refusals are plain."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from engine.lora import WEIGHT_NAME
from engine.metadata import parse_parameters
from tests.e2e_harness import answer, ephemeral, running, wait_result
from tests.fake_discord import InteractionRecord


async def refused(it: InteractionRecord, expected: str) -> str:
    """Assert the answer is an ephemeral plain message containing ``expected``; return it."""
    event = await answer(it)
    text = event.data.get("content") or ""
    assert ephemeral(event), event.payload
    assert expected in text, text
    assert "Traceback" not in text and not event.data.get("embeds")
    return text


async def image(world, user, prompt: str, seed: int) -> tuple[bytes, dict[str, str], str]:
    """Run /imagine and return the first image's pixels, its parameters and the embed text."""
    it = await world.slash(user, "imagine", {"prompt": prompt, "seed": seed})
    result = await wait_result(it)
    with Image.open(io.BytesIO(result.files[0].data)) as png:
        params = parse_parameters(png.info["parameters"])
        pixels = png.convert("RGB").tobytes()
    return pixels, params, str(result.payload.get("embeds"))


async def add_lora(
    world, user, path: Path, name: str, filename: str = "style.safetensors", **extra
):
    """Send /lora add with the file at ``path`` attached."""
    attachment = world.fake.add_attachment(filename, path.read_bytes())
    return await world.slash(user, "lora add", {"file": attachment, "name": name, **extra})


async def test_uploaded_lora_changes_images_and_off_restores_them(
    world, tiny_model_dir: Path, tiny_lora: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        base, params, _ = await image(world, world.alice, "a red castle", 7)
        assert "Lora" not in str(params)

        it = await add_lora(world, world.admin, tiny_lora, "inkwash", trigger="inkwash style")
        reply = await answer(it)
        assert ephemeral(reply) and "Added the LoRA **inkwash**" in reply.data["content"]
        record = await bot.storage.loras.get_lora("inkwash")
        assert record is not None and record.status == "ready"
        assert record.rank == 4 and record.owner_id == world.admin.id
        assert record.trigger_word == "inkwash style" and record.shared
        assert record.base_model == bot.generator.model_name
        stored = bot.storage.files.lora_path("inkwash") / WEIGHT_NAME
        assert Path(record.path) == stored.parent and stored.read_bytes() == tiny_lora.read_bytes()
        assert record.sha256 == hashlib.sha256(tiny_lora.read_bytes()).hexdigest()

        complete = await world.fake.send_autocomplete(
            world.alice, world.general, "lora use", {"name": "ink"}, focused="name"
        )
        assert [c["value"] for c in await complete.wait_choices()] == ["inkwash"]

        use = await world.slash(world.alice, "lora use", {"name": "inkwash", "scale": 1.0})
        reply = await answer(use)
        assert ephemeral(reply) and "inkwash" in reply.data["content"]
        styled, params, embed = await image(world, world.alice, "a red castle", 7)
        assert styled != base, "the LoRA did not change the image"
        assert "inkwash" in str(params) and "inkwash" in embed
        # Bob did not switch it on: his image with the same seed is the base one.
        bobs, _, _ = await image(world, world.bob, "a red castle", 7)
        assert bobs == base

        off = await world.slash(world.alice, "lora off")
        assert "off" in (await answer(off)).data["content"]
        again, params, _ = await image(world, world.alice, "a red castle", 7)
        assert again == base
        assert (await bot.storage.users.get_user(world.alice.id)).lora_name is None


async def test_lora_add_refusals_register_nothing(
    world, tiny_model_dir: Path, tiny_lora: Path, foreign_lora: Path, tmp_path: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        before, _, _ = await image(world, world.bob, "a calm lake", 3)
        it = await add_lora(world, world.alice, tiny_lora, "mine")
        await refused(it, "Only server admins")

        junk = tmp_path / "junk.safetensors"
        junk.write_bytes(b"this is not a safetensors file at all" * 10)
        await refused(await add_lora(world, world.admin, junk, "junk"), "not a usable LoRA")

        import torch
        from safetensors.torch import save_file

        full = tmp_path / "model.safetensors"
        save_file({"conv_in.weight": torch.zeros(2, 2)}, str(full))
        await refused(await add_lora(world, world.admin, full, "full"), "holds no LoRA weights")

        text = await refused(
            await add_lora(world, world.admin, foreign_lora, "foreign"), "not a LoRA for this"
        )
        assert bot.generator.model_name in text

        await refused(
            await add_lora(world, world.admin, tiny_lora, "style", filename="style.ckpt"),
            "not a .safetensors file",
        )
        text = await refused(await add_lora(world, world.admin, tiny_lora, "my style!"), "Try")
        assert "`my_style_`" in text
        await refused(await add_lora(world, world.admin, tiny_lora, "../up"), "cannot be used")

        bot.bot_settings.max_attachment_mb = 0.001
        await refused(await add_lora(world, world.admin, tiny_lora, "big"), "the limit is")
        bot.bot_settings.max_attachment_mb = 10

        assert await bot.storage.loras.list_loras() == []
        lora_root = bot.storage.files.lora_dir
        assert not lora_root.exists() or list(lora_root.iterdir()) == []

        # After all that, a good upload works, and its name cannot be taken twice.
        await answer(await add_lora(world, world.admin, tiny_lora, "good"))
        await refused(await add_lora(world, world.admin, tiny_lora, "GOOD"), "already exists")
        assert [lora.name for lora in await bot.storage.loras.list_loras()] == ["good"]
        # The trial loads left the pipeline as it was: Bob's image is the same as before.
        after, _, _ = await image(world, world.bob, "a calm lake", 3)
        assert after == before


async def test_kohya_lora_list_info_and_delete(
    world, tiny_model_dir: Path, tiny_kohya_lora: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        reply = await answer(await add_lora(world, world.admin, tiny_kohya_lora, "kohya-style"))
        assert "Added" in reply.data["content"], reply.payload
        folder = bot.storage.files.lora_path("kohya-style")
        assert (folder / WEIGHT_NAME).is_file()

        listing = await answer(await world.slash(world.alice, "lora list"))
        embed = str(listing.data["embeds"])
        assert ephemeral(listing) and "kohya-style" in embed and "rank 4" in embed
        assert f"<@{world.admin.id}>" in embed and "shared" in embed

        info = await answer(await world.slash(world.alice, "lora info", {"name": "kohya-style"}))
        assert "Rank" in str(info.data["embeds"]) and ephemeral(info)

        await refused(await world.slash(world.alice, "lora info", {"name": "nope"}), "no LoRA")
        await refused(await world.slash(world.alice, "lora use", {"name": "nope"}), "no LoRA")
        await refused(
            await world.slash(world.alice, "lora delete", {"name": "kohya-style"}),
            "Only the owner",
        )
        assert folder.is_dir()

        use = await answer(await world.slash(world.alice, "lora use", {"name": "kohya-style"}))
        assert "kohya-style" in use.data["content"]
        _, params, _ = await image(world, world.alice, "a tower", 11)
        assert "kohya-style" in str(params)

        deleted = await answer(
            await world.slash(world.admin, "lora delete", {"name": "kohya-style"})
        )
        assert "Deleted" in deleted.data["content"] and ephemeral(deleted)
        assert await bot.storage.loras.get_lora("kohya-style") is None
        assert not folder.exists()
        assert (await bot.storage.users.get_user(world.alice.id)).lora_name is None
        complete = await world.fake.send_autocomplete(
            world.alice, world.general, "lora use", {"name": ""}, focused="name"
        )
        assert await complete.wait_choices() == []


def test_remove_lora_files_takes_a_trained_lora_folder_whole(tmp_path: Path) -> None:
    from cogs.lora import remove_lora_files

    root = tmp_path / "loras"
    final = root / "castle" / "final"
    final.mkdir(parents=True)
    (final / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (root / "castle" / "checkpoint-10").mkdir()
    assert remove_lora_files(root, str(final)) is True
    assert not (root / "castle").exists()
    # A cancelled training's LoRA is its newest checkpoint: the whole folder goes too.
    kept = root / "stopped" / "checkpoint-8"
    kept.mkdir(parents=True)
    (root / "stopped" / "checkpoint-4").mkdir()
    assert remove_lora_files(root, str(kept)) is True
    assert not (root / "stopped").exists()
    outside = tmp_path / "elsewhere" / "final"
    outside.mkdir(parents=True)
    assert remove_lora_files(root, str(outside)) is False and outside.exists()
