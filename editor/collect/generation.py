"""Batched generation for collect and detect: one decode over prompts on hneurons' compacting decoder
(:mod:`editor.collect.sampler`), the stop tokens of a model's prompts, and the Generation records
(text, response token ids, truncated or not) the judges and later stages read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..data.prompting import Prompt, stop_token_ids
from ..model.loading import LoadedModel
from .sampler import DecodeSettings, PromptState, decode, newline_token_ids
from .sampler import left_pad as sampler_left_pad
from .settings import CollectSettings


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # response tokens (no padding; end-of-turn token excluded)
    truncated: bool  # hit max_new_tokens without ending its turn

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def left_pad_prompts(prompts: Sequence[Prompt], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return sampler_left_pad([p.input_ids for p in prompts], pad_id, device)


def finish_generation(tokenizer: Any, new_ids: list[int], ended: bool, stop_at_newline: bool) -> Generation:
    """Text of one decoded row; base-model prompting ends the answer at its first newline."""
    if stop_at_newline and new_ids and ended:
        last = tokenizer.decode(new_ids, skip_special_tokens=True)
        if "\n" in last:
            # The last token brought the newline: keep it when it also brought answer text ("Paris.\n").
            before = last.split("\n", 1)[0].rstrip()
            previous = tokenizer.decode(new_ids[:-1], skip_special_tokens=True).rstrip()
            new_ids = new_ids if len(before) > len(previous) else new_ids[:-1]
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if stop_at_newline:
        text = text.split("\n", 1)[0]
    return Generation(text.strip(), list(new_ids), truncated=not ended)



def stop_sets(lm: LoadedModel, prompts: Sequence[Prompt]) -> tuple[set[int], set[int] | None]:
    """Tokens that end a row without being kept (end of turn, padding), and those kept (newlines of
    base-model prompting)."""
    tok = lm.tokenizer
    stops = set(stop_token_ids(tok, getattr(lm.model, "generation_config", None)))
    if tok.pad_token_id is not None:
        stops.add(tok.pad_token_id)
    newline = newline_token_ids(tok) if any(p.stop_at_newline for p in prompts) else None
    return stops, newline


def decode_settings(settings: CollectSettings, sample: bool) -> DecodeSettings:
    return DecodeSettings(max_new_tokens=settings.max_new_tokens, sample=sample, temperature=settings.temperature,
                          top_k=settings.top_k, top_p=settings.top_p)


@torch.no_grad()
def generate(lm: LoadedModel, prompts: Sequence[Prompt], settings: CollectSettings, *, sample: bool,
             seed: int | None = None, state: PromptState | None = None,
             rows: Sequence[int] | None = None) -> list[Generation]:
    """One batched decode over left-padded prompts (greedy, or sampled with ``seed``); rows leave the
    batch as soon as they end their turn (:mod:`editor.collect.sampler`).

    ``state``: the prompts' prompt pass, done once by :func:`editor.collect.sampler.prefill` for several decodes;
    ``rows`` then says which of its prompts ``prompts`` are (their indices in the state).
    :func:`editor.collect.vllm_backend.vllm_generate` is the same decode on vLLM's engine.
    """
    tok = lm.tokenizer
    stops, newline = stop_sets(lm, prompts)
    decoded = decode(lm.model, [p.input_ids for p in prompts], decode_settings(settings, sample),
                     stop_ids=stops, pad_id=tok.pad_token_id, stop_token_ids=newline,
                     seed=settings.seed if seed is None else seed, state=state, rows=rows)
    return [finish_generation(tok, ids, ended, p.stop_at_newline) for (ids, ended), p in zip(decoded, prompts)]
