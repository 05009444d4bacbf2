"""Weighted prompts on the tiny model: compel's conditioning, 75-token windows, plain text unchanged."""

from __future__ import annotations

import torch

from engine.generator import TextToImageGenerator
from engine.prompt_syntax import parse_weights
from engine.prompts import encode_long_prompt, encode_weighted_prompt, prompt_arguments

CPU = torch.device("cpu")


def weighted(gen: TextToImageGenerator, text: str) -> torch.Tensor:
    encoded = encode_weighted_prompt(gen.pipe, parse_weights(text), [("", 1.0)], CPU, False)
    return encoded.prompt_embeds


def test_plain_text_takes_todays_path_bit_for_bit(tiny_generator: TextToImageGenerator) -> None:
    pipe = tiny_generator.pipe
    kwargs, notes = prompt_arguments(pipe, "a red castle", "blurry", CPU, True)
    assert kwargs == {"prompt": "a red castle", "negative_prompt": "blurry"} and notes == []
    long = "a red castle at dusk with a green garden, " * 12
    kwargs, _ = prompt_arguments(pipe, long, "blurry", CPU, True)
    today = encode_long_prompt(pipe, long, "blurry", CPU, True)
    assert torch.equal(kwargs["prompt_embeds"], today.prompt_embeds)
    assert torch.equal(kwargs["negative_prompt_embeds"], today.negative_embeds)
    # Tags and escapes are syntax, not words: the encoder sees the text without them.
    kwargs, _ = prompt_arguments(pipe, r"a \(red\) castle <lora:ink:0.5>", "", CPU, True)
    assert kwargs["prompt"] == "a (red) castle"


def test_weight_scales_the_tokens_contribution(tiny_generator: TextToImageGenerator) -> None:
    empty = weighted(tiny_generator, "")
    plain = weighted(tiny_generator, "a red castle")
    strong = weighted(tiny_generator, "a (red:1.5) castle")
    red = 2  # <bos> a red castle
    # compel's plain encoding matches diffusers' within float noise.
    reference = tiny_generator.pipe.encode_prompt("a red castle", CPU, 1, False)[0]
    assert torch.allclose(plain, reference, atol=1e-5)
    assert torch.allclose(strong[0, red] - empty[0, red], 1.5 * (plain[0, red] - empty[0, red]))
    others = [i for i in range(plain.shape[1]) if i != red]
    assert torch.equal(strong[0, others], plain[0, others])
    # (red) is 1.1; [red] pulls towards the prompt without 'red' (compel's down-weighting).
    light = weighted(tiny_generator, "a (red) castle")
    assert torch.allclose(light[0, red] - empty[0, red], 1.1 * (plain[0, red] - empty[0, red]))
    without = weighted(tiny_generator, "a (red:0) castle")
    lowered = weighted(tiny_generator, "a [red] castle")
    assert 0 < (lowered - without).norm() < (plain - without).norm()


def test_weighted_long_prompt_uses_75_token_windows(tiny_generator: TextToImageGenerator) -> None:
    pipe = tiny_generator.pipe
    long = "a (red:1.2) castle at dusk with a green garden, " * 12
    kwargs, notes = prompt_arguments(pipe, long, "[blurry]", CPU, True)
    length = pipe.tokenizer.model_max_length
    windows = -(-len(pipe.tokenizer(long.replace("(", "").replace(":1.2)", "")).input_ids) // 75)
    assert kwargs["prompt_embeds"].shape[1] == length * windows > length
    assert kwargs["negative_prompt_embeds"].shape == kwargs["prompt_embeds"].shape
    assert notes == []
    too_long = "(red:1.2) castle " * 400
    kwargs, notes = prompt_arguments(pipe, too_long, "", CPU, True)
    assert kwargs["prompt_embeds"].shape[1] == length * 8
    (note,) = notes
    assert note.startswith("The prompt is too long: its last ") and "castle" not in note
    kwargs, notes = prompt_arguments(pipe, "a castle", "(blurry:1.2) " * 700, CPU, True)
    (note,) = notes
    assert note.startswith("The negative prompt is too long: its last ")


def test_weighted_prompt_generates_and_keeps_the_prompt_as_written(
    tiny_generator: TextToImageGenerator,
) -> None:
    import numpy as np

    prompt = "a (red:1.4) castle, [blurry]"
    images = tiny_generator.generate(prompt, seed=5, num_inference_steps=1)
    plain = tiny_generator.generate("a red castle, blurry", seed=5, num_inference_steps=1)
    assert images[0].info["parameters"].startswith(prompt + "\n")
    diff = np.abs(np.asarray(images[0], np.int16) - np.asarray(plain[0], np.int16)).mean()
    assert diff > 0
