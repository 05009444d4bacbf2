"""Shared fixtures: tiny Stable Diffusion models and LoRAs built from configs, no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist the workers share the cores, so each takes its share of torch threads (its
# child processes inherit it): oversubscribed OpenMP threads spin and slow everything down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

# Step caching changes pictures; tests compare them with plain diffusers (test_step_cache turns
# it on). Set for the whole process too: module-scoped fixtures are built before _isolated_env runs.
os.environ["OPT_STEP_CACHE"] = "0"

from tests.tiny_sd import make_tiny_lora, save_tiny_pipeline  # noqa: E402 (after the env)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's .env and settings variables out of the tests."""
    for key in list(os.environ):
        if key.startswith(
            ("MODEL_", "OPT_", "GEN_", "QUEUE_", "WORKERS_", "STORAGE_", "DISCORD_", "BOT_", "API_")
        ):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPT_STEP_CACHE", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD pipeline saved as a diffusers folder."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_model") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-4 LoRA for the tiny model (diffusers layout)."""
    return make_tiny_lora(tmp_path_factory.mktemp("lora_a"), seed=1, rank=4)


@pytest.fixture(scope="session")
def tiny_lora_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, rank-8 LoRA for the tiny model."""
    return make_tiny_lora(tmp_path_factory.mktemp("lora_b"), seed=2, rank=8)


@pytest.fixture(scope="session")
def tiny_kohya_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA for the tiny model in kohya (A1111) key layout."""
    return make_tiny_lora(tmp_path_factory.mktemp("lora_k"), seed=3, rank=4, kohya=True)


@pytest.fixture(scope="session")
def foreign_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA made for a different base model (other cross-attention width)."""
    return make_tiny_lora(tmp_path_factory.mktemp("lora_f"), seed=4, rank=4, cross_attention_dim=48)


def tiny_config(model_dir: Path, **generation: object):
    """An AppConfig for the tiny model on CPU with small, fast generation defaults."""
    from engine.config import AppConfig, GenerationConfig, ModelConfig, OptimizationConfig

    # Drafts off unless a test asks: a draft LoRA in a developer's model cache must not turn
    # every CPU test into a draft (GEN_DRAFT_DEFAULT=auto drafts on a CPU).
    gen = {
        "width": 64,
        "height": 64,
        "num_inference_steps": 3,
        "negative_prompt": "blurry",
        "draft_default": "off",
    }
    gen.update(generation)
    return AppConfig(
        # fp32 on every CPU: 'auto' is bf16 on a CPU with AVX512-BF16 or AMX (engine/cpu.py).
        model=ModelConfig(model_id=str(model_dir), device="cpu", precision="fp32"),
        optimization=OptimizationConfig(),
        generation=GenerationConfig(**gen),
    )


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory):
    """A loaded TextToImageGenerator on the tiny model (shared within a test module)."""
    from engine.generator import TextToImageGenerator

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("gen_model") / "tiny-sd")
    gen = TextToImageGenerator(tiny_config(folder))
    gen.load_model()
    yield gen
    gen.unload()


@pytest.fixture
async def world(tmp_path: Path):
    """A fake Discord with a guild, channels and users; asserts every route the bot used is known."""
    from tests.e2e_harness import make_world
    from tests.fake_discord import FakeDiscord

    async with FakeDiscord() as fake:
        yield make_world(fake, tmp_path)
        assert fake.unhandled == []
