"""The exact adapter forms of an activation scaling: PEFT IA3 on the down-projections (feed-forward
modules: the scale multiplies the module's input) and LoRA of rank k per layer (A = one-hot rows of the
neurons, B = W_down[:, J] diag(alpha - 1)); docs/METHOD.md section 6."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..formats import ADAPTER_WEIGHTS
from ..model.hooks import LayerScale, down_columns, neuron_axis
from ..model.registry import get_arch


def adapter_prefix(module_path: str) -> str:
    # PEFT's saved state-dict keys: "base_model.model." + module path (adapter name removed).
    return f"base_model.model.{module_path}"


def _save_adapter(folder: Path, peft_config: Any, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})


def make_ia3_adapter(config: Any, scales: Mapping[int, LayerScale], folder: str | Path, *,
                     base_model_name_or_path: str, revision: str | None = None) -> list[str]:
    """Write an exact IA3 suppression adapter; returns the targeted module names.

    IA3 on a feed-forward module multiplies the module's input elementwise by ``ia3_l``: ones except
    alpha at the H-Neurons, float32, for the down-projection of each layer that holds H-Neurons.
    """
    from peft import IA3Config

    arch = get_arch(config)
    d_ff = arch.d_ff(config)
    modules = [arch.down_proj_path(layer) for layer in scales]
    tensors = {}
    for layer, scale in scales.items():
        vector = torch.ones(1, d_ff, dtype=torch.float32)
        vector[0, scale.index] = scale.alpha
        tensors[f"{adapter_prefix(arch.down_proj_path(layer))}.ia3_l"] = vector
    peft_config = IA3Config(task_type="CAUSAL_LM", target_modules=modules, feedforward_modules=modules,
                            fan_in_fan_out=arch.conv1d, base_model_name_or_path=base_model_name_or_path,
                            revision=revision, inference_mode=True)
    _save_adapter(Path(folder), peft_config, tensors)
    return modules


def make_lora_adapter(config: Any, down_weight: Callable[[int], torch.Tensor], scales: Mapping[int, LayerScale],
                      folder: str | Path, *, base_model_name_or_path: str, revision: str | None = None) -> list[str]:
    """Write an exact LoRA suppression adapter; returns the targeted module names.

    ``down_weight(layer)`` gives a layer's down-projection weight (a loaded model's, or one tensor read from
    the checkpoint: only the targeted layers are asked for). Per targeted layer: rank k = its H-Neurons,
    A [k, d_ff] = one-hot rows, B [d_model, k] = W_down[:, J] * (alpha - 1), lora_alpha = k so the scaling
    is 1 (float32).
    """
    arch = get_arch(config)
    factors = {}
    for layer, scale in scales.items():
        weight = down_weight(layer)
        rank = len(scale.index)
        a = torch.zeros(rank, weight.shape[neuron_axis(arch)], dtype=torch.float32)
        a[torch.arange(rank), scale.index] = 1.0
        b = down_columns(weight.detach(), arch, scale.index).float().cpu() * (scale.alpha - 1.0)[None, :]
        del weight
        factors[arch.down_proj_path(layer)] = (a, b)
    return make_factor_lora_adapter(config, factors, folder, base_model_name_or_path=base_model_name_or_path,
                                    revision=revision)


def make_factor_lora_adapter(config: Any, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], folder: str | Path,
                             *, base_model_name_or_path: str, revision: str | None = None) -> list[str]:
    """Write a LoRA adapter from exact factors: module full name -> (A [r, in], B [out, r]); rank r and
    lora_alpha = r per module (``rank_pattern`` = ``alpha_pattern``: scaling 1), no dropout, float32. PEFT then
    adds exactly B A to each module's weight (the learned abstention edit, :func:`editor.edit.abstain_delta.
    lora_factors`). Returns the targeted module names."""
    from peft import LoraConfig

    arch = get_arch(config)
    tensors, ranks = {}, {}
    for name, (a, b) in factors.items():
        tensors[f"{adapter_prefix(name)}.lora_A.weight"] = a.float().contiguous()
        tensors[f"{adapter_prefix(name)}.lora_B.weight"] = b.float().contiguous()
        ranks[name] = int(a.shape[0])
    top = max(ranks.values())
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=top, lora_alpha=top, target_modules=list(ranks),
                             rank_pattern=ranks, alpha_pattern=dict(ranks), lora_dropout=0.0, bias="none",
                             fan_in_fan_out=arch.conv1d, base_model_name_or_path=base_model_name_or_path,
                             revision=revision, inference_mode=True)
    _save_adapter(Path(folder), peft_config, tensors)
    return list(ranks)
