"""Textual-inversion embeddings: standard files made here, loaded once, used by name, width checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.embeddings import EmbeddingError, inspect_embedding
from engine.generator import TextToImageGenerator

CPU = torch.device("cpu")


def make_embedding(path: Path, vectors: int, width: int, key: str = "emb_params") -> Path:
    """An embedding file in the web-UI (emb_params) or diffusers (<token>) layout."""
    torch.manual_seed(vectors * 100 + width)
    tensor = (
        torch.randn(vectors, width) if vectors > 1 or key == "emb_params" else torch.randn(width)
    )
    save_file({key: tensor}, str(path))
    return path


def test_embedding_loads_once_and_is_used_by_name(
    tiny_generator: TextToImageGenerator, tmp_path: Path
) -> None:
    pipe = tiny_generator.pipe
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    webui = make_embedding(tmp_path / "zzneg.safetensors", 2, width)
    single = make_embedding(tmp_path / "zzone.safetensors", 1, width, key="<zzone>")
    assert inspect_embedding(webui).vectors == 2 and inspect_embedding(single).vectors == 1

    before = pipe.encode_prompt("a red castle zzneg", CPU, 1, False)[0]
    tiny_generator.load_embedding(webui, "zzneg")
    tiny_generator.load_embedding(webui, "zzneg")  # already loaded: nothing happens
    tiny_generator.load_embedding(single, "zzone")
    vocab = pipe.tokenizer.get_vocab()
    assert {"zzneg", "zzneg_1", "zzone"} <= set(vocab)
    after = pipe.encode_prompt(
        pipe.maybe_convert_prompt("a red castle zzneg", pipe.tokenizer), CPU, 1, False
    )[0]
    assert not torch.allclose(before, after)
    # The learned vectors are the token embeddings now.
    table = pipe.text_encoder.get_input_embeddings().weight
    from safetensors.torch import load_file

    assert torch.allclose(table[vocab["zzneg_1"]], load_file(str(webui))["emb_params"][1])
    images = tiny_generator.generate("a (red:1.2) castle", negative_prompt="zzneg", seed=1)
    assert images[0].info["parameters"].splitlines()[1] == "Negative prompt: zzneg"

    # Unloaded, the name is a plain word again, to the bit, and the other embedding still works.
    rows = table.shape[0]
    zzone_row = table[vocab["zzone"]].clone()
    assert tiny_generator.unload_embedding("zzneg") is True
    assert tiny_generator.unload_embedding("zzneg") is False
    vocab = pipe.tokenizer.get_vocab()
    assert "zzneg" not in vocab and "zzneg_1" not in vocab and "zzone" in vocab
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows - 2
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[vocab["zzone"]], zzone_row)
    again = pipe.encode_prompt(
        pipe.maybe_convert_prompt("a red castle zzneg", pipe.tokenizer), CPU, 1, False
    )[0]
    assert torch.equal(before, again)
    tiny_generator.load_embedding(webui, "zzneg")  # and it can be added again
    assert "zzneg_1" in pipe.tokenizer.get_vocab()


def test_wrong_width_and_bad_files_are_refused(
    tiny_generator: TextToImageGenerator, tmp_path: Path
) -> None:
    wide = make_embedding(tmp_path / "wide.safetensors", 1, 768)
    with pytest.raises(EmbeddingError, match="768 wide but this model's text encoder is 32 wide"):
        tiny_generator.load_embedding(wide, "widething")
    assert "widething" not in tiny_generator.pipe.tokenizer.get_vocab()
    two = tmp_path / "two.safetensors"
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(two))
    with pytest.raises(EmbeddingError, match="holds 2 tensors"):
        tiny_generator.load_embedding(two, "twothing")
    pt = tmp_path / "x.pt"
    pt.write_bytes(b"x")
    with pytest.raises(EmbeddingError, match=r"not a \.safetensors file"):
        tiny_generator.load_embedding(pt, "ptthing")
    with pytest.raises(EmbeddingError, match="may only use letters"):
        tiny_generator.load_embedding(wide, "bad name")
