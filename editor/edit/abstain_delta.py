"""The learned part of the abstention edit: one delta tensor per (layer, part), confined to a neuron set.

For neuron (l, j) the trainable parameters are its write vector (column j of layer l's W_down; row j of a
GPT-2 Conv1D weight) and, when asked, its read vectors (row j of W_up / W_gate; for Phi-3's fused gate_up_proj
rows j and d_ff + j). Per layer with k neurons J (sorted) a part holds

* ``down``: delta [d_model, k]; the down-projection's output gains ``z[..., J] @ delta.T``;
* ``up`` / ``gate``: delta [k, d_model]; the projection's output features J gain ``x @ delta.T``,

each times a strength s. Nothing else of the model changes: the deltas are added by forward hooks while
training (every model parameter frozen) and folded into exactly those columns / rows when written
(:func:`merged_into_weights`, :func:`expected_blocks`), or written as the exact LoRA factors
(:func:`lora_factors`). Architecture knowledge comes from :mod:`editor.model.registry`: module paths, fused
gate/up, Conv1D orientation.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..formats import ABSTAIN_DELTA_FORMAT
from ..model.hooks import LayerScale, decoder_layers, get_submodule, hooks_removed_on_exit
from ..model.registry import ArchSpec, get_arch


@dataclass(frozen=True)
class Part:
    """One trainable block: the rows (up / gate) or input channels (down) of one module that belong to the
    neurons ``index`` of ``layer``."""

    layer: int
    part: str  # "down" | "up" | "gate"
    path: str  # module path inside a decoder layer (registry spelling)
    index: torch.Tensor  # long [k]: the neurons
    features: torch.Tensor  # long [k]: down: input channels (= index); up / gate: output rows of the module

    @property
    def name(self) -> str:
        return f"{self.part}.{self.layer}"

    def module_name(self, arch: ArchSpec) -> str:
        """Full module name inside the top-level model (what PEFT targets)."""
        return f"{arch.layers}.{self.layer}.{self.path}"


def parts_for(arch: ArchSpec, scales: dict[int, LayerScale], train: list[str], d_ff: int) -> list[Part]:
    """The blocks ``train`` (down / up / gate) names, for every layer of the neuron set (``scales``: its
    per-layer indices; the alphas are not used)."""
    if "gate" in train and not arch.gated:
        raise InputError(f"a {arch.model_type} MLP has no gate projection: train down and/or up only")
    out = []
    for layer, scale in sorted(scales.items()):
        index = scale.index.clone()
        for part in ("gate", "up", "down"):
            if part not in train:
                continue
            if part == "down":
                out.append(Part(layer, part, arch.down_proj, index, index))
            elif arch.fused_gate_up:  # phi3: rows [0, d_ff) gate, [d_ff, 2 d_ff) up
                out.append(Part(layer, part, arch.up_proj, index, index + (d_ff if part == "up" else 0)))
            else:
                out.append(Part(layer, part, arch.gate_proj if part == "gate" else arch.up_proj, index, index))
    return out


def _weight(module: nn.Module) -> torch.Tensor:
    return getattr(module, "base_layer", module).weight


def _d_model(weight: torch.Tensor, part: str, conv1d: bool) -> int:
    # Linear: [out, in]; Conv1D: [in, out]. down: out = d_model; up / gate: in = d_model.
    if part == "down":
        return weight.shape[1] if conv1d else weight.shape[0]
    return weight.shape[0] if conv1d else weight.shape[1]


def block_axis(part: str, conv1d: bool) -> int:
    """Axis of the stored weight that the block's index runs along."""
    down = part == "down"
    return (0 if down else 1) if conv1d else (1 if down else 0)


