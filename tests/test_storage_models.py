"""Migration 0004: the model of a job, a user's model, and the width a LoRA was made for."""

from __future__ import annotations

from pathlib import Path

from engine.requests import GenerationRequest
from scheduling.jobs import NewJob, TrainSpec
from storage import Storage, StorageSettings


async def test_jobs_users_and_loras_record_their_model(tmp_path: Path) -> None:
    settings = StorageSettings(_env_file=None, db_path=tmp_path / "bot.sqlite3")
    storage = await Storage.open(settings=settings)
    try:
        job = await storage.create_job(
            NewJob(user_id=1, work=GenerationRequest("x", model="small"))
        )
        train = await storage.create_job(NewJob(user_id=1, work=TrainSpec("style")))
        rows = await storage.db.fetchall("SELECT id, model FROM jobs ORDER BY id")
        assert [(r["id"], r["model"]) for r in rows] == [(job.id, "small"), (train.id, None)]
        profile = await storage.users.update_defaults(1, model="small")
        assert profile.model == "small" and profile.defaults() == {"model": "small"}
        assert (await storage.users.reset_defaults(1)).model is None
        lora = await storage.loras.add_lora("ink", path="p", base_model="small", base_width=768)
        assert lora.base_width == 768
        assert (await storage.loras.add_lora("old", path="q")).base_width is None
    finally:
        await storage.close()
