"""The LoRA baseline of the abstention edit (``hneurons edit --mode abstain --abstain-params lora``): what a user
would train instead of the neuron set's own weights. A standard LoRA on the down-projection of every decoder
layer (the module the registry names, :mod:`editor.model.registry`), trained by the same loop on the same data
with the same objective, budget, early stopping and strength choice (:func:`editor.edit.abstain_train.train`).

Per layer l: A_l [r, d_ff] and B_l [d_model, r] (float32), initialised as PEFT initialises a LoRA layer: A
kaiming-uniform with a = sqrt(5) (uniform in +-1/sqrt(d_ff)), drawn from a generator seeded with the run's
seed, and B = 0, so the edit starts as the model. While training, a forward hook adds ``strength x (x A^T) B^T``
to the down-projection's output (x its input): PEFT's LoRA forward with lora_alpha = r (scaling 1), no dropout,
no bias. Every model parameter stays frozen. The written adapter (:func:`LoraDelta.factors`) is an ordinary PEFT
LoRA with those factors and B multiplied by the chosen strength.

The rank is matched to the neuron edit's parameter count N (:func:`matched_rank`): the r >= 1 whose count
r x (d_ff + d_model) x layers is closest to N (ties: the smaller). One rank of one layer already has d_ff +
d_model parameters, so for a small neuron set even rank 1 has several times the neuron edit's count (SmolLM2-135M:
40 neurons x 576 = 23,040 against 1 x (1536 + 576) x 30 = 63,360, 2.75x); the manifest states the ratio.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..model.hooks import decoder_layers, get_submodule, hooks_removed_on_exit
from ..model.registry import ArchSpec


def _io(weight: torch.Tensor, conv1d: bool) -> tuple[int, int]:
    """(in, out) features of a Linear ([out, in]) or Conv1D ([in, out]) weight."""
    return (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])


def per_rank(model: nn.Module, arch: ArchSpec) -> int:
    """Parameters of one LoRA rank over every layer's down-projection: sum over layers of d_in + d_out."""
    total = 0
    for layer in decoder_layers(model, arch):
        module = get_submodule(layer, arch.down_proj)
        d_in, d_out = _io(getattr(module, "base_layer", module).weight, arch.conv1d)
        total += d_in + d_out
    return total


def matched_rank(target: int, one_rank: int) -> int:
    """The smallest rank r >= 1 whose count r x ``one_rank`` is closest to ``target``."""
    low = max(1, target // one_rank)
    return min((low, low + 1), key=lambda r: (abs(r * one_rank - target), r))


class LoraDelta(nn.Module):
    """LoRA factors on every down-projection (module docstring), with the trainable-edit protocol of
    :func:`editor.edit.abstain_train.train`: ``parameters()``, ``state()`` / ``load_state()``, ``count()`` and
    ``applied(model, strength)``."""

    def __init__(self, arch: ArchSpec, names: list[str], shapes: list[tuple[int, int]], rank: int, seed: int):
        super().__init__()
        self.arch, self.names, self.rank = arch, names, rank
        generator = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for d_in, d_out in shapes:
            bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on [r, d_in], as PEFT's LoRA init
            self.lora_A.append(nn.Parameter((torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound))
            self.lora_B.append(nn.Parameter(torch.zeros(d_out, rank)))

    @classmethod
    def for_model(cls, model: nn.Module, arch: ArchSpec, rank: int, seed: int) -> LoraDelta:
        layers = decoder_layers(model, arch)
        weights = [getattr(m, "base_layer", m).weight for m in (get_submodule(l, arch.down_proj) for l in layers)]
        names = [arch.down_proj_path(i) for i in range(len(layers))]
        delta = cls(arch, names, [_io(w, arch.conv1d) for w in weights], rank, seed)
        for a, b, w in zip(delta.lora_A, delta.lora_B, weights):  # where each layer's weight is (device_map=auto)
            a.data, b.data = a.data.to(w.device), b.data.to(w.device)
        return delta

    def count(self) -> int:
        return sum(t.numel() for t in self.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.state_dict().items():
                v.copy_(state[k].to(v.device))

    @contextlib.contextmanager
    def applied(self, model: nn.Module, strength: float = 1.0) -> Iterator[None]:
        """Forward hooks add ``strength x (x A^T) B^T`` to each down-projection's output (differentiable; the
        weights untouched); removed on exit, also on errors."""
        layers = decoder_layers(model, self.arch)
        handles = []
        for layer, a, b in zip(layers, self.lora_A, self.lora_B):
            def hook(_module, args, output, _a=a, _b=b):
                x = args[0]
                change = (x.float() @ _a.T.to(x.device)) @ _b.T.to(x.device)
                return output + (strength * change).to(output.dtype)
            handles.append(get_submodule(layer, self.arch.down_proj).register_forward_hook(hook))
        with hooks_removed_on_exit(handles):
            yield

    def factors(self, strength: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The adapter's factors per module (full name -> (A [r, d_ff], strength x B [d_model, r]), float32), for
        :func:`editor.edit.adapters.make_factor_lora_adapter` (lora_alpha = r: scaling 1)."""
        return {name: (a.detach().float().cpu().clone(), strength * b.detach().float().cpu())
                for name, a, b in zip(self.names, self.lora_A, self.lora_B)}

    def record(self, neuron_parameters: int, rank_given: int | None) -> dict[str, Any]:
        """The baseline's facts for the manifest: rank, parameter counts and their ratio."""
        ratio = self.count() / neuron_parameters if neuron_parameters else None
        note = None
        if rank_given is None and self.rank == 1 and ratio is not None and ratio > 1.5:
            note = (f"rank 1, the smallest, already has {ratio:.2f}x the neuron edit's trainable parameters "
                    f"({self.count()} against {neuron_parameters}): no LoRA on every down-projection is as small")
        return {"rank": self.rank, "rank_from": "given (lora_rank)" if rank_given is not None else
                "matched: the parameter count closest to the neuron edit's",
                "lora_alpha": self.rank, "scaling": 1.0, "target_modules": list(self.names),
                "init": "A kaiming-uniform (a = sqrt(5), as PEFT), seeded with the run's seed; B = 0",
                "parameters": self.count(), "neuron_edit_parameters": neuron_parameters,
                "ratio_to_neuron_edit": ratio, "note": note}
