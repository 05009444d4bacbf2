"""fp8 weight storage (OPT_WEIGHT_STORAGE) at load, on the tiny model on the CPU, with LoRAs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.generator import TextToImageGenerator
from engine.weight_storage import stored_fp8, weight_bytes
from tests.conftest import tiny_config
from tests.tiny_sd import save_tiny_pipeline


def render(gen: TextToImageGenerator, **kwargs: object) -> np.ndarray:
    return np.asarray(gen.generate("a red castle", seed=21, **kwargs)[0]).astype(np.int16)


def load(folder: Path, storage: str) -> TextToImageGenerator:
    config = tiny_config(folder)
    config.optimization = config.optimization.model_copy(update={"weight_storage": storage})
    gen = TextToImageGenerator(config)
    gen.load_model()
    return gen


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("fp8_model") / "tiny-sd")


def test_fp8_is_applied_at_load_and_recorded(tiny_folder: Path) -> None:
    plain, fp8 = load(tiny_folder, "auto"), load(tiny_folder, "fp8")
    try:
        assert not stored_fp8(plain.pipe.unet)  # auto is off on a CPU
        assert "fp8 weight storage (unet, vae)" in fp8.slot.applied
        for name in ("unet", "vae"):
            module = getattr(fp8.pipe, name)
            assert stored_fp8(module) and module.dtype == torch.float32  # computed in fp32
            assert weight_bytes(module) < 0.4 * weight_bytes(getattr(plain.pipe, name))
        assert fp8.pipe.text_encoder.dtype == torch.float32  # the text encoder is not stored
        base, stored = render(plain), render(fp8)
        assert base.shape == stored.shape and np.abs(base - stored).mean() < 20
    finally:
        plain.unload()
        fp8.unload()


def test_a_lora_loads_on_fp8_weights_and_changes_the_picture(
    tiny_folder: Path, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    gen = load(tiny_folder, "fp8")
    try:
        base = render(gen)
        with_a = render(gen, lora=str(tiny_lora), lora_scale=1.0)
        lora = [p for n, p in gen.pipe.unet.named_parameters() if "lora" in n]
        assert lora and all(p.dtype == torch.float32 for p in lora)  # not rounded to fp8
        assert np.abs(with_a - base).mean() > 1
        assert np.abs(render(gen, lora=str(tiny_lora_b), lora_scale=1.0) - with_a).mean() > 1
        assert np.array_equal(render(gen), base)  # switching back restores the base model
    finally:
        gen.unload()
