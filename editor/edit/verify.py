"""Verification of a written edit.

* Logits: the written files, reloaded, on fixed prompts against the source model under run-time activation
  scaling, in float32, within a tolerance stated per stored dtype (see :mod:`editor.edit.stage`). Needs the
  model in memory (twice for adapters).
* Tensors, streamed (no model is loaded; memory stays at one down-projection pair and 16 MiB mapped windows):
  :class:`CheckpointCheck` compares a written checkpoint with its source tensor by tensor (untouched tensors
  byte for byte, rewritten down-projections exactly alpha x source at the neurons and the source elsewhere),
  checks the index against the shard headers, and hashes every written shard for the manifest;
  :func:`check_adapter` checks an IA3 / LoRA adapter's tensors against the source checkpoint's
  down-projections (the exact edit PEFT applies), reading only the targeted layers.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import VerificationError
from ..formats import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SAFETENSORS_INDEX
from ..model.checkpoint import (
    READ_CHUNK,
    TensorEntry,
    checkpoint_shards,
    down_proj_tensor_names,
    index_report,
    iter_file_bytes,
    iter_tensor_bytes,
    read_tensor,
    shard_entries,
    tensor_entries,
)
from ..model.hooks import LayerScale, down_columns, neuron_axis, scaled_neurons
from ..model.loading import LoadedModel
from ..model.registry import ArchSpec, get_arch
from .adapters import adapter_prefix

# float32 forms differ from run-time scaling only by summation order, through every layer: up to 1.03e-4 on
# SmolLM2's 30 layers (the LoRA form, AMD EPYC), so 2e-4; a wrong edit is off by about the edit's own effect
# (2.64 there), orders of magnitude more
FP32_TOLERANCE = 2e-4


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


# ====================================================================================== streamed tensor checks
def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and _equal_bytes(memoryview(_tensor_view(a).numpy()),
                                                                      memoryview(_tensor_view(b).numpy()))


def _tensor_view(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _edit_is_exact(original: torch.Tensor, written: torch.Tensor, arch: ArchSpec, scale: LayerScale) -> bool:
    """Written = original except the neurons' columns, which equal (alpha x original) in the stored dtype."""
    if original.dtype != written.dtype or original.shape != written.shape:
        return False
    axis = neuron_axis(arch)
    shape = [1, 1]
    shape[axis] = len(scale.index)
    expected = (original.index_select(axis, scale.index).float() * scale.alpha.view(shape)).to(original.dtype)
    if not _same_bits(written.index_select(axis, scale.index), expected):
        return False
    restored = written.clone()
    restored.index_copy_(axis, scale.index, original.index_select(axis, scale.index))
    return _same_bits(restored, original)


def _equal_bytes(x: memoryview, y: memoryview) -> bool:
    kind = np.uint64 if x.nbytes % 8 == 0 else np.uint8  # 8 bytes at a time: 5x torch.equal on bytes
    return x.nbytes == y.nbytes and bool(np.array_equal(np.frombuffer(x, kind), np.frombuffer(y, kind)))


def _same_bytes(src: Path, a: TensorEntry, dst: Path, b: TensorEntry) -> bool:
    """Byte-identical tensors, compared in READ_CHUNK pieces of both files (one mapped pair at a time)."""
    if (a.dtype, a.shape, a.nbytes) != (b.dtype, b.shape, b.nbytes):
        return False
    return all(_equal_bytes(x, y) for x, y in zip(iter_tensor_bytes(src, a), iter_tensor_bytes(dst, b)))


def _sha256_mapped(path: Path) -> str:
    """sha256 of a file read through memory-mapped windows (no copy through the kernel)."""
    digest = hashlib.sha256()
    for piece in iter_file_bytes(path, 0, path.stat().st_size):
        digest.update(piece)
    return digest.hexdigest()


