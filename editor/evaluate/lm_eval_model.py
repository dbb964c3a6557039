"""``hneurons``: an lm-eval model class that scores what lm-eval's ``hf`` model scores, with less work.

It is lm-eval's ``HFLM`` (same tokenisation, chat templates, truncation rules, metrics) with two of its
loops replaced:

* **log-likelihoods with the prompt shared** (:meth:`HneuronsLM._loglikelihood_tokens`). A multiple-choice item
  asks for log p(choice | prompt) once per choice; ``hf`` runs prompt + choice through the model for every choice
  (it shares the prompt only when every choice is one token). Here the requests are grouped by their context
  tokens, each context is run once (left-padded, KV cache kept, :func:`editor.collect.sampler.prompt_pass`:
  the system turn every context of a batch starts with is run once for the batch), and
  only the continuation tokens are run for each choice, on a copy of that cache. The context's last logits
  score a continuation's first token, so one-token choices need no second pass at all.
* **greedy generation with the compacting decoder** (:meth:`HneuronsLM.generate_until`,
  :func:`editor.collect.sampler.decode_many`): finished rows leave the batch instead of being padded to the
  longest, and the next prompts join it as they leave (continuous batching; models with sliding-window caches
  decode in consecutive batches instead). The requests of every task share one stream, each row to its own
  ``max_gen_toks`` (longest limits first, so the short ones fill the tail). The stop strings (``until``) are
  cut from the text as ``hf`` cuts them; decoding stops at the model's end-of-sequence tokens, and for
  documents marked ``stop_at_newline`` (base-model prompting, eval/hneurons/utils.py) at the first newline
  token, where their judged answer ends.
  Sampled generation (``do_sample``) is passed to ``hf``'s loop unchanged.

The numbers are ``hf``'s up to float rounding (a different batch shape sums in a different order: per-request
log-likelihoods agree to about 1e-5 nats in float32; tests/test_lm_eval_model.py compares both on real tasks).
``--model_args prefix_sharing=False,compact_decode=False`` turns either replacement off; ``gen_batch_size`` (default
64) is the decoder's batch, apart from ``--batch_size``: a decoding step reads every weight once whatever the
batch, and finished rows leave it.

lm-eval 0.4 loads model classes from its own registry and has no plugin entry point, so the class is
registered when this module is imported: from Python, ``import editor.evaluate.lm_eval_model`` then
``lm_eval.simple_evaluate(model="hneurons", ...)``; from the shell, ``hneurons lm-eval --model hneurons ...``
(lm-eval's own command line, with this module imported first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from ..collect.sampler import DecodeSettings, decode_many, equal_runs, newline_token_ids, prompt_pass
from .bars import bars_enabled

DEFAULT_GEN_BATCH = 64
Request = tuple[Any, list[int], list[int]]  # ((context, continuation) or None, context tokens, continuation tokens)


def _flag(value: Any) -> bool:
    """lm-eval passes --model_args values as strings: 'False' must be False."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def _common_prefix(continuations: Sequence[list[int]]) -> list[int]:
    """The tokens all ``continuations`` begin with, leaving each at least one token of its own."""
    if not continuations:
        return []
    limit = min(len(c) for c in continuations) - 1
    n = 0
    while n < limit and all(c[n] == continuations[0][n] for c in continuations):
        n += 1
    return list(continuations[0][:n])


