"""A batched decoder that drops finished rows: the sampling engine of collect and detect.

``transformers``' ``generate`` keeps every row of a batch in the forward pass until the longest one
ends. Short factual answers (10-20 tokens) next to the occasional 50-token ramble then pay for 50
steps each. This decoder removes a row from the batch (and from the KV cache) as soon as it ends its
turn, so the cost follows the tokens actually generated. It also asks the model for the last position's
logits only during the prompt pass. :func:`decode_many` (the eval's greedy generation) and
:func:`decode_continuous` (collect's samples) go further: new rows join the running batch as others finish.

Prompts can be prefilled once and decoded many times (:func:`prefill`, then :func:`decode` with
``state`` and ``rows``): collect asks every question for a greedy answer and k samples, and with the
prompt pass shared the prompts are read once instead of k + 1 times (on SmolLM2 a prompt pass over 32
chat prompts costs about a third of a whole sampled batch).

Greedy decoding gives the same tokens as ``generate(do_sample=False)``. Sampling applies temperature,
then top-k, then top-p (nucleus), as ``generate`` does, and draws with ``torch.multinomial`` from a
generator seeded by the caller, so the same prompts, batch and seed give the same samples. The draw is
made among the top-k candidates only (the same distribution: every other token has probability 0), so
that top-p sorts k values per row instead of the whole vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

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


def candidate_probs(logits: torch.Tensor, settings: DecodeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The warped next-token distribution over the top-k candidates only: (probs [rows, k], token ids).

    The same distribution as ``warp(logits).softmax()`` (tokens outside the top k have probability 0
    there), without sorting the whole vocabulary for top-p: only the k survivors are sorted. Where a row
    has ties at the k-th value (top-k then keeps more than k tokens), or without top-k, every token is a
    candidate and :func:`warp` decides.
    """
    k = settings.top_k
    if k and k < logits.shape[-1]:
        scaled = logits.float() / settings.temperature
        values, index = torch.topk(scaled, k, dim=-1)  # descending
        if not bool(((scaled >= values[..., -1:]).sum(-1) > k).any()):
            if settings.top_p < 1.0:
                ascending = values.flip(-1)
                remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - settings.top_p)
                remove[..., -1:] = False  # always keep the most likely token
                values = values.masked_fill(remove.flip(-1), float("-inf"))
            return values.softmax(dim=-1), index
    probs = warp(logits, settings).softmax(dim=-1)
    return probs, torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)


