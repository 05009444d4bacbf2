"""Several LoRAs per request: <lora:name:w> tags and loras=[...], stacked like diffusers/peft by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.generator import TextToImageGenerator
from engine.lora_stack import folder_resolver, resolve_lora_stack
from engine.requests import GenerationRequest


def unet_output(pipe) -> torch.Tensor:
    """The UNet's prediction for one fixed input: equal outputs mean equal effective weights."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=gen)
    hidden = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return pipe.unet(latents, 10, encoder_hidden_states=hidden).sample


def test_stack_of_two_matches_diffusers_by_hand(
    tiny_generator: TextToImageGenerator, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    names = {"ink": tiny_lora, "detail": tiny_lora_b}
    tiny_generator.lora_resolver = lambda name: names.get(name)
    base = unet_output(tiny_generator.pipe)
    result = tiny_generator.run(
        GenerationRequest(
            prompt="a red castle <lora:ink:0.7> <lora:detail:-0.4>",
            seed=3,
            num_inference_steps=1,
        )
    )
    stacked = unet_output(tiny_generator.pipe)
    assert tiny_generator.lora.active == (("ink", 0.7), ("detail", -0.4))
    assert 'LoRAs: "ink:0.7, detail:-0.4"' in result.parameters[0]
    assert result.parameters[0].startswith("a red castle <lora:ink:0.7> <lora:detail:-0.4>\n")

    reference = StableDiffusionPipeline.from_pretrained(tiny_generator.slot.source.location)
    reference.load_lora_weights(str(tiny_lora.parent), adapter_name="a")
    reference.load_lora_weights(str(tiny_lora_b.parent), adapter_name="b")
    reference.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    by_hand = unet_output(reference)
    assert torch.allclose(stacked, by_hand, atol=1e-5)
    assert (stacked - base).abs().mean() > 1e-3
    reference.set_adapters(["a"], adapter_weights=[0.7])
    assert (unet_output(reference) - stacked).abs().mean() > 1e-4  # the second one counts

    # The next request without tags is back on the base weights; adapters stay resident.
    tiny_generator.run(GenerationRequest(prompt="a red castle", seed=3, num_inference_steps=1))
    assert torch.equal(unet_output(tiny_generator.pipe), base)
    assert {"ink", "detail"} <= set(tiny_generator.lora.resident)


def test_api_loras_stack_on_top_of_the_style(
    tiny_generator: TextToImageGenerator, tiny_lora: Path, tiny_lora_b: Path
) -> None:
    images = tiny_generator.generate(
        "a red castle",
        seed=4,
        num_inference_steps=1,
        lora=str(tiny_lora),
        loras=[(tiny_lora_b, 0.5)],
    )
    assert len(tiny_generator.lora.active) == 2
    assert tiny_generator.lora.active[1][1] == 0.5
    plain = tiny_generator.generate("a red castle", seed=4, num_inference_steps=1)
    assert np.abs(np.asarray(images[0], np.int16) - np.asarray(plain[0], np.int16)).mean() > 0


def test_unknown_and_too_many_loras_are_refused_before_work(
    tiny_generator: TextToImageGenerator, tiny_lora: Path
) -> None:
    tiny_generator.lora_resolver = lambda name: tiny_lora if name != "nope" else None
    with pytest.raises(ValueError, match="unknown LoRA 'nope'"):
        tiny_generator.prepare(GenerationRequest(prompt="x <lora:nope:0.5>"))
    with pytest.raises(ValueError, match="at most 3 LoRAs"):
        tiny_generator.prepare(GenerationRequest(prompt="x <lora:a> <lora:b> <lora:c> <lora:d>"))
    with pytest.raises(ValueError, match="between -2 and 2"):
        tiny_generator.prepare(GenerationRequest(prompt="x", loras=[[str(tiny_lora), 3, "a"]]))


def test_folder_resolver_finds_training_runs_and_refuses_odd_names(tmp_path: Path) -> None:
    run = tmp_path / "ink" / "final"
    run.mkdir(parents=True)
    (tmp_path / "flat.safetensors").write_bytes(b"")
    resolve = folder_resolver(tmp_path)
    assert resolve("ink") == run
    assert resolve("flat") == tmp_path / "flat.safetensors"
    assert resolve("../ink") is None and resolve("missing") is None
    stack = resolve_lora_stack("a <lora:ink:0.3> <lora:ink:0.6>", (), resolve)
    assert [(u.name, u.weight) for u in stack] == [("ink", 0.6)]  # named twice: the last wins
    assert resolve_lora_stack("a", [(str(run), 1)], resolve)[0].name == "ink"
