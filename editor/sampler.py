"""A batched decoder that drops finished rows: the sampling engine of collect and detect.

``transformers``' ``generate`` keeps every row of a batch in the forward pass until the longest one
ends. Short factual answers (10-20 tokens) next to the occasional 50-token ramble then pay for 50
steps each. This decoder removes a row from the batch (and from the KV cache) as soon as it ends its
turn, so the cost follows the tokens actually generated. It also asks the model for the last position's
logits only during the prompt pass.

Greedy decoding gives the same tokens as ``generate(do_sample=False)``. Sampling applies temperature,
then top-k, then top-p (nucleus), as ``generate`` does, and draws with ``torch.multinomial`` from a
generator seeded by the caller, so the same prompts, batch and seed give the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 50
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def warp(logits: torch.Tensor, settings: DecodeSettings) -> torch.Tensor:
    """Temperature, top-k, top-p on [rows, vocab] logits (masked entries become -inf)."""
    logits = logits.float() / settings.temperature
    if settings.top_k and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - settings.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


@torch.no_grad()
def decode(model, prompts: Sequence[Sequence[int]], settings: DecodeSettings, *, stop_ids: set[int], pad_id: int,
           stop_token_ids: set[int] | None = None, seed: int | None = None) -> list[tuple[list[int], bool]]:
    """Generate a continuation for every prompt; returns (new token ids, ended) per prompt.

    A row ends at a token in ``stop_ids`` (not included in its ids) or at a token in ``stop_token_ids``
    (included: e.g. a token that contains a newline, for base-model prompting). ``ended`` is False when
    the row hit ``max_new_tokens`` first.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    generator = None
    if settings.sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(0 if seed is None else int(seed))
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    logits = out.logits[:, -1, :]
    rows = torch.arange(len(prompts), device=device)  # original index of every row still decoding
    last_pos = positions[:, -1]
    tokens: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    include = stop_token_ids or set()
    for step in range(settings.max_new_tokens):
        if settings.sample:
            probs = warp(logits, settings).softmax(dim=-1)
            chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            chosen = logits.argmax(dim=-1)
        keep = []
        for i, (row, tok) in enumerate(zip(rows.tolist(), chosen.tolist())):
            if tok in stop_ids:
                ended[row] = True
                continue
            tokens[row].append(tok)
            if tok in include:
                ended[row] = True
                continue
            keep.append(i)
        if not keep or step == settings.max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            rows, mask, chosen, last_pos = rows[index], mask[index], chosen[index], last_pos[index]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                    cache=cache, use_cache=True)
        logits = out.logits[:, -1, :]
    return [(tokens[i], ended[i]) for i in range(len(prompts))]


def newline_token_ids(tokenizer) -> set[int]:
    """Ids of every token whose text contains a newline (cached on the tokenizer object)."""
    cached = getattr(tokenizer, "_hneurons_newline_ids", None)
    if cached is None:
        cached = {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
        try:
            tokenizer._hneurons_newline_ids = cached
        except AttributeError:
            pass
    return cached
