"""Training the abstention edit: the loop, its objective, validation, early stopping, the strength, resume.

Objective per step: the weighted mean over the batch's questions of each question's mean cross-entropy on its
target tokens (prompt tokens never enter the loss), plus ``kl_weight`` x KL(base || edited) of the next-token
distributions at every position of a batch of neutral prompts (the base model's log-probabilities are computed
once, before training, with no edit applied). Adam on the deltas alone (:mod:`editor.edit.abstain_delta`; or
the LoRA baseline's factors, :mod:`editor.edit.abstain_lora`: any :class:`TrainableEdit`);
every model parameter is frozen (``requires_grad`` off for the duration, the model in eval mode: no dropout).

Validation (after every epoch, at strength 1): the same objective on the validation questions (and the KL over
every neutral prompt), and the abstention measured exactly: a question is *abstained on* when greedy decoding
would produce the abstention target token for token, which one teacher-forced pass decides (the argmax at each
target position is the next target token). Early stopping keeps the epoch with the lowest validation loss and
stops after ``patience`` epochs without a lower one. The strength s (the learned change times s) is then chosen
on validation among ``strengths``: ``loss`` the lowest validation objective, ``selectivity`` the largest
abstention rate on the wrong questions minus that on the right ones (ties: the lower loss). Without validation
questions the last epoch and s = 1 are kept, and the manifest says so.

Resume: after every epoch ``training/state.pt`` holds the deltas, Adam's state, the best epoch's deltas, the
history and the patience counter, with the run's key (data, settings, neuron set, model, KL prompts). The order
of the questions in epoch e is a permutation drawn from (seed, e) alone, the KL prompts likewise, so a run
killed after any epoch and resumed computes the same steps as one that was never stopped (on the same machine
and thread count: bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..artifacts import atomic_writer
from ..formats import ABSTAIN_STATE
from ..model.loading import LoadedModel
from ..stats import auroc
from .abstain_data import Example, TrainingData
from .settings import AbstainSettings

STATE = ABSTAIN_STATE
KL_MAX_TOKENS = 96  # neutral prompts are cut to this many tokens (their first ones)


# ================================================================================================ batches
def pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def _batch(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded prompt + target rows: input ids, attention mask, labels (-100 outside the targets)."""
    length = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(list(p) + list(t))
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(list(t))
    return ids.to(device), mask.to(device), labels.to(device)


