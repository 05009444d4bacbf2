"""Ray workers on a private local cluster (127.0.0.1, 2 CPU actors on the tiny model)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from engine.lora import resolve_lora_file  # noqa: E402
from engine.metadata import parse_parameters  # noqa: E402
from engine.requests import GenerationRequest  # noqa: E402
from scheduling.events import Cancelled, Finished, Notice, Progress, Started  # noqa: E402
from scheduling.jobs import MemoryJobStore, NewJob, TrainSpec  # noqa: E402
from scheduling.scheduler import Scheduler  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402
from tests.test_executor import Recorder  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def ray_pool(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One private Ray cluster and two worker actors for the whole module."""
    from scheduling.workers.ray_backend import NAMESPACE, create_workers

    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=2,
        namespace=NAMESPACE,
        logging_level="WARNING",
    )
    config = tiny_config(tiny_model_dir)
    config.queue.progress_interval_s = 0
    config.queue.train_slice_steps = 2
    workers = create_workers(config, count=2, cache_dir=tmp_path_factory.mktemp("worker-cache"))
    yield workers
    for worker in workers:
        ray.kill(worker.handle, no_restart=True)
    ray.shutdown()


async def _serve(workers: list, generator, tmp_path: Path):
    sched = Scheduler(
        generator,
        MemoryJobStore(),
        workers[0].queue_config,
        workers=list(workers),
        image_path=lambda job, i: tmp_path / f"job{job.id}-{i}.png",
        trainer_factory=_no_local_trainer,
        close_workers=False,
    )
    rec = Recorder()
    sched.subscribe(rec)
    sched.rec = rec  # type: ignore[attr-defined]
    await sched.start()
    return sched


@pytest.fixture
async def pool(ray_pool, tiny_generator, tmp_path: Path):
    sched = await _serve(ray_pool, tiny_generator, tmp_path)
    yield sched
    await sched.stop()


@pytest.fixture
async def solo(ray_pool, tiny_generator, tmp_path: Path):
    """A scheduler serving only the first worker of the pool (every job runs there)."""
    sched = await _serve(ray_pool[:1], tiny_generator, tmp_path)
    yield sched
    await sched.stop()


def _no_local_trainer(job: object) -> None:
    raise AssertionError("a Ray worker builds its trainer on its actor")


def request(prompt: str, steps: int = 4, **extra: object) -> GenerationRequest:
    return GenerationRequest(prompt, seed=1, num_inference_steps=steps, **extra)  # type: ignore[arg-type]


