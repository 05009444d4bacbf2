"""LoRA training on the tiny pipeline (CPU): loss, files, sharing, resume, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from engine.lora import LoraManager, inspect_lora_file
from engine.train_lora import main as cli_main
from engine.training import files
from engine.training.config import TrainConfig
from engine.training.trainer import LoraTrainer

PROMPT = "a photo of sks"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Two shared cores: one torch thread is several times faster than two fighting threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 64 px images of a red disc moving across a white square; one has a caption file."""
    folder = tmp_path_factory.mktemp("dataset")
    for i in range(5):
        img = Image.new("RGB", (64, 64), (255, 255, 255))
        ImageDraw.Draw(img).ellipse((6 + 5 * i, 10, 38 + 5 * i, 42), fill=(200, 30, 30))
        img.save(folder / f"{i:04d}.png")
    (folder / "0000.txt").write_text("a red circle on white background, sks style\n")
    return folder


def make_config(dataset: Path, model: Path, out: Path, **overrides: object) -> TrainConfig:
    """Small, fast training settings for the tiny model."""
    values: dict[str, object] = {
        "dataset_dir": dataset,
        "output_dir": out,
        "model": str(model),
        "resolution": 64,
        "max_steps": 10,
        "lr": 1e-2,
        "checkpoint_every": 0,
        "sample_steps": 2,
        "seed": 0,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def load_tiny(model: Path):
    """The tiny pipeline through the engine's loading code, fp32 on the CPU."""
    from engine.pipeline import load_pipeline, resolve_model_source

    return load_pipeline(resolve_model_source(str(model)))


def generate(pipe, prompt: str = PROMPT, steps: int = 2) -> np.ndarray:
    """A deterministic small generation as a float array."""
    return pipe(
        prompt,
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).images[0]


@pytest.fixture(scope="module")
def trained(dataset: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 60-step run with alpha != rank, with the loss on fixed draws before and after."""
    out = tmp_path_factory.mktemp("run") / "disc"
    config = make_config(dataset, tiny_model_dir, out, max_steps=60, rank=4, alpha=8)
    trainer = LoraTrainer(config)
    trainer.setup()
    before = trainer.evaluate_loss()
    trainer.train_steps(60)
    after = trainer.evaluate_loss()
    output = trainer.finish()
    return output, before, after


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    base = {"dataset_dir": tmp_path, "output_dir": tmp_path / "o", "model": "x/y"}
    for field, value in [
        ("max_steps", 0),
        ("max_steps", 20001),
        ("rank", 0),
        ("rank", 129),
        ("lr", 0.0),
        ("resolution", 100),
        ("mixed_precision", "fp8"),
        ("cache_latents", "sometimes"),
        ("min_snr_gamma", -1.0),
        ("name", "../evil"),
        ("batch_size", 0),
    ]:
        with pytest.raises(ValueError, match=field):
            TrainConfig(**base, **{field: value})  # type: ignore[arg-type]
    config = TrainConfig(**base, rank=8)  # type: ignore[arg-type]
    assert config.alpha == 8.0 and config.name == "o"
    cpu = config.resolved("cpu")
    assert cpu["mixed_precision"] == "no" and not cpu["gradient_checkpointing"]
    assert cpu["cache_latents"] and cpu["cache_text_embeddings"] and not cpu["use_8bit_adam"]
    assert (
        TrainConfig(**base, train_text_encoder=True).resolved("cpu")["cache_text_embeddings"]
        is False
    )  # type: ignore[arg-type]


def test_loss_goes_down(trained) -> None:
    output, before, after = trained
    curve = output.loss_curve
    assert len(curve) == 60 and all(np.isfinite(curve))
    fifth = len(curve) // 5
    first, last = float(np.mean(curve[:fifth])), float(np.mean(curve[-fifth:]))
    assert last < 0.95 * first, (first, last)
    # The same noise and timesteps before and after: the drop is not luck of the draw.
    assert after < 0.95 * before, (before, after)


def test_output_files(trained) -> None:
    output, _, _ = trained
    assert output.weights_path.is_file() and output.kohya_path.is_file()
    assert output.sample_path is not None and Image.open(output.sample_path).size == (64, 64)
    assert files.sha256_file(output.weights_path) == output.sha256
    info = json.loads(output.info_path.read_text())
    assert info["trigger_word"] == "sks" and info["steps"] == 60 and info["rank"] == 4
    assert info["alpha"] == 8 and len(info["loss_curve"]) == 60
    assert info["parameters"]["lr"] == 1e-2
    diffusers_info = inspect_lora_file(output.weights_path)
    kohya_info = inspect_lora_file(output.kohya_path)
    assert (diffusers_info.format, diffusers_info.rank) == ("diffusers", 4)
    assert (kohya_info.format, kohya_info.rank) == ("kohya", 4)
    assert kohya_info.metadata["ss_network_alpha"] == "8.0"
    with safe_open(str(output.kohya_path), framework="pt") as handle:
        names = handle.keys()
        alphas = [handle.get_tensor(k).item() for k in names if k.endswith(".alpha")]
    assert alphas and set(alphas) == {8.0}
    assert not list(output.output_dir.parent.glob(".tmp-*"))


def test_saved_lora_loads_in_plain_diffusers(trained, tiny_model_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    output, _, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    base = generate(pipe)
    pipe.load_lora_weights(str(output.output_dir), weight_name=output.weights_path.name)
    with_lora = generate(pipe)
    assert np.abs(with_lora - base).max() > 1e-3

    # Same prompt, seed, steps and size as the sample: equal only if alpha/rank scale survived.
    sample = np.asarray(Image.open(output.sample_path), dtype=np.float32) / 255
    assert np.abs(sample - with_lora).max() <= 2 / 255

    fresh = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), safety_checker=None)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(str(output.output_dir), weight_name=output.kohya_path.name)
    np.testing.assert_allclose(generate(fresh), with_lora, atol=1e-5)


def test_shared_pipeline_is_left_as_found(
    dataset: Path, tiny_model_dir: Path, tiny_lora: Path, tiny_lora_b: Path, tmp_path: Path
) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = load_tiny(tiny_model_dir)
    manager = LoraManager(pipe)
    manager.load(tiny_lora, "style")
    manager.activate(None)
    base = generate(pipe)
    manager.activate("style", 0.7)
    styled = generate(pipe)
    manager.activate(None)

    config = make_config(dataset, tiny_model_dir, tmp_path / "shared", max_steps=8)
    trainer = LoraTrainer(config, pipe=pipe)
    trainer.setup()
    assert np.array_equal(generate(pipe), base)
    trainer.train_steps(4)
    assert np.array_equal(generate(pipe), base)
    # A generation with another LoRA between slices flips peft's requires_grad flags ...
    manager.activate("style", 0.7)
    assert np.array_equal(generate(pipe), styled)
    trainer.resume()
    assert all(p.requires_grad for p in trainer.unet_params)
    assert not any(
        p.requires_grad for n, p in pipe.unet.named_parameters() if trainer.adapter_name not in n
    )
    trainer.suspend()
    trainer.train_steps(4)
    assert np.array_equal(generate(pipe), styled)
    manager.load(tiny_lora_b, "other")  # loaded while the training adapter is resident
    manager.activate("other", 1.0)
    other = generate(pipe)
    manager.activate(None)
    shared_losses = list(trainer.losses)
    trainer.finish()

    assert np.array_equal(generate(pipe), base)
    manager.activate("style", 0.7)
    assert np.array_equal(generate(pipe), styled)
    assert pipe.get_list_adapters() == {"unet": ["style", "other"]}
    manager.activate("other", 1.0)
    assert np.array_equal(generate(pipe), other)
    reference = load_tiny(tiny_model_dir)
    reference_manager = LoraManager(reference)
    reference_manager.load(tiny_lora_b, "other")
    reference_manager.activate("other", 1.0)
    assert np.array_equal(generate(reference), other)
    assert not any(p.requires_grad for n, p in pipe.unet.named_parameters() if "lora_" not in n)

    # ... yet the resident LoRA never leaked into training: a run on a clean model matches.
    alone = LoraTrainer(make_config(dataset, tiny_model_dir, tmp_path / "alone", max_steps=8))
    alone.setup()
    alone.train_steps(8)
    np.testing.assert_allclose(alone.losses, shared_losses, rtol=1e-4)
    alone.abort()

    # Without other adapters, abort removes every peft layer again.
    plain = load_tiny(tiny_model_dir)
    plain_base = generate(plain)
    trainer = LoraTrainer(make_config(dataset, tiny_model_dir, tmp_path / "a2"), pipe=plain)
    trainer.setup()
    trainer.train_steps(2)
    trainer.abort()
    assert not any(isinstance(m, BaseTunerLayer) for m in plain.unet.modules())
    assert np.array_equal(generate(plain), plain_base)
    assert not (tmp_path / "a2" / "final").exists()


def test_cancel_and_progress(dataset: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = make_config(
        dataset, tiny_model_dir, tmp_path / "c", max_steps=10, cache_text_embeddings=False
    )
    trainer = LoraTrainer(config)
    trainer.setup()
    assert not trainer.embeddings and trainer.latent_stats
    cancel = threading.Event()
    seen: list[int] = []

    def on_step(p) -> None:
        seen.append(p.step)
        if p.step == 3:
            cancel.set()

    progress = trainer.train_steps(100, cancel=cancel, progress=on_step)
    assert seen == [1, 2, 3]
    assert (progress.step, progress.max_steps, progress.done) == (3, 10, False)
    assert progress.loss == trainer.losses[-1] and progress.seconds_per_step
    progress = trainer.train_steps(100)
    assert progress.step == 10 and progress.done
    assert trainer.train_steps(5).step == 10
    trainer.abort()


def test_resume_after_crash_matches_uninterrupted(
    dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    straight = LoraTrainer(make_config(dataset, tiny_model_dir, tmp_path / "a", max_steps=12))
    straight.setup()
    straight.train_steps(12)
    want_unet, _ = straight.checkpoints.lora_state()

    out = tmp_path / "b"
    first = LoraTrainer(make_config(dataset, tiny_model_dir, out, max_steps=12, checkpoint_every=6))
    first.setup()
    first.train_steps(9)
    del first  # a crash: no finish, no abort
    # Debris of a crash while writing: a temp folder and a checkpoint without its state file.
    shutil.copytree(out / "checkpoint-6", out / ".tmp-checkpoint-12-dead")
    (out / ".tmp-checkpoint-12-dead" / files.STATE_NAME).write_text('{"step": 12}')
    shutil.copytree(out / "checkpoint-6", out / "checkpoint-9")
    (out / "checkpoint-9" / files.STATE_NAME).unlink()

    second = LoraTrainer(
        make_config(dataset, tiny_model_dir, out, max_steps=12, checkpoint_every=6)
    )
    second.setup()
    assert second.step == 6 and len(second.losses) == 6
    assert not (out / ".tmp-checkpoint-12-dead").exists()
    progress = second.train_steps(100)
    assert progress.step == 12 and progress.done
    got_unet, _ = second.checkpoints.lora_state()
    assert got_unet.keys() == want_unet.keys()
    for key, value in want_unet.items():
        torch.testing.assert_close(got_unet[key], value, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-4)
    second.abort()
    straight.abort()

    with pytest.raises(ValueError, match="output_dir"):
        LoraTrainer(make_config(dataset, tiny_model_dir, out, rank=8)).setup()


def test_atomic_dir_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint-5"
    with pytest.raises(RuntimeError), files.atomic_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with files.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with files.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]
    assert [p.name for p in target.iterdir()] == ["b.txt"]


def test_text_encoder_v_prediction_min_snr(
    dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    model = tmp_path / "vpred"
    shutil.copytree(tiny_model_dir, model)
    sched = model / "scheduler" / "scheduler_config.json"
    sched.write_text(
        json.dumps({**json.loads(sched.read_text()), "prediction_type": "v_prediction"})
    )
    config = make_config(
        dataset,
        model,
        tmp_path / "te",
        max_steps=3,
        train_text_encoder=True,
        min_snr_gamma=5.0,
        gradient_checkpointing=True,
        cache_latents=False,
        batch_size=2,
        sample_steps=0,
    )
    trainer = LoraTrainer(config)
    trainer.setup()
    assert trainer.prediction_type == "v_prediction" and not trainer.latent_stats
    trainer.resume()
    assert trainer.unet.is_gradient_checkpointing
    trainer.suspend()
    assert not trainer.unet.is_gradient_checkpointing
    trainer.train_steps(3)
    _, te_state = trainer.checkpoints.lora_state()
    assert te_state and any(v.abs().max() > 0 for k, v in te_state.items() if "lora_B" in k)
    output = trainer.finish()
    assert output.sample_path is None
    _, te_saved = files.read_lora_file(output.weights_path)
    assert te_saved.keys() == te_state.keys()
    assert all(torch.equal(te_saved[k], te_state[k]) for k in te_state)
    assert inspect_lora_file(output.weights_path).has_text_encoder
    with safe_open(str(output.kohya_path), framework="pt") as handle:
        names = handle.keys()
    assert any(k.startswith("lora_te_") for k in names)
    if not _peft_loads_text_encoder_loras():
        pytest.skip("transformers needs peft >= 0.22 to load text-encoder LoRAs")
    outs = []
    for weight in (output.weights_path, output.kohya_path):
        pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(weight.parent), weight_name=weight.name)
        outs.append(generate(pipe))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def _peft_loads_text_encoder_loras() -> bool:
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("peft")) >= Version("0.22")


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--dataset_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path)]) == 2
    assert "dataset_dir" in capsys.readouterr().err
    assert (
        cli_main(
            ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--rank", "0"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: rank") and "\n" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    assert (
        cli_main(
            ["--dataset_dir", str(empty), "--output_dir", str(tmp_path / "o"), "--model", "x/y"]
        )
        == 2
    )
    assert "no usable images" in capsys.readouterr().err


def test_cli_trains_and_writes_final(dataset: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "lora" / "disc"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.train_lora",
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--max_steps",
            "4",
            "--checkpoint_every",
            "2",
            "--resolution",
            "64",
            "--lr",
            "1e-3",
            "--sample_steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in (
        "pytorch_lora_weights.safetensors",
        "training.json",
        "sample.png",
        "disc.safetensors",
    ):
        assert (out / "final" / name).is_file(), name
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()
    assert json.loads((out / "final" / "training.json").read_text())["steps"] == 4
