"""Delete means delete: out of /history, not reopened, its buttons refused, its files removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e_harness import answer, ephemeral, running, text_of, wait_result

DELETED = "That image was deleted."


async def test_a_deleted_image_leaves_history_and_its_buttons_refuse(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir) as bot:
        results = {}
        for prompt in ("a kept castle", "a doomed castle", "a forgotten castle"):
            it = await world.slash(world.alice, "imagine", {"prompt": prompt})
            results[prompt] = await wait_result(it)
        doomed = await bot.storage.generations.get_generation_by_job(2)
        assert doomed is not None and all(Path(p).is_file() for p in doomed.image_paths)

        # An older /history page, and job 2 opened from it, both shown before the delete.
        page = await world.slash(world.alice, "history")
        shown = await page.wait_callback()
        old_page = shown.message if shown.message is not None else page.original
        assert old_page is not None and "sdh:open:2" in str(shown.data["components"])
        opened = await world.fake.send_component(world.alice, old_page, "sdh:open:2")
        copy = await opened.wait_callback()
        assert copy.message is not None and "sd:up:2:0" in str(copy.data["components"])

        # Delete on the channel message: the message goes, and so do the files.
        public = results["a doomed castle"].message
        assert public is not None
        delete = await world.fake.send_component(world.alice, public, "sd:del:2")
        said = await delete.wait_followup()
        assert ephemeral(said) and "gone from `/history`" in text_of(said)
        assert public.deleted
        assert not any(Path(p).exists() for p in doomed.image_paths)
        record = await bot.storage.generations.get_generation_by_job(2)
        assert record is not None and record.deleted_at is not None  # kept for the totals
        assert (await bot.storage.generations.stats()).images == 3

        # /history no longer lists it.
        page = await world.slash(world.alice, "history")
        listed = await page.wait_callback()
        text = str(listed.data["embeds"])
        assert "a kept castle" in text and "a forgotten castle" in text
        assert "a doomed castle" not in text and "sdh:open:2" not in str(listed.data["components"])

        # Reopening it from the older page, and the buttons of the copy opened before: refused.
        again = await world.fake.send_component(world.alice, old_page, "sdh:open:2")
        refused = await answer(again)
        assert ephemeral(refused) and DELETED in text_of(refused)
        for custom_id in ("sd:up:2:0", "sd:vary:2:0", "sd:reroll:2", "sd:seed:2"):
            click = await world.fake.send_component(world.alice, copy.message, custom_id)
            refused = await answer(click)
            assert ephemeral(refused) and DELETED in text_of(refused), custom_id
        assert await bot.storage.get_job(4) is None  # nothing was queued

        # Delete from /history: the private copy is dismissed and the channel message removed.
        page = await world.slash(world.alice, "history")
        listed = await page.wait_callback()
        listing = listed.message if listed.message is not None else page.original
        opened = await world.fake.send_component(world.alice, listing, "sdh:open:3")
        copy = await opened.wait_callback()
        assert copy.message is not None
        dismiss = await world.fake.send_component(world.alice, copy.message, "sd:del:3")
        await dismiss.wait_kind("delete_original")
        forgotten = results["a forgotten castle"]
        assert forgotten.message is not None
        for _ in range(100):
            if forgotten.message.deleted:
                break
            await asyncio.sleep(0.05)
        assert copy.message.deleted and forgotten.message.deleted
        record = await bot.storage.generations.get_generation_by_job(3)
        assert record is not None and record.deleted_at is not None
        assert not any(Path(p).exists() for p in record.image_paths)
        kept = await bot.storage.generations.get_generation_by_job(1)
        assert kept is not None and kept.deleted_at is None
        assert all(Path(p).is_file() for p in kept.image_paths)
