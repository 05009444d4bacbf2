"""A full disk under the LoRA folder while /train runs (its checkpoints and final LoRA).

The training fails in words naming the disk, with no traceback and no "unexpected error"; the
half-written checkpoint is not left behind and the LoRA is never registered as ready. torch and
safetensors report a full disk as RuntimeError / SafetensorError, not as an OSError.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from tests.e2e_harness import running
from tests.test_e2e_disk_full import fill, log_problems, small_disk
from tests.test_e2e_train import train_options, wait_train_message


async def test_training_on_a_full_lora_disk_fails_in_words(
    world, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with small_disk(world.tmp / "loras", mb=1) as disk:
        storage = {"lora_dir": disk}
        async with running(world, tiny_model_dir, storage=storage) as bot:
            fill(disk)  # the outputs and the database have room: /train is accepted
            it = await world.slash(world.admin, "train", train_options(world, "full", steps=4))
            assert "queued" in ((await it.wait_followup(timeout=30)).content or "")
            ended = await wait_train_message(world, "full", "failed", timeout=60)
            text = ended.payload["content"]
            print(text)
            assert f"The disk holding {disk}" in text and "is full" in text, text
            assert "went wrong" not in text
            lora = await bot.storage.loras.get_lora("full")
            assert lora is None or lora.status != "ready"
            leftovers = (
                [p.name for p in (disk / "full").glob("*")] if (disk / "full").exists() else []
            )
            assert not [name for name in leftovers if name.startswith(".tmp-")], leftovers
    assert log_problems(caplog) == []


def test_a_checkpoint_whose_data_did_not_reach_the_disk_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems report a full disk only at fsync; the folder must not become final."""
    from engine.training import files

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(OSError) as raised, files.atomic_dir(tmp_path / "final") as tmp:
        (tmp / files.WEIGHT_NAME).write_bytes(b"weights")
    assert raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