class NeuronDelta(nn.Module):
    """The trainable deltas of a neuron set (float32, zeros at the start: the edit starts as the model)."""

    def __init__(self, arch: ArchSpec, parts: list[Part], shapes: dict[str, tuple[int, int]]):
        super().__init__()
        self.arch = arch
        self.parts = parts
        self.deltas = nn.ParameterDict({p.name.replace(".", "_"): nn.Parameter(torch.zeros(shapes[p.name]))
                                        for p in parts})

    @classmethod
    def for_model(cls, model: nn.Module, arch: ArchSpec, parts: list[Part]) -> NeuronDelta:
        layers = decoder_layers(model, arch)
        shapes = {}
        for p in parts:
            weight = _weight(get_submodule(layers[p.layer], p.path))
            d_model, k = _d_model(weight, p.part, arch.conv1d), len(p.index)
            shapes[p.name] = (d_model, k) if p.part == "down" else (k, d_model)
        delta = cls(arch, parts, shapes)
        for p in parts:  # each delta where its module's weight is (device_map=auto spreads the layers)
            weight = _weight(get_submodule(layers[p.layer], p.path))
            delta.tensor(p).data = delta.tensor(p).data.to(weight.device)
        return delta

    def tensor(self, part: Part) -> nn.Parameter:
        return self.deltas[part.name.replace(".", "_")]

    def count(self) -> int:
        return sum(t.numel() for t in self.deltas.values())

    def state(self) -> dict[str, torch.Tensor]:
        """A detached CPU copy of the deltas (for checkpoints and the best epoch)."""
        return {k: v.detach().cpu().clone() for k, v in self.deltas.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.deltas.items():
                v.copy_(state[k].to(v.device))

    def applied(self, model: nn.Module, strength: float = 1.0) -> contextlib.AbstractContextManager[None]:
        """The trainable-edit protocol of :func:`editor.edit.abstain_train.train`: :func:`applied`."""
        return applied(model, self, strength)

    def layout(self, part: Part) -> torch.Tensor:
        """The delta in the stored weight's layout along :func:`block_axis` (what is added to those columns /
        rows): Linear as is, Conv1D transposed."""
        delta = self.tensor(part).detach()
        return delta.T if self.arch.conv1d else delta


@contextlib.contextmanager
def applied(model: nn.Module, delta: NeuronDelta, strength: float = 1.0) -> Iterator[None]:
    """Run-time form of the edit: forward hooks add ``strength`` x each delta's contribution (differentiable;
    the weights are untouched). Removed on exit, also on errors."""
    layers = decoder_layers(model, delta.arch)
    handles = []
    for part in delta.parts:
        module = get_submodule(layers[part.layer], part.path)
        tensor = delta.tensor(part)
        if part.part == "down":
            def hook(_module, args, output, _t=tensor, _idx=part.features):
                z = args[0]
                change = z.index_select(-1, _idx.to(z.device)).float() @ _t.T.to(z.device)
                return output + (strength * change).to(output.dtype)
        else:
            def hook(_module, args, output, _t=tensor, _rows=part.features):
                x = args[0]
                change = (strength * (x.float() @ _t.T.to(x.device))).to(output.dtype)
                return output.index_add(-1, _rows.to(output.device), change)
        handles.append(module.register_forward_hook(hook))
    with hooks_removed_on_exit(handles):
        yield


def expected_blocks(model: nn.Module, delta: NeuronDelta, strength: float) -> dict[str, dict[str, Any]]:
    """What a written checkpoint holds at the edited places: tensor name -> {"axis", "index", "values" (the
    source block + strength x delta, rounded once into the stored dtype)}. Several parts on one tensor (fused
    gate_up) are merged into one entry."""
    layers = decoder_layers(model, delta.arch)
    out: dict[str, dict[str, Any]] = {}
    for part in delta.parts:
        weight = _weight(get_submodule(layers[part.layer], part.path))
        axis = block_axis(part.part, delta.arch.conv1d)
        idx = part.features.to(weight.device)
        source = weight.detach().index_select(axis, idx)
        values = (source.float() + strength * delta.layout(part).to(weight.device)).to(weight.dtype)
        name = f"{part.module_name(delta.arch)}.weight"
        if name in out:
            entry = out[name]
            entry["index"] = torch.cat([entry["index"], idx.cpu()])
            entry["values"] = torch.cat([entry["values"], values.cpu()], dim=axis)
        else:
            out[name] = {"axis": axis, "index": idx.cpu(), "values": values.cpu(), "weight": weight}
    return out


@contextlib.contextmanager
def merged_into_weights(model: nn.Module, delta: NeuronDelta, strength: float) -> Iterator[dict[str, dict]]:
    """The edit folded into the weights for the duration (to save them), then the exact originals put back."""
    blocks = expected_blocks(model, delta, strength)
    saved = []
    with torch.no_grad():
        for entry in blocks.values():
            weight, axis, idx = entry["weight"], entry["axis"], entry["index"].to(entry["weight"].device)
            saved.append((weight, axis, idx, weight.index_select(axis, idx).clone()))
            weight.index_copy_(axis, idx, entry["values"].to(weight.device))
    try:
        yield blocks
    finally:
        with torch.no_grad():
            for weight, axis, idx, original in saved:
                weight.index_copy_(axis, idx, original)


def lora_factors(model: nn.Module, delta: NeuronDelta, strength: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Exact LoRA factors per targeted module (full name -> (A [r, in], B [out, r]), float32; PEFT applies
    W + B A with scaling 1, lora_alpha = r). down: A = one-hot rows of the neurons (in = d_ff), B = strength x
    delta [d_model, k]. up / gate: B = one-hot columns at the neurons' output rows, A = strength x delta
    [k, d_model]. Parts on one module (fused gate_up) are stacked along the rank."""
    layers = decoder_layers(model, delta.arch)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in delta.parts:
        weight = _weight(get_submodule(layers[part.layer], part.path))
        conv1d = delta.arch.conv1d
        in_features, out_features = (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])
        k = len(part.index)
        learned = strength * delta.tensor(part).detach().float().cpu()
        one_hot_at = part.features.cpu()
        if part.part == "down":
            a = torch.zeros(k, in_features)
            a[torch.arange(k), one_hot_at] = 1.0
            b = learned.clone()
        else:
            b = torch.zeros(out_features, k)
            b[one_hot_at, torch.arange(k)] = 1.0
            a = learned.clone()
        name = part.module_name(delta.arch)
        if name in factors:
            a0, b0 = factors[name]
            a, b = torch.cat([a0, a], 0), torch.cat([b0, b], 1)
        factors[name] = (a, b)
    return factors


# ------------------------------------------------------------------------------------------ the delta file
def save_delta(path: str | Path, delta: NeuronDelta, strength: float, extra: dict[str, Any]) -> None:
    """``abstain_delta.safetensors``: per part ``<part>.<layer>.delta`` (float32, the learned change at
    strength 1, shapes as in the module docstring) and ``<part>.<layer>.index`` (the neurons), metadata
    format, strength (chosen), arch (model_type) and ``extra`` (JSON strings)."""
    from ..artifacts import atomic_write_bytes, safetensors_bytes

    tensors: dict[str, torch.Tensor] = {}
    for part in delta.parts:
        tensors[f"{part.name}.delta"] = delta.tensor(part).detach().float().cpu().contiguous()
        tensors[f"{part.name}.index"] = part.index.cpu().clone()
    metadata = {"format": ABSTAIN_DELTA_FORMAT, "strength": repr(float(strength)), "model_type": delta.arch.model_type,
                **{k: json.dumps(v) for k, v in extra.items()}}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def load_delta(path: str | Path, model: nn.Module) -> tuple[NeuronDelta, float]:
    """A saved delta on ``model`` (for run-time evaluation with :func:`applied`): (delta, chosen strength)."""
    from safetensors import safe_open

    arch = get_arch(model.config)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("format") != ABSTAIN_DELTA_FORMAT:
            raise InputError(f"{path} is not an abstain delta file (format {meta.get('format')!r})")
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    d_ff = arch.d_ff(model.config)
    train = sorted({k.split(".")[0] for k in tensors})
    scales = {int(k.split(".")[1]): LayerScale(v, torch.ones(len(v))) for k, v in tensors.items() if k.endswith(".index")}
    parts = parts_for(arch, scales, train, d_ff)
    delta = NeuronDelta.for_model(model, arch, parts)
    delta.load_state({p.name.replace(".", "_"): tensors[f"{p.name}.delta"] for p in parts})
    return delta, float(meta["strength"])
