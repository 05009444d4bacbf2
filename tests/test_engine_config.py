"""Settings: environment and .env parsing, readable errors, VRAM presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import AppConfig, ConfigError, GenerationConfig, load_config
from engine.vram import PRESETS, pick_preset_for_free_vram, resolve_optimizations


def test_defaults_have_the_seed_shape() -> None:
    cfg = AppConfig()
    assert cfg.model.model_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg.model.precision == "auto"
    assert cfg.model.cache_dir == Path("models/cache")
    assert cfg.optimization.enable_attention_slicing is False
    assert cfg.generation.width == 512 and cfg.generation.num_inference_steps == 25
    assert cfg.generation.scheduler == "DPM++ 2M Karras"
    assert cfg.generation.negative_prompt


def test_environment_fills_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ID", "demo")
    monkeypatch.setenv("MODEL_PRECISION", "fp16")
    monkeypatch.setenv("OPT_ENABLE_VAE_TILING", "true")
    monkeypatch.setenv("GEN_WIDTH", "768")
    monkeypatch.setenv("GEN_SCHEDULER", "euler A")
    cfg = load_config()
    assert cfg.model.model_id == "demo"
    assert cfg.model.precision == "fp16"
    assert cfg.optimization.enable_vae_tiling is True
    assert cfg.generation.width == 768
    assert cfg.generation.scheduler == "Euler a"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("GEN_NUM_INFERENCE_STEPS=12\nMODEL_ID=./my-model\n")
    cfg = load_config(env)
    assert cfg.generation.num_inference_steps == 12
    assert cfg.model.model_id == "./my-model"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("MODEL_PRECISION", "fp64", "MODEL_PRECISION='fp64': must be one of 'auto', 'fp32'"),
        ("GEN_NUM_INFERENCE_STEPS", "-3", "GEN_NUM_INFERENCE_STEPS='-3': must be between 1"),
        ("GEN_WIDTH", "500", "GEN_WIDTH='500': must be a multiple of 8"),
        ("OPT_VRAM_PRESET", "5gb", "OPT_VRAM_PRESET='5gb': must be one of 'auto', 'none', '2gb'"),
        ("OPT_WEIGHT_STORAGE", "int4", "OPT_WEIGHT_STORAGE='int4': must be one of 'auto', 'off'"),
        ("GEN_SCHEDULER", "warp", "choose one of: DPM++ 2M Karras"),
        ("GEN_GUIDANCE_SCALE", "31", "GEN_GUIDANCE_SCALE='31': must be between 0 and 30"),
        ("MODEL_DEVICE", "gpu", "MODEL_DEVICE='gpu': must be one of auto, cpu, cuda"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_all_bad_values_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEN_WIDTH", "100")
    monkeypatch.setenv("MODEL_PRECISION", "int4")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "GEN_WIDTH" in str(info.value) and "MODEL_PRECISION" in str(info.value)


def _all_sections() -> list[type]:
    from botcore.settings import BotSettings, DiscordSettings
    from engine.config import SECTIONS
    from storage import StorageSettings

    return [*SECTIONS.values(), DiscordSettings, BotSettings, StorageSettings]


def test_env_example_lists_every_field() -> None:
    from engine.settings_base import env_name

    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    for section in _all_sections():
        for field in section.model_fields:
            name = env_name(section, field)
            # Shown commented out (`# NAME=default`), so a copy of the file changes nothing.
            assert f"\n{name}=" in text or f"\n# {name}=" in text, name


def test_env_example_copied_as_is_gives_the_defaults(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    for section in _all_sections():
        from_file = section(_env_file=example)
        assert from_file.model_dump() == section().model_dump(), section.__name__


@pytest.mark.parametrize(
    ("free", "preset"), [(1500, "2gb"), (3000, "3gb"), (3900, "4gb"), (6000, "6gb"), (20000, "8gb")]
)
def test_auto_preset_follows_free_vram(free: float, preset: str) -> None:
    assert pick_preset_for_free_vram(free) == preset


def test_preset_fills_only_unset_flags() -> None:
    from engine.config import OptimizationConfig

    opt = OptimizationConfig(vram_preset="2gb", enable_vae_tiling=False)
    resolved, name = resolve_optimizations(opt, "cuda")
    assert name == "2gb"
    assert resolved.enable_model_cpu_offload is True and resolved.weight_storage == "fp8"
    assert resolved.enable_sequential_cpu_offload is False
    assert resolved.enable_vae_tiling is False  # set explicitly, so the preset leaves it
    cpu, cpu_name = resolve_optimizations(OptimizationConfig(), "cpu")
    assert cpu_name == "none" and not cpu.enable_sequential_cpu_offload
    assert set(PRESETS) >= {"2gb", "3gb", "4gb", "6gb", "8gb"}


@pytest.mark.parametrize(
    ("preset", "setting", "device", "stored"),
    [
        ("2gb", "auto", "cuda", "fp8"),
        ("3gb", "auto", "cuda", "fp8"),
        ("4gb", "auto", "cuda", "off"),
        ("none", "auto", "cuda", "off"),
        ("3gb", "auto", "cpu", "off"),  # auto is always off on a CPU
        ("3gb", "off", "cuda", "off"),  # an explicit value wins over the preset
        ("4gb", "fp8", "cuda", "fp8"),
        ("none", "fp8", "cpu", "fp8"),  # and is honoured on a CPU
    ],
)
def test_weight_storage_follows_the_preset_unless_set(
    preset: str, setting: str, device: str, stored: str
) -> None:
    from engine.config import OptimizationConfig

    fields = {} if setting == "auto" else {"weight_storage": setting}
    resolved, _name = resolve_optimizations(
        OptimizationConfig(vram_preset=preset, **fields), device
    )
    assert resolved.weight_storage == stored


def test_weight_storage_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPT_WEIGHT_STORAGE", "fp8")
    assert load_config(None).optimization.weight_storage == "fp8"


def test_generation_config_rejects_bad_kwargs() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        GenerationConfig(width=65)
