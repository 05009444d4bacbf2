"""/imagine with inline <lora:name:w> tags and weights, and /embedding add/list, through the fake Discord."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.e2e_harness import answer, ephemeral, running
from tests.test_e2e_lora import add_lora, image, refused


async def test_inline_loras_are_resolved_before_queueing_and_stacked(
    world, tiny_model_dir: Path, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        for path, name in ((tiny_lora, "ink"), (tiny_lora_b, "detail")):
            assert (
                "Added the LoRA"
                in (await answer(await add_lora(world, world.admin, path, name))).data["content"]
            )
        base, _, _ = await image(world, world.alice, "a red castle", 7)
        prompt = "a (red:1.2) castle <lora:ink:0.7> <lora:detail>"
        styled, params, _ = await image(world, world.alice, prompt, 7)
        assert styled != base
        assert params["prompt"] == prompt  # as written, tags and brackets included
        assert params["LoRAs"] == "ink:0.7, detail:1"
        job = (await bot.storage.jobs_for_user(world.alice.id, limit=1))[0]
        entries = job.request.loras
        ink = await bot.storage.loras.get_lora("ink")
        assert entries[0] == [ink.path, 0.7, "ink"] and entries[1][1:] == [1.0, "detail"]
        assert bot.generator.lora.active == (("ink", 0.7), ("detail", 1.0))

        it = await world.slash(world.alice, "imagine", {"prompt": "a castle <lora:nope:0.5>"})
        await refused(it, "There is no LoRA named `nope`")
        it = await world.slash(world.alice, "imagine", {"prompt": "a castle <lora:ink:5>"})
        await refused(it, "between -2 and 2")
        it = await world.slash(world.alice, "imagine", {"prompt": "a (castle:9)"})
        await refused(it, "between 0 and 3")


async def test_embedding_add_list_use_and_restart(world, tiny_model_dir: Path) -> None:
    good = world.tmp / "zzneg.safetensors"
    save_file({"emb_params": torch.randn(2, 32)}, str(good))
    wide = world.tmp / "wide.safetensors"
    save_file({"emb_params": torch.randn(1, 768)}, str(wide))

    async def add(user, path: Path, name: str, filename: str = "emb.safetensors"):
        attachment = world.fake.add_attachment(filename, path.read_bytes())
        return await world.slash(user, "embedding add", {"file": attachment, "name": name})

    async with running(world, tiny_model_dir) as bot:
        await refused(await add(world.alice, good, "zzneg"), "Only server admins")
        await refused(await add(world.admin, good, "zzneg", "x.pt"), "only .safetensors")
        await refused(
            await add(world.admin, good, "Bad Name"), "Embedding name 'Bad Name' may only"
        )
        await refused(await add(world.admin, wide, "wideone"), "768 wide but this model")
        assert not bot.storage.files.embedding_path("wideone").exists()
        reply = await answer(await add(world.admin, good, "zzneg"))
        assert (
            ephemeral(reply)
            and "Added the embedding **zzneg** (2 vectors)" in reply.data["content"]
        )
        assert bot.storage.files.embedding_path("zzneg").read_bytes() == good.read_bytes()
        listed = await answer(await world.slash(world.bob, "embedding list"))
        assert "`zzneg`: 2 vectors" in listed.data["content"]
        it = await world.slash(
            world.alice, "imagine", {"prompt": "a red castle", "negative": "zzneg", "seed": 1}
        )
        from tests.e2e_harness import wait_result

        assert (await wait_result(it)).files
    async with running(world, tiny_model_dir) as bot:
        assert "zzneg" in bot.generator.adapters.embeddings.loaded  # loaded again at start-up
        assert "zzneg_1" in bot.generator.pipe.tokenizer.get_vocab()
        delete = "embedding delete"
        await refused(
            await world.slash(world.alice, delete, {"name": "zzneg"}), "Only server admins"
        )
        await refused(
            await world.slash(world.admin, delete, {"name": "nope"}), "No embedding named"
        )
        reply = await answer(await world.slash(world.admin, delete, {"name": "zzneg"}))
        assert ephemeral(reply) and "Deleted the embedding `zzneg`" in reply.data["content"]
        assert not bot.storage.files.embedding_path("zzneg").exists()
        assert "zzneg_1" not in bot.generator.pipe.tokenizer.get_vocab()
        listed = await answer(await world.slash(world.bob, "embedding list"))
        assert "No embeddings yet" in listed.data["content"]
    async with running(world, tiny_model_dir) as bot:
        assert "zzneg" not in bot.generator.adapters.embeddings.loaded
