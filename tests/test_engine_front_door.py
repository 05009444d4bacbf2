"""EngineDoor on the tiny model: LoRA and embedding checks between jobs, model info, sizes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine.embeddings import EmbeddingError
from engine.errors import EngineError, LoraError, LoraMismatchError
from engine.front_door import EngineDoor
from engine.generator import TextToImageGenerator
from engine.requests import GenerationRequest
from tests.test_embeddings import make_embedding
from tests.tiny_sd import save_tiny_pipeline


class EngineThread:
    """A stand-in for the scheduler's run_on_engine: one named thread; records what it ran."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-test")
        self.ran: list[str] = []
        self.threads: set[str] = set()

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            self.threads.add(threading.current_thread().name)
            return fn(*args)

        self.ran.append(getattr(fn, "__name__", repr(fn)))
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The startup tiny model (32 wide) and another of a wider family (48)."""
    root = tmp_path_factory.mktemp("door_models")
    return {
        "tiny": save_tiny_pipeline(root / "tiny-sd"),
        "wide": save_tiny_pipeline(root / "wide-sd", seed=5, cross_attention_dim=48),
    }


@pytest.fixture(scope="module")
def generator(models: dict[str, Path]) -> TextToImageGenerator:
    """A loaded generator whose MODEL_CHOICES name both tiny models."""
    from tests.conftest import tiny_config

    config = tiny_config(models["tiny"])
    config.model.choices = f"Tiny={models['tiny']},Wide={models['wide']}"
    gen = TextToImageGenerator(config)
    gen.load_model()
    yield gen
    gen.unload()


@pytest.fixture
def engine() -> EngineThread:
    return EngineThread()


@pytest.fixture
def door(generator: TextToImageGenerator, engine: EngineThread) -> EngineDoor:
    return EngineDoor(generator, engine)


async def test_check_lora_loads_it_between_jobs_and_leaves_the_pipeline_as_it_was(
    door: EngineDoor, engine: EngineThread, generator: TextToImageGenerator, tiny_lora: Path
) -> None:
    before = dict(generator.lora.resident)
    fit = await door.check_lora(tiny_lora)
    assert fit.info.rank == 4 and fit.info.format == "diffusers"
    assert fit.model == "Tiny" == generator.model_name
    assert fit.width == 32 == generator.text_width
    assert engine.ran == ["_try_load"]
    assert all(name.startswith("engine-test") for name in engine.threads)
    assert dict(generator.lora.resident) == before  # the trial adapter is gone again


async def test_check_lora_tells_a_bad_file_from_one_for_another_model(
    door: EngineDoor, engine: EngineThread, foreign_lora: Path, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all" * 4)
    with pytest.raises(LoraError, match="not a readable safetensors file") as bad:
        await door.check_lora(junk)
    assert not isinstance(bad.value, LoraMismatchError)
    assert engine.ran == []  # a bad header never reaches the engine thread
    with pytest.raises(LoraMismatchError, match="does not fit the loaded model") as other:
        await door.check_lora(foreign_lora)
    assert other.value.model == "Tiny"


async def test_check_lora_without_a_model_says_so(
    models: dict[str, Path], engine: EngineThread, tiny_lora: Path
) -> None:
    from tests.conftest import tiny_config

    unloaded = EngineDoor(TextToImageGenerator(tiny_config(models["tiny"])), engine)
    with pytest.raises(EngineError, match="not loaded"):
        await unloaded.check_lora(tiny_lora)


async def test_forget_lora_drops_the_resident_adapter_of_that_name(
    door: EngineDoor, engine: EngineThread, generator: TextToImageGenerator, tiny_lora: Path
) -> None:
    generator.run(
        GenerationRequest(prompt="a castle", seed=1, lora=str(tiny_lora), lora_name="ink-wash")
    )
    assert "ink_wash" in generator.lora.resident
    await door.forget_lora("ink-wash")
    assert "ink_wash" not in generator.lora.resident
    await door.forget_lora("never-loaded")  # nothing to drop: no error
    assert engine.ran == ["_forget_lora", "_forget_lora"]


async def test_embeddings_are_added_refused_and_forgotten(
    door: EngineDoor, engine: EngineThread, generator: TextToImageGenerator, tmp_path: Path
) -> None:
    good = make_embedding(tmp_path / "zzdoor.safetensors", 2, 32)
    fit = await door.add_embedding(good, "zzdoor")
    assert (fit.info.vectors, fit.info.width, fit.model) == (2, 32, "Tiny")
    assert "zzdoor_1" in generator.pipe.tokenizer.get_vocab()

    wide = make_embedding(tmp_path / "zzwide.safetensors", 1, 48)
    with pytest.raises(EmbeddingError, match="48"):
        await door.add_embedding(wide, "zzwide")
    # Restored at start-up, an embedding for another family is refused now, kept for later.
    with pytest.raises(EmbeddingError):
        await door.restore_embedding(wide, "zzwide")

    assert await door.forget_embedding("zzdoor") is True
    assert await door.forget_embedding("zzdoor") is False
    assert "zzdoor" not in generator.pipe.tokenizer.get_vocab()
    assert engine.ran == ["_add_embedding"] * 2 + ["_restore_embedding"] + ["unload_embedding"] * 2


def test_model_info(door: EngineDoor, generator: TextToImageGenerator) -> None:
    assert door.model_names() == ["Tiny", "Wide"]
    assert door.find_model("wide") == "Wide" and door.find_model("nope") is None
    assert door.default_model == "Tiny" == door.resident_model
    assert door.model_width("Tiny") == 32 and door.model_width("wide") == 48
    assert door.resident_width == 32
    assert door.preset == generator.preset and door.device == "cpu"


def test_native_size_is_the_configured_one_else_the_models(models: dict[str, Path]) -> None:
    from tests.conftest import tiny_config

    async def unused(fn: Callable[..., Any], *args: Any) -> Any:
        raise AssertionError("native_size needs no engine thread")

    configured = TextToImageGenerator(tiny_config(models["tiny"], width=96, height=80))
    assert EngineDoor(configured, unused).native_size() == (96, 80)
    plain = tiny_config(models["tiny"])
    plain.generation = type(plain.generation)()  # nothing set: the model's defaults apply
    unset = TextToImageGenerator(plain)
    unset.slot.model_defaults = {"width": 128, "height": 64}
    assert EngineDoor(unset, unused).native_size() == (128, 64)
    unset.slot.model_defaults = {}
    assert EngineDoor(unset, unused).native_size() == (plain.generation.width,) * 2


def test_prepare_fills_defaults_and_refuses_bad_values(door: EngineDoor) -> None:
    resolved = door.prepare(GenerationRequest(prompt="a castle", seed=3))
    assert (resolved.width, resolved.num_inference_steps, resolved.negative_prompt) == (
        64,
        3,
        "blurry",
    )
    with pytest.raises(ValueError, match="model"):
        door.prepare(GenerationRequest(prompt="a castle", model="nope"))


async def test_before_after_png_runs_between_jobs(
    door: EngineDoor, engine: EngineThread, tiny_lora: Path
) -> None:
    png = await door.before_after_png("a red castle", 4, 64, str(tiny_lora), "proof")
    assert png.startswith(b"\x89PNG") and engine.ran == ["_before_after"]
