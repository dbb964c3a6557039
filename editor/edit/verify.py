"""Verification of a written edit: its logits on fixed prompts, reloaded from disk, against the source model
under run-time activation scaling, in float32, within a tolerance stated per stored dtype (see
:mod:`editor.edit.stage`)."""

from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import VerificationError
from ..model.hooks import LayerScale, scaled_neurons
from ..model.loading import LoadedModel

FP32_TOLERANCE = 1e-4


# Half-precision edits: 4x the half-ulp rounding of a stored weight (bf16 2^-8, fp16 2^-11 relative);
# see the module docstring for the bound they enter.
HALF_ROUNDING = {torch.bfloat16: 4 * 2.0**-8, torch.float16: 4 * 2.0**-11}


HALF_DTYPES = (torch.bfloat16, torch.float16)


def tolerance(stored_dtype: torch.dtype, max_alpha: float = 1.0, suppression_effect: float | None = None) -> float:
    """Max abs logit difference allowed between a written edit and the reference (module docstring)."""
    if stored_dtype in HALF_ROUNDING:
        if suppression_effect is None:
            raise ValueError("the half-precision tolerance needs the suppression effect")
        return FP32_TOLERANCE + HALF_ROUNDING[stored_dtype] * max(1.0, max_alpha) * suppression_effect
    return FP32_TOLERANCE


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    """Full-precision float32 matmuls (no TF32) while verifying."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def as_float32(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of a half-precision model (upcasting is exact); float32 models are copied as they are."""
    clone = copy.deepcopy(model)
    return clone.float() if next(model.parameters()).dtype in HALF_DTYPES else clone


def encode_prompts(tokenizer: Any, prompts: Iterable[str]) -> dict[str, torch.Tensor]:
    """One right-padded batch: causal attention keeps every real token's logits independent of the pads."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="right")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.inference_mode()
def prompt_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 logits at every real (non-pad) token of the batch: [tokens, vocab]."""
    device = next(model.parameters()).device
    with _exact_float32():
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
    return logits[inputs["attention_mask"].to(device).bool()].float().cpu()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@dataclass
class Reference:
    """Ground truth: the source model's float32 logits, unedited and under run-time activation scaling."""

    inputs: dict[str, torch.Tensor]
    base: torch.Tensor
    scaled: torch.Tensor
    stored_dtype: torch.dtype  # dtype the edit is written in (sets the tolerance)
    max_alpha: float
    suppression_effect: float | None  # half precision only: logit change when the same neurons are fully suppressed

    @classmethod
    def compute(cls, lm: LoadedModel, scales: Mapping[int, LayerScale], prompts: Iterable[str],
                stored_dtype: torch.dtype | None = None) -> Reference:
        stored = stored_dtype or lm.model.dtype
        model = as_float32(lm.model) if lm.model.dtype in HALF_DTYPES else lm.model
        inputs = encode_prompts(lm.tokenizer, prompts)
        base = prompt_logits(model, inputs)
        with scaled_neurons(model, scales):
            scaled = prompt_logits(model, inputs)
        max_alpha = max(float(s.alpha.max()) for s in scales.values())
        suppression = None
        if stored in HALF_DTYPES:  # only the half-precision tolerance needs it: save a forward pass otherwise
            zero = {layer: LayerScale(s.index, torch.zeros_like(s.alpha)) for layer, s in scales.items()}
            with scaled_neurons(model, zero):
                suppression = max_abs_diff(base, prompt_logits(model, inputs))
        return cls(inputs, base, scaled, stored, max_alpha, suppression)


def verify_edit(reference: Reference, candidates: Iterable[tuple[str, torch.nn.Module]]) -> dict[str, Any]:
    """Compare each candidate's float32 logits with the reference; a VerificationError beyond tolerance.

    ``candidates`` is consumed lazily, so a generator can load one model at a time.
    """
    tol = tolerance(reference.stored_dtype, reference.max_alpha, reference.suppression_effect)
    diffs = {}
    for name, model in candidates:
        diffs[name] = max_abs_diff(reference.scaled, prompt_logits(model, reference.inputs))
        del model
        gc.collect()
    report = {
        "reference": "source model with run-time activation scaling (forward pre-hooks on the down-projections)",
        "compute_dtype": "float32",
        "stored_dtype": str(reference.stored_dtype).removeprefix("torch."),
        "prompts": int(reference.inputs["input_ids"].shape[0]),
        "tokens": int(reference.inputs["attention_mask"].sum()),
        "tolerance": tol,
        "max_abs_diff": diffs,
        "edit_effect_max_abs": max_abs_diff(reference.base, reference.scaled),
        "suppression_effect_max_abs": reference.suppression_effect,
        "passed": all(d <= tol for d in diffs.values()),
    }
    if not report["passed"]:
        failed = {k: v for k, v in diffs.items() if v > tol}
        raise VerificationError(f"the written edit does not reproduce run-time activation scaling: max abs logit "
                                f"difference {failed} exceeds the tolerance {tol:.3g} for a "
                                f"{report['stored_dtype']} edit (the edit's own effect: "
                                f"{report['edit_effect_max_abs']:.3g})")
    return report


def checkpoint_candidate(folder: Path, device: torch.device) -> Iterator[tuple[str, torch.nn.Module]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    yield "checkpoint", model.to(device).eval()


def adapter_candidates(model: torch.nn.Module, folder: Path) -> Iterator[tuple[str, torch.nn.Module]]:
    """Source + adapter, then the same merged; on a float32 copy, so the caller's model stays untouched."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(as_float32(model), str(folder))
    peft_model.eval()
    yield "adapter", peft_model
    yield "adapter_merged", peft_model.merge_and_unload()
