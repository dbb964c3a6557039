"""KL(base || edited) of next-token distributions on neutral prompts: the base model's greedy
continuations are generated once and every variant is scored on them (docs/METHOD.md section 8)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import atomic_write_json, atomic_writer, read_json, sha256_json
from ..data.prompting import read_neutral_prompts, render_prompt_ids
from ..errors import InputError, ModelMismatchError
from ..model.hooks import scaled_neurons
from ..model.loading import LoadedModel
from .bars import tqdm_disable
from .compare import mean_ci
from .settings import EvalSettings
from .variants import Variant


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    return {int(i) for i in ids + [lm.tokenizer.eos_token_id] if i is not None}


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


@torch.no_grad()
def greedy_continuations(lm: LoadedModel, prompt_ids: Sequence[list[int]], new_tokens: int,
                         batch_size: int) -> list[list[int]]:
    """The base model's greedy continuation of each prompt, ending with (and including) its end-of-turn
    token when it writes one: the compacting decoder (:func:`editor.collect.sampler.decode_many`), whose
    greedy tokens are ``generate``'s up to float rounding."""
    from tqdm.auto import tqdm

    from ..collect.sampler import DecodeSettings, decode_many

    with tqdm(total=len(prompt_ids), desc="KL: base continuations", disable=tqdm_disable()) as bar:
        generated = decode_many(lm.model, prompt_ids, DecodeSettings(max_new_tokens=new_tokens),
                                max_rows=batch_size, stop_ids=set(), stop_token_ids=_eos_ids(lm),
                                pad_id=_pad_id(lm.tokenizer), on_done=bar.update)
    return [tokens for tokens, _ in generated]


@dataclass
class KLSequences:
    """Prompt + base continuation token ids, shared by every variant's KL."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]

    @property
    def sequences(self) -> list[list[int]]:
        return [p + c for p, c in zip(self.prompt_ids, self.continuation_ids)]


def kl_sequences(base: LoadedModel, settings: EvalSettings) -> KLSequences:
    prompts = read_neutral_prompts(settings.kl_prompts, settings.kl_max_prompts)
    prompt_ids = render_prompt_ids(base.tokenizer, prompts, settings.chat_for(base.tokenizer))
    continuations = greedy_continuations(base, prompt_ids, settings.kl_new_tokens, settings.batch_size)
    return KLSequences(prompts, prompt_ids, continuations)


def _logits(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=mask).logits.float()


@contextlib.contextmanager
def paired_forward(base: Variant, edited: Variant) -> Iterator[Forward]:
    """A function batch -> (base logits, edited logits), each edit switched on only for its own pass (run-time
    edits of the base model are not paired: :func:`kl_divergences` scores them against one shared base pass)."""
    if edited.kind == "adapter" and edited.lm is base.lm:
        with edited.active() as wrapped:
            def adapter(ids, mask):
                with wrapped.disable_adapter():
                    reference = _logits(wrapped, ids, mask)
                return reference, _logits(wrapped, ids, mask)

            yield adapter
    elif edited.kind == "model" and base.kind == "model":
        yield lambda ids, mask: (_logits(base.lm.model, ids, mask), _logits(edited.lm.model, ids, mask))
    else:
        raise InputError(f"KL of {edited.name} ({edited.kind}) against {base.name} ({base.kind}): an adapter or "
                         f"run-time edit must be on the base model itself")


def _kl_rows(log_p: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Mean over the real positions of KL(p || q) per row, q = softmax(logits)."""
    log_q = torch.log_softmax(logits, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)  # clamp: float rounding below 0
    return ((kl * mask).sum(1) / mask.sum(1)).tolist()


def _batches(sequences: Sequence[list[int]], pad: int, device: torch.device,
             batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        width = max(len(s) for s in batch)
        # Right padding keeps every real token at its natural position (no position ids needed).
        yield (torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device),
               torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device))


@torch.no_grad()
def kl_per_sequence(forward: Forward, sequences: Sequence[list[int]], pad: int, device: torch.device,
                    batch_size: int) -> list[float]:
    """Mean over positions of KL(base || edited) of the next-token distributions, one value per sequence."""
    values: list[float] = []
    for ids, mask in _batches(sequences, pad, device, batch_size):
        base_logits, edited_logits = forward(ids, mask)
        values += _kl_rows(torch.log_softmax(base_logits, dim=-1), edited_logits, mask)
    return values