def draw(logits: torch.Tensor, settings: DecodeSettings, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row: argmax (greedy) or a seeded draw from the warped distribution."""
    if not settings.sample:
        return logits.argmax(dim=-1)
    probs, index = candidate_probs(logits, settings)
    choice = torch.multinomial(probs, 1, generator=generator)
    return index.gather(-1, choice).squeeze(1)


@dataclass
class PromptState:
    """Left-padded prompts after one prompt pass: KV cache, attention mask, last positions, next-token logits."""

    cache: Any  # transformers DynamicCache, [P, ...]
    mask: torch.Tensor  # [P, W]
    last_pos: torch.Tensor  # [P]
    logits: torch.Tensor  # [P, vocab]

    def __len__(self) -> int:
        return self.mask.shape[0]

    def select(self, index: torch.Tensor) -> "PromptState":
        """The rows ``index`` (repeats allowed) as a new state; this one stays untouched for reuse."""
        cache = copy.deepcopy(self.cache)
        cache.batch_select_indices(index)
        return PromptState(cache, self.mask[index], self.last_pos[index], self.logits[index])


MIN_SHARED_PREFIX = 8  # tokens: below this a separate prefix pass costs more than it saves


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (a chat template's system turn), leaving each prompt at least one."""
    if len(prompts) < 2:
        return 0
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for i in range(limit):
        if any(p[i] != first[i] for p in prompts[1:]):
            return i
    return max(limit, 0)


@torch.no_grad()
def prefill(model, prompts: Sequence[Sequence[int]], pad_id: int) -> PromptState:
    """One prompt pass over the left-padded ``prompts`` (logits of the last position only; a prefix every
    prompt shares is run once: :func:`prompt_pass`)."""
    return prompt_pass(model, prompts, pad_id)[0]


@torch.no_grad()
def prompt_pass(model, prompts: Sequence[Sequence[int]], pad_id: int,
                keep: int = 1) -> tuple[PromptState, torch.Tensor, int]:
    """The prompt pass: (state, logits of the last ``keep`` positions [P, keep, vocab], tokens run).

    When the prompts share a prefix of at least ``MIN_SHARED_PREFIX`` tokens (the system turn of a chat
    template) and the model's cache is full attention, the prefix is run once and copied to every row: the
    rows are laid out as [prefix][masked padding][rest of the prompt], with positions that continue the
    prefix, the gap layout a running batch already has after a row joins (:class:`_Batch`); each prompt keeps
    at least ``keep`` tokens of its own. Sliding-window caches keep the plain left-padded pass (a gap inside
    the window would shorten it)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    shared = min(shared_prefix_length(prompts), min(len(p) for p in prompts) - keep)
    cache = DynamicCache(config=model.config)
    if shared < MIN_SHARED_PREFIX or not model_supports_continuous(model):
        ids, mask = left_pad(prompts, pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                       logits_to_keep=keep).logits
        return PromptState(cache, mask, positions[:, -1], logits[:, -1, :]), logits, sum(map(len, prompts))
    prefix = torch.as_tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
    model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
          position_ids=torch.arange(shared, device=device)[None], cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(len(prompts))
    ids, rest_mask = left_pad([p[shared:] for p in prompts], pad_id, device)
    mask = torch.cat([rest_mask.new_ones((len(prompts), shared)), rest_mask], dim=1)
    positions = shared + (rest_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                   logits_to_keep=keep).logits
    tokens = shared + sum(len(p) - shared for p in prompts)
    return PromptState(cache, mask, positions[:, -1], logits[:, -1, :]), logits, tokens


@torch.no_grad()
def decode(model, prompts: Sequence[Sequence[int]] | None, settings: DecodeSettings, *, stop_ids: set[int],
           pad_id: int, stop_token_ids: set[int] | None = None, seed: int | None = None,
           state: PromptState | None = None, rows: Sequence[int] | None = None) -> list[tuple[list[int], bool]]:
    """Generate a continuation for every prompt; returns (new token ids, ended) per prompt.

    A row ends at a token in ``stop_ids`` (not included in its ids) or at a token in ``stop_token_ids``
    (included: e.g. a token that contains a newline, for base-model prompting). ``ended`` is False when
    the row hit ``max_new_tokens`` first.

    With ``state`` (from :func:`prefill`) the prompt pass is skipped: the batch is the state's prompts
    ``rows`` (indices, repeats allowed; default all), and ``prompts`` is not needed.
    """
    if state is None:
        state = prefill(model, prompts, pad_id)  # used once: no copy needed
    else:
        index = torch.arange(len(state)) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
        state = state.select(index.to(state.mask.device))
    device = state.mask.device
    n_rows = len(state)
    generator = _generator(settings, seed, device)
    cache, mask, last_pos, logits = state.cache, state.mask, state.last_pos, state.logits
    rows = torch.arange(n_rows, device=device)  # original index of every row still decoding
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    ended = [False] * n_rows
    include = stop_token_ids or set()
    for step in range(settings.max_new_tokens):
        chosen = draw(logits, settings, generator)
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
    return [(tokens[i], ended[i]) for i in range(n_rows)]


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


# ------------------------------------------------------------------------------------- continuous batching
def supports_continuous(state: PromptState) -> bool:
    """Rows can join a running batch when every cache layer is a plain (full-attention) dynamic layer;
    sliding-window layers keep only their last window, where a row's gap would shift the window."""
    return _full_attention(state.cache)


def model_supports_continuous(model) -> bool:
    """:func:`supports_continuous` for a model's own cache layout, before any prompt pass."""
    from transformers import DynamicCache

    return _full_attention(DynamicCache(config=model.config))


def _full_attention(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class _Batch:
    """The rows decoding together: their KV cache, attention mask, positions and next-token logits.

    Every row has the same cache length L. A row that joins a running batch brings its prompt's cache
    (width W) followed by L - W masked slots (when W > L, the batch is first padded on the left with
    W - L masked columns); leading columns masked in every row are dropped.
    """

    def __init__(self, state: PromptState):
        self.cache, self.mask, self.last_pos, self.logits = state.cache, state.mask, state.last_pos, state.logits
        self.owner: list[int] = []  # request number of every row
        self.tokens: list[list[int]] = []
        self.sampled: list[bool] = []  # False: a greedy row

    def __len__(self) -> int:
        return len(self.owner)

    def join(self, new: PromptState, owners: list[int], sampled: list[bool]) -> None:
        if not self.owner:  # empty: the new rows are the batch
            self.cache, self.mask, self.last_pos, self.logits = new.cache, new.mask, new.last_pos, new.logits
        else:
            gap = self.mask.shape[1] - new.mask.shape[1]
            if gap < 0:  # the batch dropped leading columns below the prompts' width: pad it on the left
                self._pad_left(-gap)
                gap = 0
            for layer, add in zip(self.cache.layers, new.cache.layers):
                keys, values = add.keys, add.values
                if gap > 0:
                    keys = torch.cat([keys, keys.new_zeros(*keys.shape[:2], gap, keys.shape[3])], dim=2)
                    values = torch.cat([values, values.new_zeros(*values.shape[:2], gap, values.shape[3])],
                                       dim=2)
                layer.keys = torch.cat([layer.keys, keys])
                layer.values = torch.cat([layer.values, values])
            mask = torch.cat([new.mask, new.mask.new_zeros(len(new), gap)], dim=1)
            self.mask = torch.cat([self.mask, mask])
            self.last_pos = torch.cat([self.last_pos, new.last_pos])
            self.logits = torch.cat([self.logits, new.logits])
        self.owner += owners
        self.tokens += [[] for _ in owners]
        self.sampled += sampled

    def _pad_left(self, width: int) -> None:
        """Prepend ``width`` masked (never attended) columns to every row's cache and mask."""
        for layer in self.cache.layers:
            k, v = layer.keys, layer.values
            layer.keys = torch.cat([k.new_zeros(*k.shape[:2], width, k.shape[3]), k], dim=2)
            layer.values = torch.cat([v.new_zeros(*v.shape[:2], width, v.shape[3]), v], dim=2)
        self.mask = torch.cat([self.mask.new_zeros(len(self.owner), width), self.mask], dim=1)

    def draw(self, settings: DecodeSettings, generator: torch.Generator | None) -> torch.Tensor:
        """Next token of every row: argmax for greedy rows, a seeded draw for sampled rows."""
        if all(self.sampled):
            return draw(self.logits, settings, generator)
        chosen = self.logits.argmax(dim=-1)
        if any(self.sampled):
            rows = torch.tensor([i for i, s in enumerate(self.sampled) if s], device=chosen.device)
            chosen[rows] = draw(self.logits[rows], settings, generator)
        return chosen

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (compaction), then drop the leading columns no row attends to."""
        if len(rows) < len(self.owner):
            index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
            self.cache.batch_select_indices(index)
            self.mask, self.last_pos, self.logits = self.mask[index], self.last_pos[index], self.logits[index]
            self.owner = [self.owner[i] for i in rows]
            self.tokens = [self.tokens[i] for i in rows]
            self.sampled = [self.sampled[i] for i in rows]
        if self.owner:
            first = int(self.mask.any(dim=0).int().argmax())
            if first > 0:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                self.mask = self.mask[:, first:]


def _generator(settings: DecodeSettings, seed: int | None, device) -> torch.Generator | None:
    if not settings.sample:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(0 if seed is None else int(seed))
    return generator


@torch.no_grad()
def _decode_stream(model, take, settings: DecodeSettings, *, on_finish, max_rows: int, stop_ids: set[int],
                   stop_token_ids: set[int] | None, generator: torch.Generator | None,
                   max_tokens_of=None) -> None:
    """The continuous-batching loop. ``take(free)`` returns up to ``free`` new rows as ``(state, keys, sampled)``
    (a :class:`PromptState` of those rows, a key per row, whether each row samples) or None when there are none;
    it is asked whenever at least a quarter of ``max_rows`` is free (or the batch is empty), so the batch stays
    full without rebuilding the cache after every finished row. ``on_finish(key, tokens, ended, sampled)`` is
    called as each row ends (``tokens, ended`` as :func:`decode` returns them). ``max_tokens_of(key)``, when
    given, is a row's own token limit (else ``settings.max_new_tokens``)."""
    include = stop_token_ids or set()
    batch: _Batch | None = None
    key_of: list[Any] = []  # key of every row ever started, by its request number
    while True:
        free = max_rows - (len(batch) if batch is not None else 0)
        if free > 0 and (batch is None or not batch.owner or free >= max(1, max_rows // 4)):
            new = take(free)
            if new is not None:
                state, keys, sampled = new
                owners = list(range(len(key_of), len(key_of) + len(keys)))
                key_of += list(keys)
                batch = batch if batch is not None else _Batch(state)
                batch.join(state, owners, list(sampled))
        if batch is None or not batch.owner:
            return
        chosen = batch.draw(settings, generator)
        alive = []
        for i, tok in enumerate(chosen.tolist()):
            tokens = batch.tokens[i]
            ended = tok in stop_ids
            if not ended:
                tokens.append(tok)
                ended = tok in include
            limit = settings.max_new_tokens if max_tokens_of is None else max_tokens_of(key_of[batch.owner[i]])
            if ended or len(tokens) >= limit:
                on_finish(key_of[batch.owner[i]], tokens, ended, batch.sampled[i])
            else:
                alive.append(i)
        device = batch.mask.device
        chosen = chosen[torch.tensor(alive, dtype=torch.long, device=device)] if len(alive) < len(batch) else chosen
        batch.keep(alive)
        if not batch.owner:
            continue
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        batch.last_pos = batch.last_pos + 1
        out = model(input_ids=chosen[:, None], attention_mask=batch.mask, position_ids=batch.last_pos[:, None],
                    cache=batch.cache, use_cache=True)
        batch.logits = out.logits[:, -1, :]


def decode_continuous(model, state: PromptState, settings: DecodeSettings, *, refill, on_finish,
                      max_rows: int, stop_ids: set[int], stop_token_ids: set[int] | None = None,
                      seed: int | None = None, greedy: Sequence[int] = ()) -> int:
    """Decode requests for the prompts of ``state`` with a batch that new rows join as others finish.

    First a greedy request for every prompt index in ``greedy``; then ``refill(free)`` returns up to
    ``free`` prompt indices (of ``state``) to sample from (with ``settings``); it is asked whenever at
    least a quarter of ``max_rows`` is free (or the batch is empty). ``on_finish(prompt_index, tokens, ended,
    sampled)`` is called as each request ends (``tokens, ended`` as :func:`decode` returns them), and may change
    what ``refill`` returns next (collect's early stop). Sampled rows draw from one generator seeded with
    ``seed``: the same state, settings, seed and callbacks give the same results. Returns the number of
    sampled requests.

    Requires :func:`supports_continuous` (full-attention dynamic caches).
    """
    device = state.mask.device
    waiting_greedy = list(greedy)
    n_sampled = 0

    def take(free: int):
        nonlocal waiting_greedy, n_sampled
        new_greedy, waiting_greedy = waiting_greedy[:free], waiting_greedy[free:]
        new = new_greedy + (list(refill(free - len(new_greedy)))[:free - len(new_greedy)]
                            if len(new_greedy) < free else [])
        if not new:
            return None
        n_sampled += len(new) - len(new_greedy)
        sampled = [False] * len(new_greedy) + [True] * (len(new) - len(new_greedy))
        return state.select(torch.tensor(new, device=device)), new, sampled

    _decode_stream(model, take, settings, on_finish=on_finish, max_rows=max_rows, stop_ids=stop_ids,
                   stop_token_ids=stop_token_ids, generator=_generator(settings, seed, device))
    return n_sampled


def equal_runs(values: Sequence[Any], size: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of consecutive equal ``values``, each at most ``size`` long."""
    spans, start = [], 0
    while start < len(values):
        end = start + 1
        while end < min(len(values), start + size) and values[end] == values[start]:
            end += 1
        spans.append((start, end))
        start = end
    return spans


def decode_many(model, prompts: Sequence[Sequence[int]], settings: DecodeSettings, *, max_rows: int,
                stop_ids: set[int], pad_id: int, stop_token_ids: set[int] | None = None, seed: int | None = None,
                on_done=None, max_new_tokens: Sequence[int] | None = None) -> list[tuple[list[int], bool]]:
    """:func:`decode` for any number of prompts with one batch of at most ``max_rows`` rows that the next
    prompts join (their prompt pass run as they join) while others finish, so a few long answers do not
    leave the batch nearly empty for their last steps; ``on_done(n)`` is called as n more prompts finish.
    Prompts join in the order given (put similar lengths together: each prompt pass pads to its longest).
    Models whose caches cannot take rows mid-way (sliding windows) decode in consecutive batches of
    ``max_rows`` (:func:`decode`). Greedy results equal :func:`decode`'s up to float rounding.

    ``max_new_tokens`` gives every prompt its own limit (``settings.max_new_tokens`` is then unused), so that
    requests of several limits share one batch."""
    results: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    limits = list(max_new_tokens) if max_new_tokens is not None else [settings.max_new_tokens] * len(prompts)
    if not model_supports_continuous(model):
        for start, end in equal_runs(limits, max_rows):  # consecutive batches, each of one limit
            chunk = list(prompts[start:end])
            results[start:end] = decode(model, chunk, replace(settings, max_new_tokens=limits[start]),
                                        stop_ids=stop_ids, pad_id=pad_id, stop_token_ids=stop_token_ids, seed=seed)
            if on_done is not None:
                on_done(len(chunk))
        return results  # type: ignore[return-value]
    next_prompt = 0

    def take(free: int):
        nonlocal next_prompt
        if next_prompt >= len(prompts):
            return None
        keys = list(range(next_prompt, min(len(prompts), next_prompt + free)))
        next_prompt += len(keys)
        return prefill(model, [prompts[i] for i in keys], pad_id), keys, [settings.sample] * len(keys)

    def finish(key: int, tokens: list[int], ended: bool, sampled: bool) -> None:
        results[key] = (tokens, ended)
        if on_done is not None:
            on_done(1)

    device = next(model.parameters()).device
    _decode_stream(model, take, replace(settings, max_new_tokens=max(limits, default=1)), on_finish=finish,
                   max_rows=max_rows, stop_ids=stop_ids, stop_token_ids=stop_token_ids,
                   generator=_generator(settings, seed, device), max_tokens_of=limits.__getitem__)
    return results  # type: ignore[return-value]
