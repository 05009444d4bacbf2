"""Prompt encoding that keeps prompts longer than CLIP's 77 tokens instead of cutting them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

MAX_CHUNKS = 8  # 8 × 75 tokens; beyond this the rest is dropped and reported


@dataclass
class EncodedPrompts:
    """Prompt and negative-prompt embeddings ready for the pipeline, plus what was dropped."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    chunks: int
    dropped: list[str] = field(default_factory=list)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of CLIP tokens in text, without the start/end tokens."""
    return len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def needs_chunking(tokenizer: Any, prompt: str, negative: str) -> bool:
    """True when the prompt or the negative prompt does not fit one CLIP window."""
    window = tokenizer.model_max_length - 2
    return count_tokens(tokenizer, prompt) > window or count_tokens(tokenizer, negative) > window


def _chunk_ids(tokenizer: Any, text: str) -> tuple[list[list[int]], str]:
    """Split text into windows of model_max_length - 2 token ids; return them and any dropped text."""
    window = tokenizer.model_max_length - 2
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)] or [[]]
    dropped = ""
    if len(chunks) > MAX_CHUNKS:
        dropped = tokenizer.decode([t for c in chunks[MAX_CHUNKS:] for t in c])
        chunks = chunks[:MAX_CHUNKS]
    return chunks, dropped


def _encode_chunks(pipe: Any, chunks: list[list[int]], device: torch.device) -> torch.Tensor:
    """Encode each window as its own CLIP pass and join them along the sequence axis."""
    tok = pipe.tokenizer
    length = tok.model_max_length
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = []
    for chunk in chunks:
        ids = [tok.bos_token_id, *chunk, tok.eos_token_id]
        rows.append(ids + [pad] * (length - len(ids)))
    input_ids = torch.tensor(rows, device=device)
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids)[0]
    return hidden.reshape(1, -1, hidden.shape[-1]).to(dtype=pipe.text_encoder.dtype)


def encode_long_prompt(
    pipe: Any, prompt: str, negative: str, device: torch.device, guidance: bool
) -> EncodedPrompts:
    """Encode prompt and negative prompt in 75-token windows with the same number of windows."""
    pos_chunks, pos_dropped = _chunk_ids(pipe.tokenizer, prompt)
    neg_chunks, neg_dropped = _chunk_ids(pipe.tokenizer, negative) if guidance else ([[]], "")
    count = max(len(pos_chunks), len(neg_chunks))
    pos_chunks += [[]] * (count - len(pos_chunks))
    neg_chunks += [[]] * (count - len(neg_chunks))
    prompt_embeds = _encode_chunks(pipe, pos_chunks, device)
    negative_embeds = _encode_chunks(pipe, neg_chunks, device) if guidance else None
    dropped = [d for d in (pos_dropped, neg_dropped) if d]
    return EncodedPrompts(prompt_embeds, negative_embeds, count, dropped)