@register_model("hneurons")
class HneuronsLM(HFLM):
    """lm-eval's ``hf`` model with prompt-shared log-likelihoods and compacting greedy decoding."""

    def __init__(self, *args: Any, prefix_sharing: Any = True, compact_decode: Any = True,
                 gen_batch_size: Any = DEFAULT_GEN_BATCH, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.prefix_sharing = _flag(prefix_sharing)
        self.compact_decode = _flag(compact_decode)
        # decoding reads every weight once per step whatever the batch, so on a CPU 64 rows cost little more
        # than 8 (3.4x the throughput on SmolLM2); rows that finish leave the batch, so a large one wastes nothing
        self.gen_batch_size = max(1, int(gen_batch_size))
        self.forward_tokens = 0  # tokens run through the model by the log-likelihood loop (benchmarks read it)

    # ------------------------------------------------------------------------------------ log-likelihoods
    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        if not self.prefix_sharing or self.backend != "causal":
            self.forward_tokens += sum(min(len(c) + len(t), self.max_length + 1) - 1 for _, c, t in requests)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        # requests that need left truncation keep hf's path (their context is not shared as it stands)
        long = [i for i, (_, c, t) in enumerate(requests) if len(c) + len(t) > self.max_length + 1]
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        if long:
            for i, answer in zip(long, super()._loglikelihood_tokens([requests[i] for i in long],
                                                                     disable_tqdm=True, override_bs=override_bs)):
                results[i] = answer
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, _) in enumerate(requests):
            if results[i] is None:
                groups.setdefault(tuple(context), []).append(i)
        order = sorted(groups, key=lambda ctx: (-len(ctx), ctx))  # longest first: little padding per batch
        size = self._contexts_per_batch(override_bs)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0 or not bars_enabled(),
                  desc="Running loglikelihood requests (prompt shared)") as bar:
            for start in range(0, len(order), size):
                contexts = order[start:start + size]
                members = [(g, i) for g, ctx in enumerate(contexts) for i in groups[ctx]]
                for (g, i), answer in zip(members, self._score_shared(contexts, [(g, requests[i][2])
                                                                                  for g, i in members])):
                    results[i] = answer
                    request_str = requests[i][0]
                    if request_str is not None:
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                bar.update(len(members))
        return results  # type: ignore[return-value]

    def _contexts_per_batch(self, override_bs: int | None) -> int:
        if self.batch_size != "auto":
            return max(1, int(self.batch_size))
        return max(1, int(override_bs or 32))

    @torch.no_grad()
    def _score_shared(self, contexts: Sequence[tuple[int, ...]],
                      members: Sequence[tuple[int, list[int]]]) -> list[tuple[float, bool]]:
        """(log p, greedy?) of each continuation ``members[k] = (context index, tokens)`` after its context.

        The tokens every continuation of a context begins with (the choices of a margin task share their
        wording up to the answer) join the context's pass: each continuation keeps at least its last token."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        shared = [_common_prefix([toks for g2, toks in members if g2 == g]) for g in range(len(contexts))]
        prompts = [list(ctx) + s for ctx, s in zip(contexts, shared)]
        keep = 1 + max(len(s) for s in shared)
        state, logits, tokens = prompt_pass(self.model, prompts, pad, keep)
        self.forward_tokens += tokens
        logp = F.log_softmax(logits.float(), dim=-1)  # [contexts, keep, vocab]; position -1 scores the next token
        head = []  # per context: (log p, greedy?) of its shared tokens
        for g, s in enumerate(shared):
            scored = logp[g, keep - 1 - len(s):keep - 1]
            target = torch.tensor(s, dtype=torch.long, device=scored.device)
            head.append((float(scored.gather(1, target[:, None]).sum()) if s else 0.0,
                         bool((scored.argmax(-1) == target).all()) if s else True))
        rest = [(k, g, toks[len(shared[g]):]) for k, (g, toks) in enumerate(members) if len(toks) - len(shared[g]) > 1]
        tails = self._continuation_logprobs(state, rest, pad) if rest else {}
        out: list[tuple[float, bool]] = []
        for k, (g, toks) in enumerate(members):
            own = toks[len(shared[g]):]
            value, greedy = head[g]
            value += float(logp[g, -1, own[0]])
            greedy = greedy and int(logp[g, -1].argmax()) == own[0]
            if k in tails:
                scored = tails[k]  # [len(own) - 1, vocab]
                target = torch.tensor(own[1:], device=scored.device)
                value += float(scored.gather(1, target[:, None]).sum())
                greedy = greedy and bool((scored.argmax(-1) == target).all())
            out.append((value, bool(greedy)))
        return out

    def _continuation_logprobs(self, state, rest: Sequence[tuple[int, int, list[int]]], pad: int
                               ) -> dict[int, torch.Tensor]:
        """Run every continuation's tokens but the last on a copy of its context's cache; the log-softmax of
        the positions that score its tokens 2..n, per member index."""
        device = state.mask.device
        rows = state.select(torch.tensor([g for _, g, _ in rest], device=device))
        width = max(len(t) - 1 for _, _, t in rest)
        ids = torch.full((len(rest), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros((len(rest), width), dtype=torch.long, device=device)
        for row, (_, _, toks) in enumerate(rest):
            ids[row, :len(toks) - 1] = torch.tensor(toks[:-1], device=device)
            mask[row, :len(toks) - 1] = 1
        positions = rows.last_pos[:, None] + 1 + torch.arange(width, device=device)[None, :]
        logits = self.model(input_ids=ids, attention_mask=torch.cat([rows.mask, mask], dim=1),
                            position_ids=positions, cache=rows.cache, use_cache=True).logits
        self.forward_tokens += int(mask.sum())
        logp = F.log_softmax(logits.float(), dim=-1)
        return {k: logp[row, :len(toks) - 1] for row, (k, _, toks) in enumerate(rest)}

    # ----------------------------------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not self.compact_decode or self.backend != "causal" or not self._plain_greedy():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        args = [r.args for r in requests]
        kwargs = [normalize_gen_kwargs(dict(g), self.max_gen_toks) for _, g in args]
        sampled = [i for i, k in enumerate(kwargs) if k.get("do_sample")]
        results: list[str | None] = [None] * len(requests)
        if sampled:  # hf's loop keeps hf's random draws
            for i, text in zip(sampled, super().generate_until([requests[i] for i in sampled], disable_tqdm)):
                results[i] = text
        greedy = [i for i in range(len(requests)) if results[i] is None]
        # one decoding stream per stop set (first-line documents also stop at a newline): requests of every
        # task and length limit share it, the longest limits first, so the short ones fill its tail
        by_stops: dict[bool, list[int]] = {}
        for i in greedy:
            by_stops.setdefault(bool((getattr(requests[i], "doc", None) or {}).get("stop_at_newline")), []).append(i)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        with tqdm(total=len(greedy), disable=disable_tqdm or self.rank != 0 or not bars_enabled(),
                  desc="Running generate_until requests (compacting decoder)") as bar:
            for first_line, members in by_stops.items():
                members.sort(key=lambda i: (-kwargs[i]["max_gen_toks"], -len(self.tok_encode(args[i][0]))))
                texts = self._greedy_texts([args[i][0] for i in members],
                                           [handle_stop_sequences(list(kwargs[i].get("until") or []), eos=eos)
                                            for i in members],
                                           [kwargs[i]["max_gen_toks"] for i in members], bar.update,
                                           first_line=first_line)
                for i, text in zip(members, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
        return results  # type: ignore[return-value]

    def _greedy_texts(self, contexts: list[str], stops: list[list[str]], limits: list[int], on_done,
                      first_line: bool = False) -> list[str]:
        """Greedy continuations of ``contexts`` (each with its stop strings and token limit; longest limits
        first) in one continuous batch of ``gen_batch_size`` rows (:func:`editor.collect.sampler.decode_many`:
        the next prompts join as rows finish).

        ``first_line``: the documents' judges read only the first line (base-model prompting,
        eval/hneurons/utils.py), so a row ends at its first token holding a newline and the text is cut there;
        hf's class generates on to ``max_gen_toks`` and the judged line is the same."""
        prompts: list[list[int]] = []
        for start, end in equal_runs(limits, self.gen_batch_size):  # each encode call pads to its own longest
            ids, mask = self.tok_batch_encode(contexts[start:end], left_truncate_len=self.max_length - limits[start],
                                              truncation=self.truncation)  # truncated as hf does for that limit
            prompts += [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        stop_ids = self._eos_ids() | (newline_token_ids(self.tokenizer) if first_line else set())
        generated = decode_many(self.model, prompts, DecodeSettings(max_new_tokens=max(limits)),
                                max_rows=self.gen_batch_size, stop_ids=stop_ids, pad_id=pad, on_done=on_done,
                                max_new_tokens=limits)
        texts = [postprocess_generated_text(generation=self.tok_decode(tokens), stop=row_stops, think_end_token=None)
                 for (tokens, _), row_stops in zip(generated, stops)]
        return [text.split("\n", 1)[0] for text in texts] if first_line else texts

    def _plain_greedy(self) -> bool:
        """Whether hf's greedy generate is plain argmax decoding here: no thinking-token stripping and no
        generation-config logits processors (repetition penalties, banned words, ...) the decoder lacks."""
        if self.think_end_token is not None:
            return False
        config = getattr(self.model, "generation_config", None)
        if config is None:
            return True
        neutral = {"repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
                   "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
                   "forced_eos_token_id": (None,), "min_length": (None, 0), "min_new_tokens": (None, 0),
                   "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0)}
        return all(getattr(config, name, None) in allowed for name, allowed in neutral.items())

    def _eos_ids(self) -> set[int]:
        """The tokens that end hf's generate: the generation config's EOS ids, else the tokenizer's."""
        config = getattr(self.model, "generation_config", None)
        value = getattr(config, "eos_token_id", None) if config is not None else None
        ids = set(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
        if not ids and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return {int(i) for i in ids}