async def test_three_users_start_in_fair_order_on_both_workers(pool: Scheduler) -> None:
    pool.pause()
    for user in (1, 2, 3):
        for n in range(2):
            await pool.submit(NewJob(user_id=user, work=request(f"u{user} {n}")))
    order = [job.id for job in pool.queue.order()]
    before = {w.name: w.jobs_done for w in pool.workers}
    pool.resume()
    done = await pool.rec.wait(Finished, count=6, timeout=240)
    assert [e.job.id for e in pool.rec.of(Started)] == order
    assert all(w.jobs_done > before[w.name] for w in pool.workers)  # both took jobs
    for event in done:
        assert Path(event.result_data["paths"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert event.result.images[0].size == (64, 64)
    infos = pool.workers_info()
    assert {i.name for i in infos} == {"sd-worker-0", "sd-worker-1"}
    assert all(i.device == "cpu" and i.state == "idle" for i in infos)


async def test_unseen_lora_reaches_the_worker_by_hash(pool: Scheduler, tiny_lora: Path) -> None:
    sha = hashlib.sha256(resolve_lora_file(tiny_lora).read_bytes()).hexdigest()
    seen = [ray.get(w.handle.has_lora.remote(sha)) for w in pool.workers]
    assert seen == [False, False]
    job = await pool.submit(NewJob(user_id=1, work=request("styled", lora=str(tiny_lora))))
    [done] = await pool.rec.wait(Finished, job.id, timeout=120)
    assert done.result_data["seeds"] == [1]
    assert sum(ray.get(w.handle.has_lora.remote(sha)) for w in pool.workers) == 1


async def test_a_prompts_lora_stack_reaches_the_worker_by_hash(
    pool: Scheduler, tiny_lora_b: Path
) -> None:
    sha = hashlib.sha256(resolve_lora_file(tiny_lora_b).read_bytes()).hexdigest()
    assert not any(ray.get(w.handle.has_lora.remote(sha)) for w in pool.workers)
    stack = [[str(tiny_lora_b), 0.8, "bee"]]
    job = await pool.submit(NewJob(user_id=1, work=request("stacked", loras=stack)))
    [done] = await pool.rec.wait(Finished, job.id, timeout=120)
    assert 'LoRAs: "bee:0.8"' in done.result_data["parameters"][0]
    assert sum(ray.get(w.handle.has_lora.remote(sha)) for w in pool.workers) == 1


async def test_progress_and_cancel_through_a_ray_worker(pool: Scheduler) -> None:
    job = await pool.submit(NewJob(user_id=1, work=request("long", steps=150)))
    await pool.rec.wait(Progress, job.id, timeout=120)
    assert await pool.cancel(job.id) == "running"
    [cancelled] = await pool.rec.wait(Cancelled, job.id, timeout=60)
    assert cancelled.was_running and 0 < cancelled.step < 150
    assert pool.store.jobs[job.id].status == "cancelled"


async def test_sigkilled_worker_job_runs_elsewhere_exactly_once(pool: Scheduler) -> None:
    jobs = [
        await pool.submit(NewJob(user_id=u, work=request(f"k{u}", steps=30))) for u in (1, 2, 3)
    ]
    await pool.rec.wait(Progress, jobs[0].id, timeout=120)
    victim = next(w for w in pool.workers if w.name == pool.active.worker_of(jobs[0].id))
    old_pid = victim.pid
    os.kill(old_pid, signal.SIGKILL)
    for job in jobs:
        await pool.rec.wait(Finished, job.id, timeout=240)
    assert jobs[0].id in pool.health.requeued
    deadline = time.monotonic() + 120
    while not all(w.alive for w in pool.workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    pids = [ray.get(w.handle.info.remote(), timeout=60)["pid"] for w in pool.workers]
    assert all(w.alive for w in pool.workers) and old_pid not in pids
    await _drained(pool)
    for job in jobs:
        assert len(pool.rec.of(Finished, job.id)) == 1
        assert pool.store.jobs[job.id].status == "done"


async def _drained(pool: Scheduler) -> None:
    """Run one more job to its end, then wait until nothing is queued or running.

    A second run of a job (a requeue too many) would be queued or running until then.
    """
    after = await pool.submit(NewJob(user_id=99, work=request("after", steps=2)))
    await pool.rec.wait(Finished, after.id, timeout=120)
    deadline = time.monotonic() + 60
    while pool.queue.order() or pool.snapshot().running:
        assert time.monotonic() < deadline, "the pool did not drain"
        await asyncio.sleep(0.1)


async def test_source_image_and_mask_reach_the_worker_by_hash_once(
    solo: Scheduler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    first_source, second_source = tmp_path / "source.png", tmp_path / "again.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(first_source)
    second_source.write_bytes(first_source.read_bytes())
    mask = tmp_path / "mask.png"
    drawn = Image.new("L", (64, 64), 0)
    drawn.paste(255, (0, 0, 16, 64))  # repaint the left quarter
    drawn.save(mask)
    [worker] = solo.workers  # both jobs on one worker: the second finds the file there
    ship = worker._ship

    async def ship_then_hide(file: Path, suffix: str) -> str:
        name = await ship(file, suffix)
        if file in (first_source, mask):
            file.unlink()  # the worker must read its own copy, not the bot's path
        return name

    monkeypatch.setattr(worker, "_ship", ship_then_hide)
    before = worker.sent_bytes
    job = await solo.submit(
        NewJob(user_id=1, work=request("repaint", init_image=str(first_source), strength=0.5))
    )
    [done] = await solo.rec.wait(Finished, job.id, timeout=120)
    assert done.result.images[0].size == (64, 64) and not first_source.exists()
    sent = worker.sent_bytes
    assert sent - before == second_source.stat().st_size
    again = await solo.submit(
        NewJob(user_id=2, work=request("upscaled", init_image=str(second_source), upscale=2))
    )
    [done] = await solo.rec.wait(Finished, again.id, timeout=120)
    assert done.result.images[0].size == (128, 128)
    assert worker.sent_bytes == sent  # same bytes, same sha: nothing shipped again
    masked = await solo.submit(
        NewJob(
            user_id=3, work=request("masked", init_image=str(second_source), mask_image=str(mask))
        )
    )
    [done] = await solo.rec.wait(Finished, masked.id, timeout=120)
    assert not mask.exists() and done.result.request.mask_image == str(mask)
    pixels = done.result.images[0].convert("RGB").load()
    assert pixels[60, 32] == (200, 40, 40)  # beyond the mask's edge: the source's own pixels


def test_new_workers_take_names_free_in_the_cluster(ray_pool) -> None:
    from scheduling.workers.ray_backend import _free_indexes

    assert _free_indexes(2) == [2, 3]  # the pool holds sd-worker-0 and sd-worker-1


def test_new_nodes_get_workers_and_dead_nodes_are_not_replaced_twice() -> None:
    from types import SimpleNamespace as Worker

    from scheduling.workers.ray_growth import node_capacity, placements

    def node(node_id: str, alive: bool = True, **resources: float) -> dict:
        return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": 8.0, **resources}}

    cpu_only = node_capacity([node("a"), node("b"), node("gone", alive=False)])
    assert cpu_only == {"a": 1, "b": 1}  # no GPUs anywhere: one worker per node
    assert placements(cpu_only, [Worker(node_id="a")]) == ["b"]
    gpus = node_capacity([node("a", GPU=2), node("b"), node("c", GPU=1)])
    assert gpus == {"a": 2, "b": 0, "c": 1}
    assert placements(gpus, [Worker(node_id="a")]) == ["a", "c"]
    # the worker of a PC that went away is restarted by Ray where there is room: no second one
    assert placements(cpu_only, [Worker(node_id="a"), Worker(node_id="gone")]) == []


async def test_imagine_end_to_end_with_ray_workers(
    ray_pool, world, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduling.workers import ray_backend
    from tests.e2e_harness import running, wait_result

    # The bot joins the module's cluster (Ray is up, so connect() keeps it) and, to save a
    # model load, gets a handle on the pool's first actor instead of starting its own.
    made: list[ray_backend.RayWorker] = []

    def create_workers(config, **_: object) -> list[ray_backend.RayWorker]:
        made.append(ray_backend.RayWorker(ray_pool[0].name, ray_pool[0].handle, config))
        return made

    closed: list[str] = []
    monkeypatch.setattr(ray_backend, "create_workers", create_workers)
    monkeypatch.setattr(ray_backend.RayWorker, "close", lambda self: _closed(closed, self.name))
    settings = {"backend": "ray", "count": 1, "cache_dir": world.tmp / "worker-cache"}
    async with running(world, tiny_model_dir, workers=settings) as bot:
        assert bot.executor.workers == made and not any(
            w.shares_process for w in bot.executor.workers
        )
        it = await world.slash(world.alice, "imagine", {"prompt": "a red castle", "seed": 5})
        result = await wait_result(it, timeout=120)
        [upload] = result.files
        with Image.open(io.BytesIO(upload.data)) as image:
            assert image.size == (64, 64)
            assert parse_parameters(image.info["parameters"])["Seed"] == "5"
        assert made[0].jobs_done == 1 and made[0].pid != os.getpid()
    assert closed == ["sd-worker-0"]  # the bot closes its workers when it stops


async def _closed(closed: list[str], name: str) -> None:
    closed.append(name)


async def test_training_resumes_on_another_worker_from_the_bots_checkpoint(
    pool: Scheduler, tmp_path: Path
) -> None:
    from engine.training import files

    out = tmp_path / "loras" / "disc"  # the bot's LoRA folder: the single record
    settings = _train_settings(tmp_path, out, max_steps=6, checkpoint_every=2)
    ran_on: list[str] = []
    killed: list[int] = []

    def on_event(event: object) -> None:
        # Synchronous on the event loop: the kill lands before the runner sends the next slice.
        if isinstance(event, Started) and event.job.id == job.id:
            ran_on.append(pool.active.worker_of(job.id) or "?")
        if isinstance(event, Progress) and event.job.id == job.id and not killed:
            assert event.step == 2
            victim = next(w for w in pool.workers if w.name == ran_on[0])
            killed.append(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)

    pool.subscribe(on_event)
    job = await pool.submit(NewJob(user_id=1, work=TrainSpec.from_dict(settings)))
    [done] = await pool.rec.wait(Finished, job.id, timeout=240)
    assert killed and len(ran_on) == 2 and ran_on[0] != ran_on[1]  # resumed on the other one
    notices = [e.message for e in pool.rec.of(Notice, job.id)]
    assert "Training resumes from its checkpoint at step 2." in notices
    assert [s for s, _ in files.list_checkpoints(out)] == [2, 4, 6]  # all copied home
    weights = out / "final" / files.WEIGHT_NAME
    assert done.result.weights_path == weights and done.result.steps == 6
    assert done.result.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert done.result.kohya_path.is_file() and done.result.kohya_path.parent == out / "final"
    deadline = time.monotonic() + 120  # the killed worker rejoins for the next tests
    while not all(w.alive for w in pool.workers) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert all(w.alive for w in pool.workers)
    await _drained(pool)
    assert len(pool.rec.of(Finished, job.id)) == 1 and pool.store.jobs[job.id].status == "done"


def _train_settings(tmp_path: Path, out: Path, **extra: object) -> dict:
    from PIL import ImageDraw

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    for i in range(4):
        img = Image.new("RGB", (64, 64), (255, 255, 255))
        ImageDraw.Draw(img).ellipse((6 + 5 * i, 10, 38 + 5 * i, 42), fill=(200, 30, 30))
        img.save(dataset / f"{i:04d}.png")
    return {
        "dataset_dir": str(dataset),
        "output_dir": str(out),
        "name": "disc",
        "resolution": 64,
        "lr": 1e-2,
        "sample_steps": 0,
        **extra,
    }


async def test_imagine_runs_between_slices_of_a_training_on_its_worker(
    solo: Scheduler, tmp_path: Path
) -> None:
    pool = solo  # only the training's worker can serve the /imagine
    [trainer_worker] = pool.workers
    out = tmp_path / "loras" / "disc"
    settings = _train_settings(tmp_path, out, max_steps=4, checkpoint_every=0)
    train = await pool.submit(NewJob(user_id=1, work=TrainSpec.from_dict(settings)))
    await pool.rec.wait(Started, train.id, timeout=60)
    image = await pool.submit(NewJob(user_id=2, work=request("between slices")))
    [made] = await pool.rec.wait(Finished, image.id, timeout=120)
    [trained] = await pool.rec.wait(Finished, train.id, timeout=120)
    assert made.result.images[0].size == (64, 64)
    steps = [(e.step, pool.rec.events.index(e)) for e in pool.rec.of(Progress, train.id)]
    ran_at = pool.rec.events.index(pool.rec.of(Started, image.id)[0])
    assert [step for step, at in steps if at < ran_at] == [2]  # after the first slice
    assert pool.rec.events.index(made) < pool.rec.events.index(trained)
    assert trainer_worker.jobs_done and trained.result.steps == 4
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()