def target_scores(model, rows, pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: mean cross-entropy of its target tokens, their summed log-probability, and whether greedy
    decoding would produce the target exactly (argmax = the next target token at every target position)."""
    ids, mask, labels = _batch(rows, pad, device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    gold = labels[:, 1:]
    keep = gold != -100
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=-100,
                         reduction="none").view(gold.shape)
    count = keep.sum(1).clamp(min=1)
    greedy = ((logits.argmax(-1) == gold) | ~keep).all(1)
    return (ce * keep).sum(1) / count, -(ce * keep).sum(1), greedy


# ================================================================================================= the KL
@dataclass
class Neutral:
    """The neutral prompts of the KL term and the base model's log-probabilities at each of their positions."""

    ids: list[list[int]]
    base: list[torch.Tensor]  # per prompt [len, vocab] float32 log-probs, on the CPU
    file: str
    sha256: str

    @property
    def positions(self) -> int:
        return sum(len(i) for i in self.ids)


@torch.no_grad()
def base_logprobs(model, ids: list[list[int]], pad: int, device, batch_size: int) -> list[torch.Tensor]:
    out = []
    for start in range(0, len(ids), batch_size):
        rows = ids[start:start + batch_size]
        batch, mask, _ = _batch([(r, []) for r in rows], pad, device)
        logits = model(input_ids=batch, attention_mask=mask).logits.float()
        out += [torch.log_softmax(logits[i, :len(r)], -1).cpu() for i, r in enumerate(rows)]
    return out


def kl_of(model, neutral: Neutral, which: Sequence[int], pad: int, device) -> torch.Tensor:
    """Mean over the positions of prompts ``which`` of KL(base || edited), differentiable."""
    rows = [neutral.ids[i] for i in which]
    batch, mask, _ = _batch([(r, []) for r in rows], pad, device)
    logits = model(input_ids=batch, attention_mask=mask).logits.float()
    total, count = logits.new_zeros(()), 0
    for row, (i, r) in enumerate(zip(which, rows)):
        edited = torch.log_softmax(logits[row, :len(r)], -1)
        base = neutral.base[i].to(edited.device)
        total = total + (base.exp() * (base - edited)).sum()
        count += len(r)
    return total / max(count, 1)


# ============================================================================================ validation
def evaluate(model, data: TrainingData, examples: list[Example], neutral: Neutral | None, kl_weight: float,
             pad: int, device, batch_size: int) -> dict[str, Any]:
    """Validation metrics of the model as it runs now (the edit applied by the caller)."""
    with torch.no_grad():
        ce, logp, greedy = [], [], []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            c, lp, g = target_scores(model, [(e.prompt, e.target) for e in chunk], pad, device)
            answers = [i for i, e in enumerate(chunk) if e.target != data.abstain_target]
            if answers:  # the abstention pass of questions whose target is another answer
                _, alp, ag = target_scores(model, [(chunk[i].prompt, data.abstain_target) for i in answers], pad,
                                           device)
                lp, g = lp.clone(), g.clone()
                lp[answers], g[answers] = alp, ag
            ce += c.tolist()
            logp += lp.tolist()
            greedy += g.tolist()
        kl = None
        if neutral is not None:
            total = 0.0
            for s in range(0, len(neutral.ids), batch_size):
                which = list(range(s, min(s + batch_size, len(neutral.ids))))
                total += float(kl_of(model, neutral, which, pad, device)) * sum(len(neutral.ids[i]) for i in which)
            kl = total / max(neutral.positions, 1)
    weights = [e.weight for e in examples]
    val_ce = sum(w * c for w, c in zip(weights, ce)) / sum(weights)
    wrong = [g for g, e in zip(greedy, examples) if e.base_wrong == 1]
    right = [g for g, e in zip(greedy, examples) if e.base_wrong == 0]
    labelled = [(lp, e.base_wrong) for lp, e in zip(logp, examples) if e.base_wrong is not None]
    both = len({b for _, b in labelled}) == 2
    return {
        "loss": val_ce + (kl_weight * kl if kl is not None else 0.0),
        "ce": val_ce,
        "kl": kl,
        "abstain_rate": sum(greedy) / len(greedy),
        "abstain_rate_wrong": sum(wrong) / len(wrong) if wrong else None,
        "abstain_rate_right": sum(right) / len(right) if right else None,
        "abstain_auroc": float(auroc([s for s, _ in labelled], [b for _, b in labelled])) if both else None,
        "n": len(examples),
    }


def selectivity(row: dict[str, Any]) -> float:
    wrong, right = row.get("abstain_rate_wrong"), row.get("abstain_rate_right")
    return (wrong or 0.0) - (right or 0.0)


def choose_strength(table: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The row of the strength the rule picks (module docstring); ties go to the strength closest to 1."""
    if rule == "selectivity":
        return max(table, key=lambda r: (round(selectivity(r), 12), -r["loss"], -abs(r["strength"] - 1)))
    return min(table, key=lambda r: (r["loss"], abs(r["strength"] - 1)))


# ============================================================================================== training
class TrainableEdit(Protocol):
    """What :func:`train` trains: the neuron deltas (:class:`~editor.edit.abstain_delta.NeuronDelta`) or the LoRA
    baseline (:class:`~editor.edit.abstain_lora.LoraDelta`)."""

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...  # what Adam updates

    def applied(self, model: Any, strength: float = 1.0) -> contextlib.AbstractContextManager[None]: ...

    def state(self) -> dict[str, torch.Tensor]: ...  # a detached CPU copy (checkpoints, the best epoch)

    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def count(self) -> int: ...


@dataclass
class TrainResult:
    delta: TrainableEdit  # the best epoch's deltas (strength 1)
    history: list[dict[str, Any]]
    best_epoch: int
    stopped: str
    resumed_from: int | None
    strength: float
    strength_table: list[dict[str, Any]]
    note: str | None = None
    seconds: float = 0.0
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def frozen(model) -> Iterator[None]:
    """Every model parameter out of autograd, the model in eval mode; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _permutation(n: int, seed: int, epoch: int, stream: int) -> list[int]:
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 9_176 + stream) % (2**63 - 1))
    return torch.randperm(n, generator=generator).tolist()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_writer(path, "wb") as handle:
        handle.write(buffer.getvalue())


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged state is a fresh start, never a crash
        return None


