"""Storage repositories on a real SQLite file: users, LoRAs, jobs, generations, moderation, kv."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.requests import GenerationRequest
from scheduling.jobs import JobStore, NewJob, TrainSpec
from storage import AlreadyExistsError, NotFoundError, Storage, StorageSettings


def _settings(tmp_path: Path) -> StorageSettings:
    return StorageSettings(
        _env_file=None,
        db_path=tmp_path / "bot.sqlite3",
        outputs_dir=tmp_path / "outputs",
        lora_dir=tmp_path / "lora",
    )


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await Storage.open(settings=_settings(tmp_path))
    yield opened
    await opened.close()


# --- users -----------------------------------------------------------------------------


async def test_new_user_has_global_defaults(storage: Storage) -> None:
    profile = await storage.users.get_or_create_user(1)
    assert profile.user_id == 1
    assert profile.defaults() == {}
    assert (profile.fixed_seed, profile.lora_name, profile.banned) == (None, None, False)
    assert await storage.users.get_user(2) is None


async def test_user_defaults_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with await Storage.open(settings=settings) as storage:
        await storage.users.update_defaults(
            9, steps=25, cfg=6.5, width=512, height=768, sampler="euler_a", negative_prompt="blurry"
        )
        changed = await storage.users.update_defaults(9, steps=None, sampler=" ddim ")
        assert changed.steps is None and changed.sampler == "ddim"
    async with await Storage.open(settings=settings) as storage:
        profile = await storage.users.get_or_create_user(9)
    assert profile.defaults() == {
        "cfg": 6.5,
        "width": 512,
        "height": 768,
        "sampler": "ddim",
        "negative_prompt": "blurry",
    }
    assert profile.updated_at >= profile.created_at > 0


async def test_update_defaults_validates_names_and_values(storage: Storage) -> None:
    with pytest.raises(ValueError, match=r"unknown default field.*colour.*allowed: steps"):
        await storage.users.update_defaults(1, colour="red")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        await storage.users.update_defaults(1, steps=0)
    with pytest.raises(ValueError, match="positive integer"):
        await storage.users.update_defaults(1, width=True)
    with pytest.raises(ValueError, match="cfg must be a finite number"):
        await storage.users.update_defaults(1, cfg=float("nan"))
    with pytest.raises(ValueError, match="sampler must not be empty"):
        await storage.users.update_defaults(1, sampler="  ")
    assert await storage.users.get_user(1) is None, "a rejected update writes nothing"


async def test_reset_defaults_keeps_seed_and_ban(storage: Storage) -> None:
    await storage.users.update_defaults(3, steps=40, negative_prompt="ugly")
    await storage.users.set_fixed_seed(3, 1234)
    await storage.users.set_banned(3, True)
    profile = await storage.users.reset_defaults(3)
    assert profile.defaults() == {}
    assert profile.fixed_seed == 1234 and profile.banned


async def test_fixed_seed_set_clear_and_last_seed(storage: Storage) -> None:
    assert (await storage.users.set_fixed_seed(4, 2**32 + 5)).fixed_seed == 2**32 + 5
    assert (await storage.users.clear_fixed_seed(4)).fixed_seed is None
    assert (await storage.users.set_last_seed(4, 77)).last_seed == 77
    for bad in (-1, 2**63, 1.5, "12"):
        with pytest.raises(ValueError, match="seed must be an integer"):
            await storage.users.set_fixed_seed(4, bad)  # type: ignore[arg-type]


async def test_ban_and_unban(storage: Storage) -> None:
    await storage.users.set_banned(10)
    await storage.users.set_banned(11)
    await storage.users.set_banned(10, False)
    assert await storage.users.banned_user_ids() == [11]
    assert not (await storage.users.get_or_create_user(10)).banned


async def test_active_lora_must_exist_and_is_cleared_when_deleted(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="no LoRA named 'ghost'"):
        await storage.users.set_active_lora(1, "ghost", 0.8)
    await storage.loras.add_lora("Ink", path="models/lora/Ink")
    profile = await storage.users.set_active_lora(1, "ink", 0.8)
    assert (profile.lora_name, profile.lora_scale) == ("Ink", 0.8)
    assert await storage.loras.delete_lora("INK")
    profile = await storage.users.get_or_create_user(1)
    assert (profile.lora_name, profile.lora_scale) == (None, None)
    await storage.loras.add_lora("Ink", path="p")
    await storage.users.set_active_lora(1, "Ink")
    assert (await storage.users.clear_active_lora(1)).lora_name is None


# --- LoRAs -----------------------------------------------------------------------------


async def test_lora_add_get_and_unique_name(storage: Storage) -> None:
    added = await storage.loras.add_lora(
        "pixel-art",
        path="models/lora/pixel-art",
        owner_id=5,
        trigger_word="pxl",
        rank=4,
        base_model="sd15",
        status="training",
        shared=False,
    )
    assert added.id > 0 and added.status == "training" and not added.shared
    assert await storage.loras.get_lora("PIXEL-ART") == added
    with pytest.raises(AlreadyExistsError, match="'pixel-art' already exists"):
        await storage.loras.add_lora("Pixel-Art", path="elsewhere")
    assert len(await storage.loras.list_loras()) == 1


@pytest.mark.parametrize("name", ["../evil", "has space", ".hidden", "CON", "", "x" * 65])
async def test_lora_name_must_be_a_safe_folder_name(storage: Storage, name: str) -> None:
    with pytest.raises(ValueError):
        await storage.loras.add_lora(name, path="p")
    assert await storage.loras.list_loras() == []


async def test_lora_visibility_status_and_delete(storage: Storage) -> None:
    await storage.loras.add_lora("shared1", path="a", owner_id=1)
    await storage.loras.add_lora("mine", path="b", owner_id=2, shared=False)
    await storage.loras.add_lora("theirs", path="c", owner_id=3, shared=False)
    await storage.loras.add_lora("baking", path="d", owner_id=2, status="training")
    visible = [lora.name for lora in await storage.loras.list_loras(visible_to=2)]
    assert visible == ["baking", "mine", "shared1"]
    assert [lora.name for lora in await storage.loras.list_loras()] == [
        "baking", "mine", "shared1", "theirs"
    ]  # fmt: skip
    ready = await storage.loras.list_loras(visible_to=2, status="ready")
    assert [lora.name for lora in ready] == ["mine", "shared1"]
    updated = await storage.loras.set_lora_status("baking", "ready", sha256="ab" * 32)
    assert updated.status == "ready" and updated.sha256 == "ab" * 32
    assert (await storage.loras.set_lora_shared("theirs", True)).shared
    with pytest.raises(NotFoundError):
        await storage.loras.set_lora_status("nope", "failed")
    with pytest.raises(ValueError, match="status must be one of"):
        await storage.loras.set_lora_status("mine", "done")  # type: ignore[arg-type]
    assert await storage.loras.delete_lora("mine") is True
    assert await storage.loras.delete_lora("mine") is False
    assert await storage.loras.get_lora("mine") is None


async def test_lora_names_for_autocomplete(storage: Storage) -> None:
    for i in range(30):
        await storage.loras.add_lora(f"style{i:02d}", path=f"p{i}")
    await storage.loras.add_lora("a_b", path="q")
    await storage.loras.add_lora("axb", path="r")
    await storage.loras.add_lora("private", path="s", owner_id=1, shared=False)
    await storage.loras.add_lora("pending", path="t", status="training")
    names = await storage.loras.lora_names("STYLE")
    assert len(names) == 25 and names[0] == "style00"
    assert await storage.loras.lora_names("style2", limit=3) == ["style20", "style21", "style22"]
    assert await storage.loras.lora_names("a_") == ["a_b"], "'_' is literal, not a wildcard"
    assert await storage.loras.lora_names("p", visible_to=2) == []
    assert await storage.loras.lora_names("p", visible_to=1) == ["private"]
    assert await storage.loras.lora_names("p", status=None) == ["pending", "private"]


# --- jobs ------------------------------------------------------------------------------


def test_storage_implements_job_store_protocol_exactly() -> None:
    methods = sorted(
        name
        for name, value in vars(JobStore).items()
        if inspect.isfunction(value) and not name.startswith("_")
    )
    assert methods == [
        "create_job",
        "mark_delivered",
        "set_job_status",
        "undelivered_jobs",
        "unfinished_jobs",
        "update_job_reference",
    ]
    for name in methods:
        expected = inspect.signature(getattr(JobStore, name))
        assert inspect.signature(getattr(Storage, name)) == expected, name
        assert inspect.iscoroutinefunction(getattr(Storage, name)), name


async def test_job_lifecycle(storage: Storage) -> None:
    castle = GenerationRequest("a castle", num_inference_steps=20)
    new = NewJob(
        user_id=7,
        work=castle,
        guild_id=100,
        channel_id=200,
        reference={"token": "abc"},
        priority=2,
    )
    job = await storage.create_job(new)
    assert job.id > 0 and job.status == "queued" and job.attempts == 0
    assert (job.guild_id, job.channel_id, job.priority) == (100, 200, 2)
    await storage.set_job_status(job.id, "running")
    running = await storage.get_job(job.id)
    assert running is not None and (running.status, running.attempts) == ("running", 1)
    created, started, finished = await storage.jobs.get_job_times(job.id)
    assert started is not None and started >= created and finished is None
    await storage.update_job_reference(job.id, {"token": "abc", "message_id": 55})
    await storage.set_job_status(job.id, "done", result={"images": ["a.png"]})
    done = await storage.get_job(job.id)
    assert done is not None and done.status == "done" and done.attempts == 1
    assert done.reference == {"token": "abc", "message_id": 55}
    assert done.work == castle and done.work is not castle
    assert await storage.jobs.get_job_result(job.id) == {"images": ["a.png"]}
    assert (await storage.jobs.get_job_times(job.id))[2] is not None
    assert await storage.unfinished_jobs() == []


async def test_failed_job_keeps_error_and_retry_counts_attempts(storage: Storage) -> None:
    job = await storage.create_job(NewJob(user_id=1, work=TrainSpec("castle-style", "data", "out")))
    await storage.set_job_status(job.id, "running")
    await storage.set_job_status(job.id, "queued")
    await storage.set_job_status(job.id, "running")
    await storage.set_job_status(job.id, "failed", error="CUDA out of memory")
    failed = await storage.get_job(job.id)
    assert failed is not None
    assert (failed.status, failed.attempts, failed.error) == ("failed", 2, "CUDA out of memory")


async def test_unfinished_jobs_oldest_first_after_reopen(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with await Storage.open(settings=settings) as storage:
        ids = [
            (await storage.create_job(NewJob(user_id=u, work=GenerationRequest(f"n{u}")))).id
            for u in (3, 1, 2, 1)
        ]
        await storage.set_job_status(ids[0], "running")
        await storage.set_job_status(ids[1], "done")
        await storage.set_job_status(ids[3], "cancelled")
    async with await Storage.open(settings=settings) as storage:
        unfinished = await storage.unfinished_jobs()
    assert [(j.id, j.status, j.attempts) for j in unfinished] == [
        (ids[0], "running", 1),
        (ids[2], "queued", 0),
    ]
    assert unfinished[1].request.prompt == "n2" and unfinished[1].kind == "generate"


async def test_job_errors(storage: Storage) -> None:
    with pytest.raises(NotFoundError, match="no job 999"):
        await storage.set_job_status(999, "running")
    with pytest.raises(NotFoundError):
        await storage.update_job_reference(999, {})
    job = await storage.create_job(NewJob(user_id=1, work=GenerationRequest("")))
    with pytest.raises(ValueError, match="status must be one of"):
        await storage.set_job_status(job.id, "exploded")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a GenerationRequest or a TrainSpec"):
        await storage.create_job(NewJob(user_id=1, work={"prompt": "x"}))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot be stored as JSON"):
        await storage.create_job(NewJob(user_id=1, work=GenerationRequest("x", loras=[object()])))
    assert await storage.get_job(999) is None


async def test_jobs_for_user_newest_first(storage: Storage) -> None:
    ids = [
        (await storage.create_job(NewJob(user_id=1, work=GenerationRequest("")))).id
        for _ in range(3)
    ]
    await storage.create_job(NewJob(user_id=2, work=GenerationRequest("")))
    await storage.set_job_status(ids[1], "done")
    assert [j.id for j in await storage.jobs_for_user(1)] == ids[::-1]
    assert [j.id for j in await storage.jobs_for_user(1, limit=2)] == ids[:0:-1]
    queued = await storage.jobs.jobs_for_user(1, statuses={"queued"})
    assert [j.id for j in queued] == [ids[2], ids[0]]


# --- generations -----------------------------------------------------------------------


async def _generation(storage: Storage, user_id: int, seeds: list[int], **extra: object) -> int:
    job = await storage.create_job(NewJob(user_id=user_id, work=GenerationRequest("")))
    await storage.set_job_status(job.id, "running")
    await storage.set_job_status(job.id, "done")
    fields = {
        "job_id": job.id,
        "user_id": user_id,
        "prompt": "a dog",
        "steps": 20,
        "cfg": 7.0,
        "width": 512,
        "height": 512,
        "sampler": "euler",
        "seeds": seeds,
        **extra,
    }
    await storage.generations.record_generation(**fields)  # type: ignore[arg-type]
    return job.id


async def test_record_generation_and_read_back(storage: Storage) -> None:
    assert await storage.generations.last_generation_for_user(1) is None
    await _generation(storage, 1, [1, 2])
    job_id = await _generation(
        storage,
        1,
        [11, 12],
        negative_prompt="blurry",
        model="sd15",
        lora_name="ink",
        lora_scale=0.7,
        image_paths=["outputs/a.png", "outputs/b.png"],
        timings={"load_s": 1.0, "total_s": 4.0},
    )
    await _generation(storage, 2, [99])
    last = await storage.generations.last_generation_for_user(1)
    assert last is not None and last.job_id == job_id
    assert last.seeds == (11, 12) and last.image_paths == ("outputs/a.png", "outputs/b.png")
    assert (last.lora_name, last.lora_scale, last.negative_prompt) == ("ink", 0.7, "blurry")
    assert last.timings == {"load_s": 1.0, "total_s": 4.0} and last.duration_s == 4.0
    assert await storage.generations.get_generation_by_job(job_id) == last
    assert await storage.generations.get_generation(last.id) == last


async def test_record_generation_validates(storage: Storage) -> None:
    with pytest.raises(ValueError, match="2 image paths for 1 seeds"):
        await _generation(storage, 1, [5], image_paths=["a.png", "b.png"])
    with pytest.raises(ValueError, match="at least one seed"):
        await _generation(storage, 1, [])
    assert await storage.generations.last_generation_for_user(1) is None


async def test_generation_stats(storage: Storage) -> None:
    empty = await storage.generations.stats()
    assert (empty.jobs_served, empty.images, empty.avg_seconds_per_image) == (0, 0, None)
    await _generation(storage, 1, [1, 2], timings={"total_s": 6.0})
    await _generation(storage, 1, [3], timings={"encode_s": 0.5, "denoise_s": 1.5})
    await _generation(storage, 2, [4, 5, 6])  # untimed: counted as images, not in the average
    stats = await storage.generations.stats()
    assert (stats.jobs_served, stats.images) == (3, 6)
    assert stats.avg_seconds_per_image == pytest.approx(8.0 / 3)
    mine = await storage.generations.stats(user_id=1)
    assert (mine.jobs_served, mine.images) == (2, 3)


# --- moderation and kv -----------------------------------------------------------------


async def test_blocked_words(storage: Storage) -> None:
    assert await storage.blocked_words.add_blocked_word("  Gore ", added_by=1) is True
    assert await storage.blocked_words.add_blocked_word("gore") is False
    assert await storage.blocked_words.add_blocked_word("bad   thing") is True
    assert await storage.blocked_words.list_blocked_words() == ["bad thing", "gore"]
    found = await storage.blocked_words.find_blocked_words("A GORE-y BAD  thing")
    assert found == ["bad thing", "gore"]
    assert await storage.blocked_words.find_blocked_words("gorey badthing") == []
    assert await storage.blocked_words.remove_blocked_word("GORE") is True
    assert await storage.blocked_words.remove_blocked_word("gore") is False
    with pytest.raises(ValueError, match="must not be empty"):
        await storage.blocked_words.add_blocked_word("   ")


async def test_key_value_settings_survive_reopen(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with await Storage.open(settings=settings) as storage:
        assert await storage.kv.get("missing", "fallback") == "fallback"
        assert await storage.kv.is_queue_paused() is False
        await storage.kv.set_queue_paused(True)
        await storage.kv.set("limits", {"per_user": 3})
        await storage.kv.set("limits", {"per_user": 4})
    async with await Storage.open(settings=settings) as storage:
        assert await storage.kv.is_queue_paused() is True
        assert await storage.kv.get("limits") == {"per_user": 4}
        assert await storage.kv.delete("limits") is True
        assert await storage.kv.get("limits") is None
