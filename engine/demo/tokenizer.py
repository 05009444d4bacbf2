"""A word-level CLIPTokenizer written from a word list (the demo model's, and the tests')."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def write_tokenizer(folder: Path, words: Sequence[str]) -> None:
    """Write a word-level CLIPTokenizer whose merges rebuild each whole word from its characters."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[str] = []
    seen: set[str] = set()
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merge = f"{current} {nxt}"
            if merge not in seen:
                seen.add(merge)
                merges.append(merge)
            current = current + nxt
            vocab.setdefault(current, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