def train(lm: LoadedModel, delta: TrainableEdit, data: TrainingData, neutral: Neutral | None,
          settings: AbstainSettings, state_dir: Path, key: str, *, progress: bool = True,
          on_epoch: Callable[[int, list[dict[str, Any]]], None] | None = None) -> TrainResult:
    """Train ``delta`` on ``data`` (module docstring); resumes from ``state_dir/state.pt`` when its key is
    ``key``. ``on_epoch(epoch, history)`` is called after each epoch's state is saved."""
    from tqdm.auto import tqdm

    model, tok = lm.model, lm.tokenizer
    device = next(model.parameters()).device
    pad = pad_id(tok)
    optimizer = torch.optim.Adam(delta.parameters(), lr=settings.lr)
    state_path = state_dir / STATE
    state = load_state(state_path)
    history: list[dict[str, Any]] = []
    best_state, best_epoch, best_loss, bad, start, done, resumed = None, 0, math.inf, 0, 1, False, None
    if state is not None and state.get("key") == key:
        delta.load_state(state["delta"])
        optimizer.load_state_dict(state["optimizer"])
        history = json.loads(state["history"])
        best_state, best_epoch, best_loss = state["best_delta"], state["best_epoch"], state["best_loss"]
        bad, start, done = state["bad"], state["epoch"] + 1, state["done"]
        resumed = state["epoch"]
    train_set, val_set = data.train, data.validation
    kl_weight = settings.kl_weight if neutral is not None else 0.0
    began = time.time()
    steps = 0
    with frozen(model):
        for epoch in range(start, settings.epochs + 1):
            if done:
                break
            t0 = time.time()
            order = _permutation(len(train_set), settings.seed, epoch, 0)
            kl_order = _permutation(len(neutral.ids), settings.seed, epoch, 1) if kl_weight > 0 else []
            batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
            sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
            bar = tqdm(batches, desc=f"abstain: epoch {epoch}/{settings.epochs}", unit="step", disable=not progress,
                       dynamic_ncols=True, leave=False)
            for step, batch in enumerate(bar):
                chunk = [train_set[i] for i in batch]
                with delta.applied(model, 1.0):
                    ce, _, _ = target_scores(model, [(e.prompt, e.target) for e in chunk], pad, device)
                    w = torch.tensor([e.weight for e in chunk], device=ce.device)
                    loss_ce = (w * ce).sum() / w.sum()
                    loss = loss_ce
                    if kl_weight > 0:
                        take = [kl_order[(step * settings.kl_batch_size + j) % len(kl_order)]
                                for j in range(settings.kl_batch_size)]
                        kl = kl_of(model, neutral, take, pad, device)
                        loss = loss + kl_weight * kl
                        sums["kl"] += float(kl.detach())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                sums["loss"] += float(loss.detach())
                sums["ce"] += float(loss_ce.detach())
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            bar.close()
            row: dict[str, Any] = {"epoch": epoch, "steps": len(batches),
                                   **{f"train_{k}": v / max(len(batches), 1) for k, v in sums.items()}}
            if kl_weight == 0:
                row["train_kl"] = None
            if val_set:
                with delta.applied(model, 1.0):
                    metrics = evaluate(model, data, val_set, neutral, kl_weight, pad, device, settings.batch_size)
                row.update({f"val_{k}": v for k, v in metrics.items() if k != "n"})
                if metrics["loss"] < best_loss:
                    best_state, best_epoch, best_loss, bad = delta.state(), epoch, metrics["loss"], 0
                else:
                    bad += 1
            else:
                best_state, best_epoch = delta.state(), epoch
            row["seconds"] = round(time.time() - t0, 3)
            history.append(row)
            done = bool(val_set and settings.patience and bad >= settings.patience) or epoch == settings.epochs
            _save_state(state_path, {"key": key, "epoch": epoch, "delta": delta.state(),
                                     "optimizer": optimizer.state_dict(), "best_delta": best_state,
                                     "best_epoch": best_epoch, "best_loss": best_loss, "bad": bad, "done": done,
                                     "history": json.dumps(history)})
            if progress:
                val = f", validation loss {row['val_loss']:.4f}" if val_set else ""
                print(f"abstain: epoch {epoch}: train loss {row['train_loss']:.4f}{val}", flush=True)
            if on_epoch is not None:
                on_epoch(epoch, history)
    if best_state is None:  # epochs already complete in a resumed state without a best (cannot happen) / none run
        best_state, best_epoch = delta.state(), len(history)
    delta.load_state(best_state)
    last = history[-1]["epoch"] if history else 0
    stopped = "early stopping" if last < settings.epochs else "epochs"
    table, chosen, note = [], 1.0, None
    if val_set:
        with frozen(model):
            for s in settings.strengths:
                with delta.applied(model, s):
                    table.append({"strength": s, **evaluate(model, data, val_set, neutral, kl_weight, pad, device,
                                                            settings.batch_size)})
        chosen = choose_strength(table, settings.strength_rule)["strength"]
    else:
        note = "no validation questions: the last epoch and strength 1 are kept (no early stopping)"
    return TrainResult(delta, history, best_epoch, stopped, resumed, chosen, table, note,
                       round(time.time() - began, 3), steps)
