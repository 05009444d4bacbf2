"""Embedding records on a real SQLite file: add, look up, list, names unique, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import AlreadyExistsError, Storage, StorageSettings, UnsafePathError


async def test_embeddings_survive_a_restart(tmp_path: Path) -> None:
    settings = StorageSettings(
        db_path=tmp_path / "bot.sqlite3",
        outputs_dir=tmp_path / "out",
        lora_dir=tmp_path / "lora",
        embedding_dir=tmp_path / "emb",
    )
    async with await Storage.open(settings=settings) as storage:
        path = storage.files.embedding_path("easyneg")
        assert path == tmp_path / "emb" / "easyneg.safetensors"
        with pytest.raises(UnsafePathError):
            storage.files.embedding_path("../x")
        added = await storage.embeddings.add(
            "easyneg", path=str(path), vectors=2, width=768, owner_id=7, base_model="demo"
        )
        assert added.vectors == 2 and added.owner_id == 7
        with pytest.raises(AlreadyExistsError):
            await storage.embeddings.add("EasyNeg", path="x", vectors=1, width=768)
        with pytest.raises(ValueError, match="may only use"):
            await storage.embeddings.add("bad name", path="x", vectors=1, width=768)
        await storage.embeddings.add("bad-hands", path="y", vectors=1, width=768)
    async with await Storage.open(settings=settings) as storage:
        assert [e.name for e in await storage.embeddings.list()] == ["bad-hands", "easyneg"]
        assert (await storage.embeddings.get("EASYNEG")).width == 768
        assert await storage.embeddings.delete("bad-hands")
        assert await storage.embeddings.get("bad-hands") is None