class CheckpointCheck:
    """The exact tensor check of a written checkpoint against its source, streamed tensor by tensor.

    While a checkpoint is written, :meth:`begin_shard` (once its header is written), :meth:`tensor` for each
    tensor as soon as it is written (it is checked in a worker thread while both copies are still in the
    page cache; at most two wait) and :meth:`end_shard` (which starts hashing the shard); or :meth:`shard`
    for a shard already written; then :meth:`report`, which checks any shard not checked yet. Untouched
    tensors must be byte-identical to the source (compared in 16 MiB reads); rewritten down-projections
    (``changed``: layer -> tensor name) are read whole, one pair at a time, and must hold exactly alpha x
    source at the neurons and the source elsewhere. The index must agree with the shard headers
    (:func:`editor.model.checkpoint.index_report`); ``require_same_names``: the same tensor names as the
    source and, when the source has an index, the same index file. Each shard is hashed (sha256) in a
    worker thread: the hashes the manifest records (:attr:`file_sha256`).
    """

    def __init__(self, src: str | Path, dst: str | Path, scales: Mapping[int, LayerScale],
                 changed: Mapping[int, str], arch: ArchSpec, *, require_same_names: bool):
        self.src, self.dst, self.scales, self.arch = Path(src), Path(dst), scales, arch
        self.require_same_names = require_same_names
        self.source = tensor_entries(self.src)
        self.layer_of = {name: layer for layer, name in changed.items()}
        self.changed = sorted(changed.values())
        self.written: dict[str, TensorEntry] = {}
        self.differing: list[str] = []
        self.bytes_compared = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hneurons-hash")
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="hneurons-check")
        self._pending: deque[Future] = deque()
        self._hashes: dict[str, Future] = {}
        self._shard: dict[str, TensorEntry] = {}

    def begin_shard(self, name: str) -> None:
        """The written shard ``name`` has its header: read it (its tensors' byte ranges)."""
        self._shard = shard_entries(self.dst / name)
        self.written.update(self._shard)

    def tensor(self, name: str) -> None:
        """Check tensor ``name`` of the current shard (in the worker; waits while two are pending)."""
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._checker.submit(self._check, name, self._shard[name]))

    def end_shard(self, name: str) -> None:
        """The shard ``name`` is complete: start hashing it."""
        self._hashes[name] = self._pool.submit(_sha256_mapped, self.dst / name)

    def shard(self, name: str) -> None:
        """Check every tensor of the written shard ``name`` (in file order: sequential reads) and hash it."""
        self.begin_shard(name)
        for tensor, _ in sorted(self._shard.items(), key=lambda item: item[1].begin):
            self.tensor(tensor)
        self.end_shard(name)

    def _check(self, tensor: str, b: TensorEntry) -> None:
        a = self.source.get(tensor)
        if a is None:
            return
        if tensor in self.layer_of:
            ok = _edit_is_exact(read_tensor(self.src, a), read_tensor(self.dst, b), self.arch,
                                self.scales[self.layer_of[tensor]])
        else:
            ok = _same_bytes(self.src, a, self.dst, b)
        self.bytes_compared += a.nbytes
        if not ok:
            self.differing.append(tensor)

    @property
    def file_sha256(self) -> dict[str, str]:
        return {name: future.result() for name, future in self._hashes.items()}

    def report(self) -> dict[str, Any]:
        """Finish the check; a VerificationError when anything differs outside the intended edit."""
        for name in checkpoint_shards(self.dst):
            if name not in self._hashes:
                self.shard(name)
        while self._pending:
            self._pending.popleft().result()
        hashes = self.file_sha256
        self._pool.shutdown()
        self._checker.shutdown()
        only_src = sorted(set(self.source) - set(self.written))
        only_dst = sorted(set(self.written) - set(self.source))
        index, source_index = index_report(self.dst), index_report(self.src)
        new_problems = [p for p in index["problems"] if p not in source_index["problems"]]
        same_index = None
        if self.require_same_names and (self.src / SAFETENSORS_INDEX).is_file():
            same_index = (self.src / SAFETENSORS_INDEX).read_bytes() == (self.dst / SAFETENSORS_INDEX).read_bytes()
        report = {"method": "streamed", "read_bytes": READ_CHUNK,
                  "tensors_compared": len(set(self.source) & set(self.written)), "bytes_compared": self.bytes_compared,
                  "tensors_changed": self.changed, "differing": sorted(self.differing), "only_in_source": only_src,
                  "only_in_output": only_dst, "index": {**index, "new_problems": new_problems,
                                                        "identical_to_source": same_index},
                  "shards_hashed": len(hashes)}
        names_differ = self.require_same_names and (only_src or only_dst)
        if self.differing or names_differ or new_problems or same_index is False:
            raise VerificationError(
                f"written checkpoint {self.dst} does not match the source {self.src} outside the intended edit: "
                f"differing tensors {sorted(self.differing)[:5]}, missing {only_src[:5]}, extra {only_dst[:5]}, "
                f"index problems {new_problems[:3]}" + (", index file differs from the source's" if same_index is False
                                                        else ""))
        return report


