"""/train end to end over the wire: validation, training between /imagine jobs, cancel, restart."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from engine.lora import resolve_lora_file
from scheduling.events import Finished, JobEvent, Progress, Started
from tests.e2e_harness import World, running, wait_result
from tests.fake_discord import RecordedEvent

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPHEMERAL = 64
SLOW = 300  # generous: the suite may run on a loaded 2-core machine


class EngineLog:
    """Every job event of the executor, in the order it was emitted."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def __call__(self, event: JobEvent) -> None:
        self.events.append(event)

    def index(self, kind: type[JobEvent], job_id: int, **where: Any) -> int:
        """Position of the first event of this type for this job (with matching fields)."""
        for i, event in enumerate(self.events):
            same = isinstance(event, kind) and event.job.id == job_id
            if same and all(getattr(event, k) == v for k, v in where.items()):
                return i
        raise AssertionError(f"no {kind.__name__} for job {job_id} in {self.summary()}")

    def summary(self) -> list[str]:
        """Short names of the events, for failure messages."""
        return [f"{type(e).__name__}({e.job.kind} {e.job.id})" for e in self.events]

    async def wait_step(self, job_id: int, step: int, timeout: float = SLOW) -> None:
        """Wait until a Progress event of the job reached `step`."""

        async def poll() -> None:
            while not any(
                isinstance(e, Progress) and e.job.id == job_id and e.step >= step
                for e in self.events
            ):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(poll(), timeout)


