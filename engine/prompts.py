"""Prompt encoding that keeps prompts longer than CLIP's 77 tokens instead of cutting them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

MAX_CHUNKS = 8  # 8 × 75 tokens; beyond this the rest is dropped and reported


@dataclass
class EncodedPrompts:
    """Prompt and negative-prompt embeddings ready for the pipeline, plus a note per text cut short."""

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    chunks: int
    dropped: list[str] = field(default_factory=list)


def dropped_note(field_name: str, text: str) -> str:
    """What a user reads when the end of a prompt was cut: which field and how much, not the text."""
    words = len(text.split())
    if words == 1:
        amount = "its last word was"
    else:
        amount = f"its last {words} words were" if words else "its end was"
    return (
        f"The {field_name} is too long: {amount} left out "
        f"(the model reads at most {MAX_CHUNKS * 75} tokens)."
    )


def _notes(pos_dropped: str, neg_dropped: str) -> list[str]:
    pairs = (("prompt", pos_dropped), ("negative prompt", neg_dropped))
    return [dropped_note(name, text) for name, text in pairs if text.strip()]


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
    return EncodedPrompts(prompt_embeds, negative_embeds, count, _notes(pos_dropped, neg_dropped))


def prompt_arguments(
    pipe: Any, prompt: str, negative: str, device: torch.device, guidance: bool
) -> tuple[dict[str, Any], list[str]]:
    """Pipeline keyword arguments for a prompt as the user wrote it, and any warnings.

    `<lora:…>` tags are removed; text without weights takes exactly today's path (diffusers' own
    encoding, or 75-token windows when long); weighted text is encoded by compel in the same windows.
    """
    from engine.prompt_syntax import (
        drop_break,
        is_plain,
        parse_weights,
        plain_text,
        strip_lora_tags,
    )

    prompt, negative = strip_lora_tags(prompt), strip_lora_tags(negative)
    notes: list[str] = []
    prompt, had_break = drop_break(prompt)
    negative, neg_break = drop_break(negative)
    for name, found in (("prompt", had_break), ("negative prompt", neg_break)):
        if found:
            notes.append(f"`BREAK` in the {name} is not supported here and was ignored.")
    pos = parse_weights(prompt)
    neg = parse_weights(negative) if guidance else [("", 1.0)]
    if not (is_plain(pos) and is_plain(neg)):
        encoded = encode_weighted_prompt(pipe, pos, neg, device, guidance)
    else:
        if _has_syntax(prompt):
            prompt = plain_text(pos)
        if _has_syntax(negative):
            negative = plain_text(neg)
        if not needs_chunking(pipe.tokenizer, prompt, negative):
            return {"prompt": prompt, "negative_prompt": negative or None}, notes
        convert = getattr(pipe, "maybe_convert_prompt", None)
        if convert is not None:  # multi-vector embeddings: 'name' -> 'name name_1 …'
            prompt, negative = convert(prompt, pipe.tokenizer), convert(negative, pipe.tokenizer)
        encoded = encode_long_prompt(pipe, prompt, negative, device, guidance)
    kwargs: dict[str, Any] = {"prompt_embeds": encoded.prompt_embeds}
    if encoded.negative_embeds is not None:
        kwargs["negative_prompt_embeds"] = encoded.negative_embeds
    return kwargs, notes + encoded.dropped


def _has_syntax(text: str) -> bool:
    return any(c in text for c in "()[]\\")


def _cap_fragments(
    tokenizer: Any, fragments: list[tuple[str, float]]
) -> tuple[list[tuple[str, float]], str]:
    """Keep at most MAX_CHUNKS windows of tokens; return the kept fragments and the dropped text."""
    budget = MAX_CHUNKS * (tokenizer.model_max_length - 2)
    kept: list[tuple[str, float]] = []
    dropped: list[str] = []
    for text, weight in fragments:
        ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
        if len(ids) <= budget:
            kept.append((text, weight))
            budget -= len(ids)
            continue
        if budget > 0:
            kept.append((tokenizer.decode(ids[:budget]), weight))
        dropped.append(tokenizer.decode(ids[budget:]) if budget > 0 else text)
        budget = 0
    return kept or [("", 1.0)], " ".join(d.strip() for d in dropped if d.strip())


def encode_weighted_prompt(
    pipe: Any,
    positive: list[tuple[str, float]],
    negative: list[tuple[str, float]],
    device: torch.device,
    guidance: bool,
) -> EncodedPrompts:
    """Encode (fragment, weight) lists with compel in 75-token windows, padded to one length."""
    try:
        from compel import Compel
        from compel.embeddings_provider import SplitLongTextMode
    except ImportError:  # pragma: no cover - compel is a dependency; a broken install says so
        raise ValueError(
            "prompt: weighted text like (word:1.3) needs the 'compel' package; "
            "install it (pip install compel) or remove the brackets"
        ) from None
    convert = getattr(pipe, "maybe_convert_prompt", None)
    if convert is not None:  # multi-vector embeddings: 'name' -> 'name name_1 …'
        positive = [(convert(t, pipe.tokenizer), w) for t, w in positive]
        negative = [(convert(t, pipe.tokenizer), w) for t, w in negative]
    positive, pos_dropped = _cap_fragments(pipe.tokenizer, positive)
    negative, neg_dropped = _cap_fragments(pipe.tokenizer, negative)
    compel = Compel(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.BRUTAL,  # plain 75-token windows, as unweighted
        device=str(device),
    )
    provider = compel.conditioning_provider
    with torch.no_grad():

        def encode(fragments: list[tuple[str, float]]) -> torch.Tensor:
            return provider.get_embeddings_for_weighted_prompt_fragments(
                text_batch=[[t for t, _ in fragments]],
                fragment_weights_batch=[[w for _, w in fragments]],
                device=str(device),
            )

        pos = encode(positive)
        neg = encode(negative) if guidance else None
        if neg is not None:
            pos, neg = compel.pad_conditioning_tensors_to_same_length([pos, neg])
    dtype = pipe.text_encoder.dtype
    chunks = pos.shape[1] // pipe.tokenizer.model_max_length
    dropped = _notes(pos_dropped, neg_dropped)
    return EncodedPrompts(
        pos.to(device, dtype), None if neg is None else neg.to(device, dtype), chunks, dropped
    )