def check_checkpoint(src: str | Path, dst: str | Path, scales: Mapping[int, LayerScale], changed: Mapping[int, str],
                     arch: ArchSpec, *, require_same_names: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """:class:`CheckpointCheck` over every shard of ``dst`` at once: (report, sha256 per shard file)."""
    check = CheckpointCheck(src, dst, scales, changed, arch, require_same_names=require_same_names)
    report = check.report()
    return report, check.file_sha256


def check_adapter(adapter: str | Path, mode: str, checkpoint: str | Path, config: Any,
                  scales: Mapping[int, LayerScale]) -> dict[str, Any]:
    """An IA3 / LoRA adapter's files against the edit it must make, from the source checkpoint's files.

    What PEFT applies, checked exactly: IA3 (feed-forward) multiplies the down-projection's input by
    ``ia3_l``, which must be ones except alpha at the neurons; LoRA adds scaling x B A with scaling =
    lora_alpha / r = 1 per module (``rank_pattern``, ``alpha_pattern``), A must be the neurons' one-hot rows
    and B exactly W_down[:, J] (alpha - 1) in float32, W_down read from the checkpoint (only the targeted
    layers' tensors, one at a time; IA3 reads none). The targeted modules must be the down-projections of
    exactly the layers with neurons, and the adapter must hold no other tensor.
    """
    adapter, checkpoint = Path(adapter), Path(checkpoint)
    arch = get_arch(config)
    d_ff = arch.d_ff(config)
    peft_config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    stored = shard_entries(adapter / ADAPTER_WEIGHTS)
    modules = {layer: arch.down_proj_path(layer) for layer in sorted(scales)}
    problems: list[str] = []
    if sorted(peft_config.get("target_modules") or []) != sorted(modules.values()):
        problems.append(f"target_modules {peft_config.get('target_modules')} are not the down-projections of layers "
                        f"{sorted(scales)}")
    if bool(peft_config.get("fan_in_fan_out")) != arch.conv1d:
        problems.append(f"fan_in_fan_out is {peft_config.get('fan_in_fan_out')} for a "
                        f"{'Conv1D' if arch.conv1d else 'Linear'} down-projection")
    expected_names: set[str] = set()
    read, read_bytes = 0, 0
    if mode == "ia3":
        if sorted(peft_config.get("feedforward_modules") or []) != sorted(modules.values()):
            problems.append("feedforward_modules differ from target_modules (IA3 would scale outputs, not inputs)")
        for layer, module in modules.items():
            name = f"{adapter_prefix(module)}.ia3_l"
            expected_names.add(name)
            vector = torch.ones(1, d_ff, dtype=torch.float32)
            vector[0, scales[layer].index] = scales[layer].alpha
            if name not in stored or not _same_bits(read_tensor(adapter, stored[name]), vector):
                problems.append(f"{name} is not ones with alpha at the layer's {len(scales[layer].index)} neurons")
    else:
        source = tensor_entries(checkpoint)
        names = down_proj_tensor_names(source, arch, arch.num_layers(config), str(checkpoint))
        ranks = peft_config.get("rank_pattern") or {}
        alphas = peft_config.get("alpha_pattern") or {}
        for layer, module in modules.items():
            index, alpha = scales[layer].index, scales[layer].alpha
            k = len(index)
            if ranks.get(module) != k or alphas.get(module) != k:
                problems.append(f"{module}: rank {ranks.get(module)} / lora_alpha {alphas.get(module)}, expected {k} / "
                                f"{k} (scaling 1)")
            a_name, b_name = f"{adapter_prefix(module)}.lora_A.weight", f"{adapter_prefix(module)}.lora_B.weight"
            expected_names |= {a_name, b_name}
            if a_name not in stored or b_name not in stored:
                problems.append(f"{module}: lora_A / lora_B missing")
                continue
            one_hot = torch.zeros(k, d_ff, dtype=torch.float32)
            one_hot[torch.arange(k), index] = 1.0
            weight = read_tensor(checkpoint, source[names[layer]])
            read, read_bytes = read + 1, read_bytes + source[names[layer]].nbytes
            b = down_columns(weight, arch, index).float() * (alpha - 1.0)[None, :]
            del weight
            if not _same_bits(read_tensor(adapter, stored[a_name]), one_hot):
                problems.append(f"{a_name} is not the one-hot rows of the layer's neurons")
            if not _same_bits(read_tensor(adapter, stored[b_name]), b):
                problems.append(f"{b_name} is not W_down[:, J] x (alpha - 1) of the source checkpoint")
    extra = sorted(set(stored) - expected_names)
    if extra:
        problems.append(f"the adapter holds other tensors: {extra[:3]}")
    report = {"method": "streamed", "checked": f"{mode} adapter tensors against the source checkpoint's "
              "down-projections", "layers": len(modules), "source_tensors_read": read,
              "source_bytes_read": read_bytes, "problems": problems, "passed": not problems}
    if problems:
        raise VerificationError(f"the {mode} adapter in {adapter} does not make the intended edit: "
                                f"{'; '.join(problems[:3])}")
    return report


# ================================================================================ learned edits (abstain)
def verify_logits(expected: torch.Tensor, inputs: dict[str, torch.Tensor],
                  candidates: Iterable[tuple[str, torch.nn.Module]], tol: float, reference: str) -> dict[str, Any]:
    """Each candidate's float32 logits on ``inputs`` against ``expected`` (the in-memory edited model's); a
    VerificationError beyond ``tol``. ``reference`` says in words what ``expected`` is."""
    diffs = {}
    for name, model in candidates:
        diffs[name] = max_abs_diff(expected, prompt_logits(model, inputs))
        del model
        gc.collect()
    report = {"reference": reference, "compute_dtype": "float32", "prompts": int(inputs["input_ids"].shape[0]),
              "tokens": int(inputs["attention_mask"].sum()), "tolerance": tol, "max_abs_diff": diffs,
              "passed": all(d <= tol for d in diffs.values())}
    if not report["passed"]:
        failed = {k: v for k, v in diffs.items() if v > tol}
        raise VerificationError(f"the written edit does not reproduce {reference}: max abs logit difference {failed} "
                                f"exceeds the tolerance {tol:.3g}")
    return report


def check_blocks(source: Mapping[str, torch.Tensor], written: Mapping[str, torch.Tensor],
                 blocks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A reloaded checkpoint's tensors against the source model's: every tensor bit-identical, except the
    ``blocks`` (tensor name -> {"axis", "index", "values"}), which must hold exactly ``values`` at ``index``
    along ``axis`` and the source everywhere else. A VerificationError names what differs."""
    differing, wrong_blocks = [], []
    only_src, only_dst = sorted(set(source) - set(written)), sorted(set(written) - set(source))
    for name in sorted(set(source) & set(written)):
        a, b = source[name].detach().cpu(), written[name].detach().cpu()
        if name in blocks:
            entry = blocks[name]
            axis, index = entry["axis"], entry["index"]
            if not _same_bits(b.index_select(axis, index), entry["values"].to(b.dtype)):
                wrong_blocks.append(name)
                continue
            restored = b.clone()
            restored.index_copy_(axis, index, a.index_select(axis, index))
            if not _same_bits(restored, a):
                differing.append(name)
        elif not _same_bits(a, b):
            differing.append(name)
    missing_blocks = sorted(set(blocks) - set(written))
    report = {"method": "reloaded", "tensors_compared": len(set(source) & set(written)),
              "tensors_changed": sorted(blocks), "differing": differing, "wrong_blocks": wrong_blocks,
              "missing_blocks": missing_blocks, "only_in_source": only_src, "only_in_output": only_dst}
    if differing or wrong_blocks or missing_blocks or only_src or only_dst:
        raise VerificationError(f"the written checkpoint differs from the source outside the trained columns / rows "
                                f"(differing {differing[:5]}), or not as trained there (wrong {wrong_blocks[:5]}, "
                                f"missing {missing_blocks[:5]}), or in its tensor names (missing {only_src[:5]}, extra "
                                f"{only_dst[:5]})")
    return report
