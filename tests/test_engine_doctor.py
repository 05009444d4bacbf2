"""`python -m engine doctor`: each check on this (GPU-less) machine, a faked GPU, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import doctor
from engine.config import ModelConfig, OptimizationConfig
from engine.doctor import (
    check_disk,
    check_gpu,
    check_model,
    check_token,
    check_vram,
    has_kernels,
    torch_build_for,
)
from engine.settings_base import read_env

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "MTAxMjM0NTY3ODkw.GabcDE.secret-part-of-the-token"


def fake_gpu(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], arch: list[str], free_gb: float
) -> None:
    """Pretend torch sees one CUDA card (no GPU can exist on the test machine)."""
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "get_device_name", lambda index=None: "NVIDIA GeForce GTX 1050")
    monkeypatch.setattr(cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(cuda, "get_arch_list", lambda: list(arch))
    monkeypatch.setattr(cuda, "mem_get_info", lambda index=None: (free_gb * 2**30, 4 * 2**30))


def test_no_gpu_path_on_this_machine() -> None:
    assert not torch.cuda.is_available()
    [gpu] = check_gpu()
    assert gpu.ok and gpu.name == "gpu" and "no CUDA GPU" in gpu.summary and "CPU" in gpu.summary


@pytest.mark.parametrize(
    ("capability", "arch", "expected"),
    [
        ((6, 1), ["sm_75", "sm_80", "sm_86", "sm_90", "sm_120"], False),  # Pascal on a cu128 build
        ((5, 2), ["sm_50", "sm_60", "sm_70"], True),  # sm_50 binaries run on sm_52
        ((6, 1), ["sm_60", "sm_70"], True),
        ((8, 6), ["sm_80", "sm_90"], True),
        ((8, 6), ["sm_90"], False),  # a later major's binary does not run on an earlier card
        ((12, 0), ["sm_80", "sm_90", "compute_90"], True),  # PTX is compiled for newer cards
        ((7, 5), ["compute_80"], False),  # but not for older ones
        ((6, 1), [], False),
    ],
)
def test_has_kernels(capability: tuple[int, int], arch: list[str], expected: bool) -> None:
    assert has_kernels(*capability, arch) is expected


def test_faked_old_card_without_kernels_is_fatal_with_the_build_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_gpu(monkeypatch, (6, 1), ["sm_75", "sm_80", "sm_86", "sm_90", "sm_120"], free_gb=1.9)
    gpu, kernels = check_gpu()
    assert gpu.ok and "GTX 1050" in gpu.summary and "compute capability 6.1 (sm_61)" in gpu.summary
    assert not kernels.ok and kernels.fatal
    assert "no kernels for sm_61" in kernels.summary and "sm_75" in kernels.summary
    assert "download.pytorch.org/whl/cu126" in kernels.fix and "dropped sm_50-sm_70" in kernels.fix
    assert "cu128" in torch_build_for(12, 0) and "CPU" in torch_build_for(3, 7)


def test_faked_card_with_kernels_reports_free_vram_and_auto_preset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_gpu(monkeypatch, (6, 1), ["sm_50", "sm_60", "sm_70", "sm_75"], free_gb=3.0)
    gpu, kernels, vram = check_gpu(OptimizationConfig(vram_preset="2gb"))
    assert gpu.ok and kernels.ok and "kernels for sm_61" in kernels.summary
    assert vram.ok and "3,072 MB free" in vram.summary and "auto picks 3gb" in vram.summary
    assert "(configured: 2gb)" in vram.summary
    low = check_vram(1200)
    assert not low.ok and not low.fatal and "auto picks 2gb" in low.summary and low.fix


def test_token_missing_present_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = check_token({}, "my.env")
    assert not missing.ok and missing.fatal and "DISCORD_TOKEN" in missing.fix
    assert "my.env" in missing.summary
    env_file = tmp_path / ".env"
    env_file.write_text(f"DISCORD_TOKEN={TOKEN}\nSTORAGE_OUTPUTS_DIR=pictures\n")
    settings = read_env(env_file)
    assert settings["STORAGE_OUTPUTS_DIR"] == "pictures"
    found = check_token(settings)
    assert found.ok and TOKEN not in found.summary and "secret" not in found.summary
    monkeypatch.setenv("STORAGE_OUTPUTS_DIR", "elsewhere")  # the environment wins over .env
    assert read_env(env_file)["STORAGE_OUTPUTS_DIR"] == "elsewhere"
    odd = check_token({"DISCORD_TOKEN": "not a token"})
    assert not odd.ok and not odd.fatal and "not a token" not in odd.summary


def test_model_checks(tmp_path: Path) -> None:
    assert check_model(ModelConfig(model_id="demo")).ok
    missing = check_model(ModelConfig(model_id=str(tmp_path / "nowhere")))
    assert not missing.ok and missing.fatal and "path not found" in missing.summary
    # conftest sets HF_HUB_OFFLINE=1: an uncached hub model cannot be fetched.
    hub = check_model(ModelConfig(model_id="someone/uncached", cache_dir=tmp_path / "cache"))
    assert not hub.ok and hub.fatal and "MODEL_ID=demo" in hub.fix


def test_disk_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_disk("outputs", tmp_path / "not" / "yet" / "made", need_mb=1).ok
    usage = type("Usage", (), {"free": 50 * 2**20})
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage)
    full = check_disk("outputs", tmp_path)
    assert not full.ok and full.fatal and "50 MB free" in full.summary
    usage.free = 1000 * 2**20
    low = check_disk("outputs", tmp_path)
    assert not low.ok and not low.fatal


def run_doctor(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    prefixes = ("MODEL_", "OPT_", "GEN_", "STORAGE_", "DISCORD_", "BOT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "engine", "doctor", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text(f"DISCORD_TOKEN={TOKEN}\nMODEL_ID=demo\n")
    good = run_doctor(tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "No problems found." in good.stdout and "secret" not in good.stdout
    assert "torch " in good.stdout and "no CUDA GPU" in good.stdout
    assert "embeddings" in good.stdout and "LoRA folder" in good.stdout
    other = tmp_path / "other.env"
    other.write_text("MODEL_ID=demo\n")
    # The failing case in this process (a second interpreter costs seconds), with the same env.
    for key in list(os.environ):
        if key.startswith(("MODEL_", "OPT_", "GEN_", "STORAGE_", "DISCORD_", "BOT_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    assert doctor.main(["--env-file", str(other)]) == 1
    fixes = capsys.readouterr().out.split("To fix:")[1].strip().splitlines()
    assert fixes == [f"- token: put DISCORD_TOKEN=<token> in {other} "
                     "(Developer Portal -> Bot -> Reset Token) (the bot cannot start)"]  # fmt: skip


def test_doctor_subcommand_and_a_prompt_named_doctor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.__main__ as cli

    monkeypatch.setattr(cli, "quiet_libraries", lambda: None)
    monkeypatch.setattr(doctor, "main", lambda argv=None: 7 if argv == ["--env-file", "x"] else 8)
    assert cli.main(["doctor", "--env-file", "x"]) == 7
    prompts: list[str] = []
    monkeypatch.setattr(
        cli, "_generate", lambda config, request, *a: prompts.append(request.prompt)
    )
    cli.main(["--", "doctor"])
    cli.main(["doctor please"])
    assert prompts == ["doctor", "doctor please"]
