"""Batch sizes chosen from free accelerator memory (``batch_size="auto"``).

On a GPU the fastest batch is the largest that fits. ``auto`` estimates what one row of a batch costs
from the model's dimensions and the sequence length, and fills a fraction of the free memory
(``torch.cuda.mem_get_info``) with such rows. On the CPU ``auto`` keeps the stage's default: there the
batch size is a throughput/latency trade-off, not a memory limit (SmolLM2 generation peaks near 32 rows
on 2 cores).

The estimates are deliberately conservative upper bounds (fp32 working copies, eager attention's
[heads, seq, seq] scores), so that ``auto`` never chooses a batch that runs out of memory; the cap keeps
resume chunks and progress updates reasonably small.

* generation (collect): the KV cache of the whole sequence (prompt + max_new_tokens), the prompt pass's
  transient FFN and attention activations, and the sampler's fp32 vocabulary-sized work arrays;
* features (locate, detect, origin): one layer's transient FFN activations (the CETT hooks reduce each
  layer at once, so layers do not accumulate), its attention scores and the residual stream.

With ``device="auto"`` (a model spread over several GPUs) the free memory of the fullest GPU is used
for a whole row, which over-estimates each GPU's share: safe, if not tight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator

from ..errors import InputError

AUTO = "auto"
CPU_DEFAULTS = {"generation": 32, "features": 8}
CAPS = {"generation": 512, "features": 128}


@dataclass(frozen=True)
class ModelDims:
    """The sizes that decide how much memory one batch row needs."""

    num_layers: int
    hidden: int
    d_ff: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config: Any, arch: Any) -> "ModelDims":
        """Read the dimensions of a transformers config (through the registry's text sub-config)."""
        cfg = arch.text_cfg(config)
        hidden = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
        return cls(arch.num_layers(config), hidden, arch.d_ff(config), heads, kv_heads, head_dim,
                   int(cfg.vocab_size))


def generation_row_bytes(dims: ModelDims, seq_len: int, dtype_bytes: int) -> int:
    """Upper bound of the memory one generated row needs at ``seq_len`` tokens (prompt + new tokens)."""
    kv_cache = 2 * dims.num_layers * dims.kv_heads * dims.head_dim * seq_len * dtype_bytes
    prompt_pass = seq_len * (4 * dims.hidden + 3 * dims.d_ff) * dtype_bytes + dims.heads * seq_len * seq_len * 4
    sampler = dims.vocab * 24  # fp32 logits, sorted copy, int64 order, softmax and cumsum
    return kv_cache + prompt_pass + sampler


def features_row_bytes(dims: ModelDims, seq_len: int, dtype_bytes: int) -> int:
    """Upper bound of the memory one teacher-forced row needs in a CETT forward pass."""
    ffn = seq_len * dims.d_ff * (3 * dtype_bytes + 2 * 4)  # gate, up, z; |z| and z as float32 in the hook
    attention = dims.heads * seq_len * seq_len * 4 + 4 * seq_len * dims.hidden * dtype_bytes
    outputs = 2 * dims.num_layers * dims.d_ff * 4 + dims.vocab * 4  # [2, layers*d_ff] features, last logits
    return ffn + attention + outputs


def batch_size_for(free_bytes: int, row_bytes: int, *, fraction: float = 0.7, minimum: int = 1,
                   maximum: int = 512) -> int:
    """How many rows of ``row_bytes`` fit in ``fraction`` of ``free_bytes`` (clamped to [minimum, maximum])."""
    if row_bytes <= 0:
        raise ValueError(f"row_bytes must be positive, got {row_bytes}")
    fit = int(free_bytes * fraction) // row_bytes
    return max(minimum, min(maximum, fit))


def parse_batch_size(value: Any, what: str = "batch_size") -> int | str:
    """An int >= 1 or ``"auto"`` (also from command-line text); anything else is an :class:`InputError`."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"{what} must be a positive integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer or 'auto', got {value!r}")
    return value


def free_accelerator_bytes(model: torch.nn.Module) -> int | None:
    """Free memory of the fullest CUDA device holding ``model``'s weights; None when it is on the CPU."""
    devices = {p.device for p in model.parameters() if p.device.type == "cuda"}
    if not devices:
        return None
    return min(torch.cuda.mem_get_info(d)[0] for d in devices)


def model_dtype_bytes(model: torch.nn.Module) -> int:
    return next(model.parameters()).element_size()


def resolve_batch_size(requested: int | str, lm: Any, kind: str, seq_len: int) -> int:
    """``requested`` itself, or for ``"auto"`` the size that fits the free accelerator memory.

    ``kind`` is ``"generation"`` or ``"features"``; ``seq_len`` the longest sequence a batch will hold.
    On the CPU ``auto`` is the stage's default (:data:`CPU_DEFAULTS`).
    """
    requested = parse_batch_size(requested)
    if requested != AUTO:
        return requested
    free = free_accelerator_bytes(lm.model)
    if free is None:
        return CPU_DEFAULTS[kind]
    dims = ModelDims.of(lm.config, lm.arch)
    row = {"generation": generation_row_bytes, "features": features_row_bytes}[kind]
    return batch_size_for(free, row(dims, max(1, seq_len), model_dtype_bytes(lm.model)), maximum=CAPS[kind])


def _batch_size_setting(value: Any) -> Any:
    try:
        return parse_batch_size(value)
    except InputError:
        raise ValueError("must be a positive integer or 'auto'") from None


# A settings field: a positive int, or "auto" (the largest batch that fits the free GPU memory; the stage's
# default on the CPU).
BatchSize = Annotated[int | Literal["auto"], BeforeValidator(_batch_size_setting)]