def png_bytes(seed: int, size: int = 96) -> bytes:
    """A distinct noisy RGB PNG (distinct seeds never collide as duplicates)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def images(world: World, count: int, seed: int = 0) -> dict[str, Any]:
    """Attachment options image1..imageN holding real PNGs."""
    return {
        f"image{i + 1}": world.fake.add_attachment(
            f"photo {i}.png", png_bytes(seed + i), "image/png"
        )
        for i in range(count)
    }


def train_options(
    world: World, name: str, count: int = 4, seed: int = 0, **extra: Any
) -> dict[str, Any]:
    """Options of a /train command with `count` images."""
    return {"name": name, "trigger": "zxq", **images(world, count, seed), **extra}


def is_ephemeral(callback: RecordedEvent) -> bool:
    """Whether an interaction callback carries the ephemeral flag."""
    return bool(int(callback.data.get("flags") or 0) & EPHEMERAL)


async def refusal(it) -> str:
    """The text of an ephemeral refusal (a direct reply, or a followup after a deferral)."""
    callback = await it.wait_callback(timeout=30)
    assert is_ephemeral(callback), callback.payload
    if callback.type == 4:
        return callback.content or ""
    assert callback.type == 5
    return (await it.wait_followup(timeout=SLOW)).content or ""


def train_message_events(world: World, name: str) -> list[RecordedEvent]:
    """Create/edit events of the channel message that reports the training of `name`."""
    first = next(
        e
        for e in world.fake.events.events
        if e.kind == "channel_message" and f"`{name}`" in (e.payload.get("content") or "")
    )
    assert first.message is not None
    return [
        e
        for e in world.fake.events.events
        if e.kind in ("channel_message", "edit_channel_message")
        and e.message is not None
        and e.message.id == first.message.id
    ]


async def wait_train_message(
    world: World, name: str, text: str, timeout: float = SLOW
) -> RecordedEvent:
    """The first training message (create or edit) about `name` whose content holds `text`."""

    def match(e: RecordedEvent) -> bool:
        content = e.payload.get("content") or ""
        return (
            e.kind in ("channel_message", "edit_channel_message")
            and f"`{name}`" in content
            and text in content
        )

    return await world.fake.events.wait_for(match, timeout)


async def wait_images(record, timeout: float = SLOW) -> RecordedEvent:
    """The edit of an /imagine reply that carries the finished images."""
    return await wait_result(record, timeout)


async def test_bad_input_is_refused_before_anything_is_queued(world, tiny_model_dir: Path) -> None:
    async with running(world, tiny_model_dir, max_attachment_mb=0.1) as bot:
        await bot.storage.loras.add_lora("taken", path=str(world.tmp / "elsewhere"), status="ready")
        admin = world.admin

        text = await refusal(await world.slash(world.alice, "train", train_options(world, "mine")))
        assert "Only server admins" in text

        text = await refusal(
            await world.slash(admin, "train", train_options(world, "few", count=3))
        )
        assert "at least 4" in text

        options = train_options(world, "fake", count=3)
        options["image4"] = world.fake.add_attachment(
            "notes.png", b"just some text\n" * 20, "image/png"
        )
        text = await refusal(await world.slash(admin, "train", options))
        assert "at least 4" in text and "notes.png" in text and "not an image" in text

        options = train_options(world, "typed", count=3)
        options["image4"] = world.fake.add_attachment("notes.txt", b"text", "text/plain")
        text = await refusal(await world.slash(admin, "train", options))
        assert "3 of the 4 files attached are usable images" in text
        assert "notes.txt" in text and "not a PNG" in text

        # Six files: a .txt, refused by its type, and five pictures of which four are copies.
        options = train_options(world, "copies", count=1)
        for i in range(2, 6):
            options[f"image{i}"] = world.fake.add_attachment(
                f"copy {i}.png", png_bytes(0), "image/png"
            )
        options["image6"] = world.fake.add_attachment("notes.txt", b"text", "text/plain")
        text = await refusal(await world.slash(admin, "train", options))
        assert "only 1 of the 6 files attached could be used" in text, text
        assert "notes.txt" in text and text.count("duplicate of") == 4

        options = train_options(world, "huge", count=3)
        options["image4"] = world.fake.add_attachment("huge.png", png_bytes(9, 256), "image/png")
        text = await refusal(await world.slash(admin, "train", options))
        assert "huge.png" in text and "over 0.1 MB" in text

        text = await refusal(
            await world.slash(
                admin, "train", {**train_options(world, "spaced"), "trigger": "two words"}
            )
        )
        assert "trigger word" in text and "one word" in text
        text = await refusal(
            await world.slash(
                admin, "train", {**train_options(world, "marked"), "trigger": "<@123>"}
            )
        )
        assert "trigger word" in text

        text = await refusal(await world.slash(admin, "train", train_options(world, "Taken")))
        assert "already exists" in text and "`Taken`" in text
        stray = world.tmp / "loras" / "stray"
        stray.mkdir(parents=True)
        (stray / "mine.safetensors").write_bytes(b"not ours")
        text = await refusal(await world.slash(admin, "train", train_options(world, "stray")))
        assert "still on disk" in text
        assert (stray / "mine.safetensors").read_bytes() == b"not ours"

        text = await refusal(await world.slash(admin, "train", train_options(world, "bad name!")))
        assert "cannot be used" in text

        text = await refusal(
            await world.slash(admin, "train", train_options(world, "long", steps=5000))
        )
        assert "Steps must be between 1 and 3000" in text
        text = await refusal(
            await world.slash(admin, "train", train_options(world, "big", rank=64))
        )
        assert "Rank must be between 1 and 32" in text
        text = await refusal(
            await world.slash(admin, "train", train_options(world, "hot", learning_rate=0.5))
        )
        assert "learning rate must be between 1e-06 and 0.01" in text and "got 0.5" in text
        text = await refusal(
            await world.slash(admin, "train", train_options(world, "cap", caption="a photo"))
        )
        assert "caption must contain `{trigger}`" in text

        # Nothing was queued or registered, and no uploaded file was left behind.
        assert await bot.storage.jobs_for_user(admin.id) == []
        assert len(bot.executor.queue) == 0
        assert [lora.name for lora in await bot.storage.loras.list_loras()] == ["taken"]
        train_dir = world.tmp / "train"
        assert not train_dir.exists() or list(train_dir.iterdir()) == []


async def test_training_runs_between_imagines_and_registers_the_lora(
    world, tiny_model_dir: Path
) -> None:
    async with running(world, tiny_model_dir, queue={"train_slice_steps": 2}) as bot:
        bot.get_cog("Train").edit_interval = 0  # every progress event becomes an edit
        log = EngineLog()
        bot.executor.subscribe(log)
        # Hold the queue while everything is submitted, so the order does not depend on speed.
        bot.executor.pause()
        options = train_options(
            world, "castle-style", count=5, steps=8, rank=4, caption="{trigger} castle art"
        )
        options["image2"].description = "a zxq castle at dusk"  # alt text: that image's caption
        options["image3"].description = "a tower at noon"  # the trigger word is put first
        # Enough good images: a bad extra one is left out with its reason, not a refusal.
        options["image6"] = world.fake.add_attachment("notes.png", b"plain text", "image/png")
        first = await world.slash(world.admin, "train", options)
        callback = await first.wait_callback(timeout=30)
        assert callback.type == 5 and is_ephemeral(callback)
        queued = (await first.wait_followup(timeout=SLOW)).content or ""
        assert "queued" in queued and "5 images" in queued
        assert "Left out" in queued and "notes.png" in queued and "not an image" in queued
        assert "learning rate 0.0001" in queued  # no recipe in the tiny model: the bot's default
        captions = queued.split("Captions:\n")[1].splitlines()
        assert captions == [
            "• `zxq castle art`",
            "• `a zxq castle at dusk`",
            "• `zxq, a tower at noon`",
            "• `zxq castle art`",
            "• `zxq castle art`",
        ], queued
        second = await world.slash(
            world.admin,
            "train",
            {**train_options(world, "second", seed=20), "trigger": "qqz", "steps": 4},
        )
        assert "queued" in ((await second.wait_followup(timeout=SLOW)).content or "")
        row = await bot.storage.loras.get_lora("castle-style")
        assert row is not None and row.status == "training"
        imagines = [
            await world.slash(user, "imagine", {"prompt": f"a castle {i}", "seed": i})
            for i, user in enumerate((world.alice, world.bob))
        ]
        await wait_train_message(world, "second", "position")  # the second training waits
        bot.executor.resume()

        final = await wait_train_message(world, "castle-style", "is ready")
        await wait_train_message(world, "second", "is ready")
        results = [await wait_images(it) for it in imagines]

        # The /imagine jobs ran between training slices: after the first slice, before the end.
        train_id, second_id = 1, 2
        first_slice = log.index(Progress, train_id, step=2)
        trained = log.index(Finished, train_id)
        for job_id in (3, 4):
            assert first_slice < log.index(Finished, job_id) < trained, log.summary()
        assert all(result.at < final.at for result in results)
        # One training at a time: the second starts only after the first finished.
        assert log.index(Started, second_id) > trained, log.summary()

        # The final message: the first caption without and with the LoRA, side by side.
        content = final.payload.get("content") or ""
        assert "/lora use castle-style" in content
        assert "without the LoRA" in content and "`zxq castle art`, seed 0" in content
        assert final.files and final.files[0].data[:8] == PNG_MAGIC
        with Image.open(io.BytesIO(final.files[0].data)) as sample:
            assert sample.size == (64 + 4 + 64, 64 + 14)
        contents = [
            e.payload.get("content") or "" for e in train_message_events(world, "castle-style")
        ]
        assert any("step" in c and "loss" in c for c in contents), contents
        assert not any("sd:cancel" in str(e.payload.get("components")) for e in [final])

        result = log.events[trained].result_data
        lora = await bot.storage.loras.get_lora("castle-style")
        assert lora is not None and lora.status == "ready"
        assert lora.sha256 == result["sha256"] and len(lora.sha256 or "") == 64
        assert (lora.rank, lora.owner_id, lora.trigger_word) == (4, world.admin.id, "zxq")
        assert lora.base_model
        assert resolve_lora_file(lora.path) == Path(result["weights_path"])
        info = json.loads(Path(result["info_path"]).read_text())
        assert info["steps"] == 8 and info["images"] == 5 and info["sha256"] == lora.sha256
        other = await bot.storage.loras.get_lora("second")
        assert other is not None and other.status == "ready" and other.trigger_word == "qqz"

        # The hint works: the new LoRA can be switched on and used right away.
        use = await world.slash(world.alice, "lora use", {"name": "castle-style"})
        assert "castle-style" in ((await use.wait_callback(timeout=30)).content or "")
        styled = await world.slash(world.alice, "imagine", {"prompt": "zxq castle", "seed": 7})
        styled_result = await wait_images(styled)
        assert "castle-style" in str(styled_result.payload["embeds"][0])


async def test_a_cancel_after_a_checkpoint_leaves_a_usable_lora(
    world, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(world, tiny_model_dir, queue={"train_slice_steps": 2}) as bot:
        # The extension's module (load_extension imports it afresh): checkpoints every 4 steps.
        module = sys.modules[type(bot.get_cog("Train")).__module__]
        monkeypatch.setattr(module, "checkpoint_interval", lambda steps: 4)
        bot.get_cog("Train").edit_interval = 0
        log = EngineLog()
        bot.executor.subscribe(log)
        it = await world.slash(world.admin, "train", train_options(world, "stopme", steps=400))
        await it.wait_followup(timeout=SLOW)
        await log.wait_step(1, 8)  # checkpoints at steps 4 and 8 are written
        status = await wait_train_message(world, "stopme", "step")
        assert status.message is not None
        click = await world.fake.send_component(world.admin, status.message, "sd:cancel:1")
        assert (await click.wait_callback(timeout=30)).type == 4
        final = await wait_train_message(world, "stopme", "cancelled after step")
        job = await bot.storage.get_job(1)
        assert job is not None and job.status == "cancelled"
        assert not bot.executor.snapshot().running
        folder = world.tmp / "loras" / "stopme"
        steps = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")]
        newest = max(steps)
        assert newest >= 8 and not (folder / "final").exists()
        content = final.payload.get("content") or ""
        assert f"usable from its checkpoint at step {newest} (of 400)" in content, content
        assert "/lora use stopme" in content
        # The newest checkpoint is the LoRA: ready, and its weights are what gets loaded.
        lora = await bot.storage.loras.get_lora("stopme")
        assert lora is not None and lora.status == "ready"
        weights = resolve_lora_file(lora.path)
        assert weights == folder / f"checkpoint-{newest}" / "pytorch_lora_weights.safetensors"
        assert lora.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()

        use = await world.slash(world.alice, "lora use", {"name": "stopme"})
        said = (await use.wait_callback(timeout=30)).content or ""
        assert "stopme" in said and "not ready" not in said, said
        styled = await world.slash(world.alice, "imagine", {"prompt": "zxq castle", "seed": 7})
        assert "stopme" in str((await wait_images(styled)).payload["embeds"][0])

        # /lora delete takes the whole training folder, checkpoints and all.
        gone = await world.slash(world.admin, "lora delete", {"name": "stopme"})
        assert "Deleted" in ((await gone.wait_followup(timeout=30)).content or "")
        assert not folder.exists()


async def test_a_cancel_before_any_checkpoint_frees_the_name(
    world, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(world, tiny_model_dir, queue={"train_slice_steps": 2}) as bot:
        module = sys.modules[type(bot.get_cog("Train")).__module__]
        monkeypatch.setattr(module, "checkpoint_interval", lambda steps: 1000)
        bot.get_cog("Train").edit_interval = 0
        log = EngineLog()
        bot.executor.subscribe(log)
        it = await world.slash(world.admin, "train", train_options(world, "stopme", steps=400))
        await it.wait_followup(timeout=SLOW)
        await log.wait_step(1, 2)
        status = await wait_train_message(world, "stopme", "step")
        assert status.message is not None
        click = await world.fake.send_component(world.admin, status.message, "sd:cancel:1")
        assert (await click.wait_callback(timeout=30)).type == 4
        final = await wait_train_message(world, "stopme", "cancelled after step")
        content = final.payload.get("content") or ""
        assert "No checkpoint was saved" in content and "free to train again" in content
        assert await bot.storage.loras.get_lora("stopme") is None
        folder = world.tmp / "loras" / "stopme"
        assert not folder.exists()

        # The same name trains again at once, from scratch.
        again = await world.slash(world.admin, "train", train_options(world, "stopme", steps=3))
        assert "queued" in ((await again.wait_followup(timeout=SLOW)).content or "")
        await wait_train_message(world, "stopme", "is ready")
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["checkpoint-3", "final"]
        assert (folder / "before-after.png").is_file()  # kept for a retried delivery
        lora = await bot.storage.loras.get_lora("stopme")
        assert lora is not None and lora.status == "ready"


async def test_restart_resumes_training_from_the_newest_checkpoint(
    world, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine.training")
    output = world.tmp / "loras" / "phoenix"
    async with running(world, tiny_model_dir, queue={"train_slice_steps": 2}) as bot:
        log = EngineLog()
        bot.executor.subscribe(log)
        it = await world.slash(world.admin, "train", train_options(world, "phoenix", steps=40))
        await it.wait_followup(timeout=SLOW)
        await log.wait_step(1, 10)  # checkpoint-10 is written (every max(10, 40 // 4) steps)
        first_message = train_message_events(world, "phoenix")[0].message
    # The bot is closed: the job waits for the next start, the LoRA is still in training.
    assert (output / "checkpoint-10").is_dir()
    assert not (output / "final").exists()

    async with running(world, tiny_model_dir, queue={"train_slice_steps": 2}) as bot:
        job = await bot.storage.get_job(1)
        assert job is not None and job.status in ("queued", "running")
        final = await wait_train_message(world, "phoenix", "is ready")
        lora = await bot.storage.loras.get_lora("phoenix")
        assert lora is not None and lora.status == "ready" and lora.sha256
        # The same channel message was edited across the restart.
        assert final.message is not None and first_message is not None
        assert final.message.id == first_message.id
    resumed = [r.getMessage() for r in caplog.records if "resuming phoenix" in r.getMessage()]
    assert resumed, "the training did not resume from a checkpoint"
    info = json.loads((output / "final" / "training.json").read_text())
    assert info["steps"] == 40 and len(info["loss_curve"]) == 40


def test_a_deleted_loras_folder_with_its_proof_picture_is_a_leftover(tmp_path: Path) -> None:
    from cogs.train import PROOF_NAME, is_training_leftover

    (tmp_path / "final").mkdir()
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / PROOF_NAME).write_bytes(b"png")
    assert is_training_leftover(tmp_path)
    (tmp_path / "notes.txt").write_text("someone else's file")
    assert not is_training_leftover(tmp_path)