@torch.no_grad()
def _shared_reference_kl(base: Variant, hooked: Sequence[Variant], seqs: KLSequences,
                         batch_size: int) -> dict[str, list[float]]:
    """KL of many run-time edits of one model: each batch's base distribution is computed once and every edit
    is scored against it (1 + k forward passes per batch instead of 2k)."""
    from tqdm.auto import tqdm

    model, values = base.lm.model, {v.name: [] for v in hooked}
    scales = {v.name: v.scales() for v in hooked}
    batches = _batches(seqs.sequences, _pad_id(base.lm.tokenizer), model.device, batch_size)
    total = -(-len(seqs.sequences) // batch_size)
    for ids, mask in tqdm(batches, total=total, desc=f"KL: {len(hooked)} variants", disable=tqdm_disable()):
        log_p = torch.log_softmax(_logits(model, ids, mask), dim=-1)
        for variant in hooked:
            with scaled_neurons(model, scales[variant.name]):
                values[variant.name] += _kl_rows(log_p, _logits(model, ids, mask), mask)
    return values


def kl_divergences(base: Variant, edited: Sequence[Variant], seqs: KLSequences,
                   batch_size: int) -> dict[str, list[float]]:
    """Per-sequence KL(base || variant) for each variant; run-time edits of the base model share its pass."""
    for variant in edited:
        if variant.lm.architecture_hash != base.lm.architecture_hash:
            raise ModelMismatchError(f"KL needs the same vocabulary and layout: {variant.name} has architecture "
                                     f"hash {variant.lm.architecture_hash}, {base.name} {base.lm.architecture_hash}")
    hooked = [v for v in edited if v.kind == "hooks" and v.lm is base.lm and base.kind == "model"]
    values = _shared_reference_kl(base, hooked, seqs, batch_size) if hooked else {}
    for variant in edited:
        if variant.name not in values:
            with paired_forward(base, variant) as forward:
                values[variant.name] = kl_per_sequence(forward, seqs.sequences, _pad_id(base.lm.tokenizer),
                                                       base.lm.model.device, batch_size)
    return {v.name: values[v.name] for v in edited}


def sequences_sha256(seqs: KLSequences) -> str:
    """What a stored per-variant KL was measured on: the prompts and the base continuations, as token ids."""
    return sha256_json([seqs.prompt_ids, seqs.continuation_ids])


def stored_kl(folder: Path, variant: Variant, seqs: KLSequences) -> list[float] | None:
    """The per-prompt KL of ``variant`` kept in ``folder`` by an earlier run on the same sequences, else None."""
    path = folder / f"{variant.name}.json"
    if not path.is_file():
        return None
    doc = read_json(path)
    key = doc.get("key") or {}
    if key.get("sequences_sha256") != sequences_sha256(seqs) or "variant" not in key:
        return None
    if sha256_json(key["variant"]) != sha256_json(variant.describe()):
        return None
    return [float(v) for v in doc["per_prompt"]]


def kl_summary(values: Sequence[float], ci_iters: int, ci_seed: int) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "ci95": mean_ci(values, ci_iters, ci_seed), "n_prompts": len(values)}


def write_kl_files(folder: Path, seqs: KLSequences, tokenizer: Any, per_variant: Mapping[str, list[float]],
                   variants: Mapping[str, Variant] | None = None) -> None:
    """``continuations.jsonl`` and one ``<variant>.json`` per variant; given the variants, each file also keeps
    the key (sequences and variant) under which :func:`stored_kl` reuses it."""
    with atomic_writer(folder / "continuations.jsonl") as handle:
        for prompt, p_ids, c_ids in zip(seqs.prompts, seqs.prompt_ids, seqs.continuation_ids):
            handle.write(json.dumps({"prompt": prompt, "prompt_tokens": len(p_ids),
                                     "continuation": tokenizer.decode(c_ids, skip_special_tokens=False),
                                     "continuation_tokens": len(c_ids)}, ensure_ascii=False) + "\n")
    for name, values in per_variant.items():
        doc: dict[str, Any] = {"direction": "KL(base || variant), nats, mean over positions", "per_prompt": values}
        if variants is not None and name in variants:
            doc["key"] = {"sequences_sha256": sequences_sha256(seqs), "variant": variants[name].describe()}
        atomic_write_json(folder / f"{name}.json", doc)


Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
