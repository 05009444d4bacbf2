"""CPU precision and threads (issue 21 item 6): detection, the decision, the CLI, the doctor."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine import cpu as cpu_module
from engine.__main__ import main as cli_main
from engine.config import ModelConfig, OptimizationConfig
from engine.cpu import (
    CpuInfo,
    choose_cpu_precision,
    choose_threads,
    cpu_dtype,
    cpuinfo_flags,
    cpuinfo_physical_cores,
)
from engine.doctor import check_cpu
from engine.errors import EngineError
from engine.generator import TextToImageGenerator
from tests.conftest import tiny_config

AVX2 = CpuInfo("AMD EPYC", "AVX2", frozenset(), physical_cores=4, logical_cores=8)
AVX512_BF16 = CpuInfo(
    "AMD EPYC 9654", "AVX512", frozenset({"avx512_bf16"}), physical_cores=4, logical_cores=8
)
SAPPHIRE = CpuInfo(
    "Intel Xeon 8480+",
    "AVX512",
    frozenset({"amx_bf16", "avx512_bf16", "avx512_fp16", "amx_fp16"}),
    physical_cores=56,
    logical_cores=112,
)

# Two hyper-threaded cores: four processors, two (physical id, core id) pairs.
CPUINFO_HT = "".join(
    f"processor\t: {n}\nphysical id\t: 0\ncore id\t\t: {n % 2}\n"
    "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16\n\n"
    for n in range(4)
)


def test_cpuinfo_flags_and_physical_cores() -> None:
    assert {"avx512_bf16", "amx_bf16", "avx2"} <= cpuinfo_flags(CPUINFO_HT)
    assert cpuinfo_physical_cores(CPUINFO_HT) == 2
    two_sockets = CPUINFO_HT + CPUINFO_HT.replace("physical id\t: 0", "physical id\t: 1")
    assert cpuinfo_physical_cores(two_sockets) == 4
    # ARM lists 'Features' and no core ids: the count falls back to the caller's.
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16\n\nprocessor\t: 1\nFeatures\t: fp asimd\n\n"
    assert "bf16" in cpuinfo_flags(arm)
    assert cpuinfo_physical_cores(arm) is None


def test_detect_cpu_reads_this_machine() -> None:
    found = cpu_module.detect_cpu()
    assert 1 <= found.physical_cores <= found.logical_cores
    assert found.flags <= cpu_module.FLAG_NAMES.keys()
    assert found.capability == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize(
    ("cpu", "expected", "why"),
    [
        (AVX2, "fp32", "lacks AVX512-BF16 and AMX"),
        (AVX512_BF16, "bf16", "natively (AVX512-BF16)"),
        (SAPPHIRE, "bf16", "natively (AVX512-BF16, AMX-BF16)"),
    ],
)
def test_auto_is_bf16_only_where_the_cpu_computes_it(cpu: CpuInfo, expected: str, why: str) -> None:
    choice = choose_cpu_precision("auto", cpu)
    assert choice.precision == expected and why in choice.reason and not choice.slow


@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cpu", [AVX2, SAPPHIRE])
def test_an_explicit_precision_is_kept(requested: str, cpu: CpuInfo) -> None:
    choice = choose_cpu_precision(requested, cpu)
    assert choice.precision == requested
    native = requested == "fp32" or cpu is SAPPHIRE
    assert choice.slow is not native
    if not native:
        assert f"this CPU emulates {requested}" in choice.reason


def test_threads_setting_then_omp_then_physical_cores() -> None:
    assert choose_threads(3, {"OMP_NUM_THREADS": "1"}, AVX2) == (3, "OPT_CPU_THREADS")
    assert choose_threads(0, {"OMP_NUM_THREADS": "2"}, AVX2) == (2, "OMP_NUM_THREADS")
    assert choose_threads(0, {"OMP_NUM_THREADS": ""}, SAPPHIRE) == (56, "physical cores")
    assert choose_threads(0, {}, AVX2) == (4, "physical cores")  # not the 8 logical


def test_cpu_threads_setting_is_validated() -> None:
    assert OptimizationConfig().cpu_threads == 0
    with pytest.raises(ValueError):
        OptimizationConfig(cpu_threads=-1)


def test_a_precision_this_torch_cannot_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_module, "cpu_dtype_works", lambda dtype: dtype != torch.float16)
    assert cpu_dtype("bf16", AVX2)[0] == torch.bfloat16
    with pytest.raises(EngineError, match="precision fp16 does not run on the CPU with torch"):
        cpu_dtype("fp16", AVX2)


def test_this_torch_runs_every_precision_on_the_cpu() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert cpu_module.cpu_dtype_works(dtype), dtype


def test_cli_refuses_in_one_line(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cpu_module, "cpu_dtype_works", lambda dtype: dtype != torch.float16)
    argv = ["a castle", "--model", str(tiny_model_dir), "--device", "cpu", "--quiet"]
    assert cli_main([*argv, "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: precision fp16 does not run on the CPU") and "\n" not in err
    assert "MODEL_PRECISION (or --precision) to auto, fp32 or bf16" in err
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_an_explicit_precision_loads_on_the_cpu(
    tiny_model_dir: Path, precision: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config(tiny_model_dir)
    cfg.model = cfg.model.model_copy(update={"precision": precision})
    gen = TextToImageGenerator(cfg)
    with caplog.at_level(logging.INFO, logger="engine"):
        gen.load_model()
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert gen.pipe.unet.dtype == expected and gen.slot.dtype == expected
    assert f"precision {precision} on the CPU: set explicitly" in caplog.text
    previews = []

    def progress(step: int, total: int, latents: object) -> None:
        previews.append(gen.preview(latents))

    image = gen.generate("a castle", seed=1, num_inference_steps=2, progress=progress)[0]
    assert image.size == (64, 64) and previews and previews[-1] is not None
    assert gen.upscale(image, 1.5, prompt="a castle", seed=1, num_inference_steps=4).size == (
        96,
        96,
    )
    init = gen.generate("a castle", seed=2, num_inference_steps=2, init_image=image)[0]
    assert init.size == (64, 64)


def test_auto_loads_bf16_on_a_bf16_cpu(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_module, "detect_cpu", lambda: SAPPHIRE)
    cfg = tiny_config(tiny_model_dir)
    cfg.model = cfg.model.model_copy(update={"precision": "auto"})
    cfg.optimization = OptimizationConfig(cpu_threads=1)
    before = torch.get_num_threads()
    try:
        gen = TextToImageGenerator(cfg)
        gen.load_model()
        assert gen.pipe.unet.dtype == torch.bfloat16
        assert torch.get_num_threads() == 1  # OPT_CPU_THREADS wins over OMP_NUM_THREADS
    finally:
        torch.set_num_threads(before)


def test_doctor_says_precision_why_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    opt = OptimizationConfig()
    line = check_cpu(ModelConfig(), opt, SAPPHIRE, device="cpu")
    assert line.ok and "Intel Xeon 8480+ (AVX512, 56 physical / 112 logical cores)" in line.summary
    assert "images in bf16 (auto: this CPU computes bf16 natively" in line.summary
    assert line.summary.endswith("56 torch threads (physical cores)")
    line = check_cpu(ModelConfig(), OptimizationConfig(cpu_threads=1), AVX2, device="cpu")
    assert "images in fp32 (auto: this CPU lacks AVX512-BF16 and AMX" in line.summary
    assert line.summary.endswith("1 torch thread (OPT_CPU_THREADS)")
    slow = check_cpu(ModelConfig(precision="bf16"), opt, AVX2, device="cpu")
    assert not slow.ok and not slow.fatal and "emulates bf16" in slow.summary
    assert "MODEL_PRECISION=auto" in slow.fix
    gpu = check_cpu(ModelConfig(), opt, AVX2, device="cuda")
    assert gpu.ok and gpu.summary.endswith("images are made on cuda")


def test_doctor_marks_a_precision_that_cannot_run_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_module, "cpu_dtype_works", lambda dtype: False)
    line = check_cpu(ModelConfig(precision="fp16"), OptimizationConfig(), AVX2, device="cpu")
    assert not line.ok and line.fatal and "does not run on the CPU" in line.summary
