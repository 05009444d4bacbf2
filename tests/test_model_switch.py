"""MODEL_CHOICES, switching the resident model, and the bounded same-model pick policy."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from engine.config import ModelConfig, QueueConfig
from engine.errors import EngineError
from engine.model_choices import ModelCatalog, parse_model_choices
from engine.requests import GenerationRequest
from scheduling import affinity
from scheduling.jobs import JobRecord, NewJob, TrainSpec
from tests.conftest import tiny_config
from tests.tiny_sd import save_tiny_pipeline


def test_choices_parse_and_the_startup_model_is_the_default(tmp_path: Path) -> None:
    choices = parse_model_choices(" small=segmind/small-sd , demo=models/demo,")
    assert [(c.name, c.source) for c in choices] == [
        ("small", "segmind/small-sd"),
        ("demo", "models/demo"),
    ]
    catalog = ModelCatalog("segmind/small-sd", "small=segmind/small-sd,sd21=stabilityai/x")
    assert catalog.default == "small" and catalog.names() == ["small", "sd21"]
    plain = ModelCatalog("stabilityai/stable-diffusion-2-1-base", "small=segmind/small-sd")
    assert plain.names() == ["stabilityai/stable-diffusion-2-1-base", "small"]
    assert plain.resolve("SMALL") == "small" and plain.resolve(None) == plain.default
    assert plain.width("small") == 768 and plain.width(plain.default) == 1024
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of"):
        plain.resolve("nope")
    for bad, message in (("x", "must look like name=source"), ("a b=c", "may only use"),
                         ("a=x,A=y", "listed twice")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_model_choices(bad)
    with pytest.raises(ValueError, match="listed twice"):
        ModelConfig(choices="a=x,a=y")


def test_width_is_read_from_config_files_and_checkpoint_headers(tmp_path: Path) -> None:
    narrow = save_tiny_pipeline(tmp_path / "narrow", seed=0)
    wide = save_tiny_pipeline(tmp_path / "wide", seed=0, cross_attention_dim=48)
    single = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.token_embedding.weight": torch.zeros(4, 1024)}, str(single))
    catalog = ModelCatalog(str(narrow), f"wide={wide},single={single}")
    assert catalog.default == "narrow"
    assert [catalog.width(n) for n in ("narrow", "wide", "single")] == [32, 48, 1024]
    catalog.check_sources()
    missing = ModelCatalog(str(narrow), f"gone={tmp_path / 'gone'}")
    with pytest.raises(EngineError, match=r"MODEL_CHOICES gone=.*: model: path not found"):
        missing.check_sources()


def _job(job_id: int, model: str | None, kind: str = "generate") -> JobRecord:
    work = TrainSpec("t") if kind == "train" else GenerationRequest("x", model=model)
    return JobRecord(job_id, job_id, work)


def _worker(model: str) -> SimpleNamespace:
    return SimpleNamespace(resident_model=model, held_loras=set())


def _serve(models: list[str | None], window: int, resident: str) -> tuple[list[int], dict]:
    """Serve a queue with one worker; return the order jobs ran in and the overtake counts."""
    queue = [_job(i, m) for i, m in enumerate(models, start=1)]
    worker, overtaken, order, most = _worker(resident), {}, [], {}
    while queue:
        index, chosen = affinity.pick(queue, [worker], overtaken, window, loras=False)
        job = queue.pop(index)
        assert chosen is worker
        most.update({k: max(v, most.get(k, 0)) for k, v in overtaken.items()})
        overtaken.pop(job.id, None)
        order.append(job.id)
        worker.resident_model = affinity.job_model(job) or worker.resident_model
    return order, most


def test_same_model_jobs_go_first_but_no_job_is_overtaken_more_than_the_window() -> None:
    # job 1 wants b; a is resident and many a-jobs follow: 1 runs after at most 3 of them.
    order, most = _serve(["b", "a", "a", "a", "a", "a", "b", "a"], window=3, resident="a")
    assert order[:4] == [2, 3, 4, 1]
    assert max(most.values()) == 3
    # with b resident after job 1, the b job 7 comes next, ahead of the a jobs 5, 6.
    assert order[4] == 7
    assert order == [2, 3, 4, 1, 7, 5, 6, 8]
    # window 0: strict fair order
    assert _serve(["b", "a", "a"], window=0, resident="a")[0] == [1, 2, 3]


def test_a_training_or_a_job_for_the_resident_model_is_never_passed_over() -> None:
    assert _serve([None, "a", "a"], window=3, resident="b")[0] == [1, 2, 3]
    assert _serve(["a", "b", "b"], window=3, resident="a")[0] == [1, 2, 3]
    # a training (no model) in second place does not overtake a job needing a switch
    queue = [_job(1, "b"), _job(2, None, kind="train")]
    assert affinity.pick(queue, [_worker("a")], {}, 3, loras=False)[0] == 0


def test_generator_switches_models_and_writes_each_name(tmp_path: Path) -> None:
    from engine.generator import TextToImageGenerator

    one = save_tiny_pipeline(tmp_path / "one", seed=0)
    two = save_tiny_pipeline(tmp_path / "two", seed=5)
    wide = save_tiny_pipeline(tmp_path / "wide", seed=0, cross_attention_dim=48)
    config = tiny_config(one)
    config.model = config.model.model_copy(update={"choices": f"two={two},wide={wide}"})
    gen = TextToImageGenerator(config)
    gen.load_model()
    emb = tmp_path / "zzneg.safetensors"
    save_file({"emb_params": torch.randn(1, 32)}, str(emb))
    gen.load_embedding(emb, "zzneg")
    first = gen.generate("a red castle", seed=3, num_images=1)[0]
    assert "Model: one" in first.info["parameters"]
    other = gen.generate("a red castle", seed=3, num_images=1, model="two")[0]
    assert gen.model_name == "two" and "Model: two" in other.info["parameters"]
    assert first.tobytes() != other.tobytes()
    assert "zzneg" in gen.adapters.embeddings.loaded  # loaded again on the new text encoder
    gen.generate("a red castle", seed=3, num_images=1, model="wide")
    assert (
        gen.text_width == 48 and "zzneg" not in gen.adapters.embeddings.loaded
    )  # 32 wide: left out
    back = gen.generate("a red castle", seed=3, num_images=1, model="one")[0]
    assert back.tobytes() == first.tobytes() and "zzneg" in gen.adapters.embeddings.loaded
    assert gen.unload_embedding("zzneg")  # /embedding delete: gone after the next switch too
    gen.generate("a red castle", seed=3, num_images=1, model="two")
    assert (
        "zzneg" not in gen.adapters.embeddings.loaded
        and "zzneg" not in gen.pipe.tokenizer.get_vocab()
    )
    (wide / "unet" / "config.json").unlink()  # a broken folder: the switch fails, one stays
    with pytest.raises(EngineError):
        gen.generate("a red castle", seed=3, num_images=1, model="wide")
    assert gen.loaded and gen.model_name == "two"
    with pytest.raises(ValueError, match="unknown model 'three'"):
        gen.prepare(__import__("engine.requests").requests.GenerationRequest("x", model="three"))
    gen.unload()


def test_cli_model_takes_a_choice_name_or_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.__main__ import _config, build_parser

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("MODEL_CHOICES", "two=models/two,small=segmind/small-sd")
    config = _config(build_parser().parse_args(["a castle", "--model", "small"]))
    assert config.model.model_id == "segmind/small-sd"
    assert ModelCatalog(config.model.model_id, config.model.choices).default == "small"
    config = _config(build_parser().parse_args(["a castle", "--model", "some/other"]))
    assert config.model.model_id == "some/other"


async def test_between_training_slices_only_jobs_for_the_training_model_run() -> None:
    from scheduling.active import ActiveRuns
    from scheduling.announcer import Announcer
    from scheduling.jobs import MemoryJobStore
    from scheduling.outcomes import Outcomes
    from scheduling.queue import FairQueue
    from scheduling.training_runner import TrainingRunner
    from scheduling.workers.base import JobRun

    store = MemoryJobStore()
    queue = FairQueue(store)
    training = await store.create_job(NewJob(user_id=9, work=TrainSpec("t")))
    for user, model in ((1, "b"), (2, "a"), (3, None)):
        await queue.submit(NewJob(user_id=user, work=GenerationRequest("x", model=model)))
    ran: list[int] = []

    async def serve(job: JobRecord, worker: object) -> None:
        ran.append(job.user_id)

    class TwoSlices:
        """A trainer that is done after its second slice."""

        step = 0

        async def setup(self) -> None: ...
        async def suspend(self) -> None: ...
        async def resume(self) -> None: ...
        async def abort(self) -> None: ...

        async def train_steps(self, n: int, cancel: object) -> SimpleNamespace:
            self.step += n
            return SimpleNamespace(
                step=self.step,
                max_steps=2 * n,
                seconds_per_step=None,
                loss=None,
                done=self.step >= 2 * n,
            )

        async def finish(self) -> dict:
            return {"weights_path": "w"}

    trainer = TwoSlices()

    async def make_trainer(job: JobRecord, factory: object) -> TwoSlices:
        return trainer

    worker = SimpleNamespace(
        name="w",
        resident_model="a",
        held_loras=set(),
        supports_training=True,
        trainer=make_trainer,
    )
    active = ActiveRuns()
    announcer = Announcer(queue, [worker], active, lambda: False)  # type: ignore[list-item]
    runner = TrainingRunner(
        outcomes=Outcomes(store, announcer, deliver=False),
        announcer=announcer,
        queue=queue,
        active=active,
        config=QueueConfig(),
        trainer_factory=lambda job: trainer,
        stopping=lambda: False,
    )
    await runner.run(training, JobRun(training), worker, serve=serve)  # type: ignore[arg-type]
    assert ran == [2, 3]  # the job for model b waits for the end of the training
    assert store.jobs[training.id].status == "done"
    assert [job.user_id for job in queue.order()] == [1]
