"""Neuron access primitives: find FFN modules, capture neuron activations, read and scale write vectors.

Neuron (l, j) is input channel j of layer l's down-projection (see :mod:`editor.model.registry`). Activations
are captured with forward *pre*-hooks on the down-projection, so they are exactly what it multiplies,
whatever the activation function or MLP layout.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InputError
from .registry import ArchSpec, get_arch


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return operator.attrgetter(path)(root)
    except AttributeError:
        raise InputError(f"{type(root).__name__} has no module {path!r} (registry entry does not match)") from None


def arch_of(model: nn.Module) -> ArchSpec:
    return get_arch(model.config)


def decoder_layers(model: nn.Module, arch: ArchSpec | None = None) -> Sequence[nn.Module]:
    arch = arch or arch_of(model)
    return get_submodule(_unwrap(model), arch.layers)


def down_proj_modules(model: nn.Module, arch: ArchSpec | None = None) -> list[nn.Module]:
    arch = arch or arch_of(model)
    return [get_submodule(layer, arch.down_proj) for layer in decoder_layers(model, arch)]


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (PeftModel -> LoraModel -> *ForCausalLM)."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


def down_weight(module: nn.Module) -> torch.Tensor:
    """The down-projection's weight, through a PEFT wrapper layer if there is one."""
    base = getattr(module, "base_layer", module)
    return base.weight


def down_columns(weight: torch.Tensor, arch: ArchSpec, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Write vectors of neurons ``index`` as a [d_model, k] matrix (columns of W_down; Conv1D rows)."""
    idx = torch.as_tensor(index, dtype=torch.long, device=weight.device)
    return weight[idx, :].T if arch.conv1d else weight[:, idx]


def column_norms(weight: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
    """||W_down[:, j]||_2 for every neuron j, in float32."""
    return torch.linalg.vector_norm(weight.float(), dim=1 if arch.conv1d else 0)


def neuron_axis(arch: ArchSpec) -> int:
    """Axis of the stored down-projection weight that indexes neurons."""
    return 0 if arch.conv1d else 1


@torch.no_grad()
def scale_columns_(weight: torch.Tensor, arch: ArchSpec, index: torch.Tensor, alpha: torch.Tensor) -> None:
    """In place: multiply neuron ``index[i]``'s write vector by ``alpha[i]`` (exact weight-space edit)."""
    idx = torch.as_tensor(index, dtype=torch.long, device=weight.device)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=weight.device)
    if arch.conv1d:
        weight[idx, :] = (weight[idx, :].float() * a[:, None]).to(weight.dtype)
    else:
        weight[:, idx] = (weight[:, idx].float() * a[None, :]).to(weight.dtype)


# --------------------------------------------------------------------------------------------- neuron sets
@dataclass(frozen=True)
class LayerScale:
    """Neurons of one layer and their activation scales."""

    index: torch.Tensor  # long [k]
    alpha: torch.Tensor  # float32 [k]


def group_by_layer(
    neurons: Iterable[tuple[int, int]], alpha: float | Sequence[float] | Mapping[tuple[int, int], float]
) -> dict[int, LayerScale]:
    """Group (layer, index) pairs into per-layer index/alpha tensors, sorted by index."""
    pairs = list(neurons)
    if isinstance(alpha, Mapping):
        alphas = [float(alpha[p]) for p in pairs]
    elif isinstance(alpha, (int, float)):
        alphas = [float(alpha)] * len(pairs)
    else:
        alphas = [float(a) for a in alpha]
        if len(alphas) != len(pairs):
            raise InputError(f"{len(alphas)} alphas given for {len(pairs)} neurons")
    per_layer: dict[int, list[tuple[int, float]]] = {}
    for (layer, index), a in zip(pairs, alphas):
        per_layer.setdefault(int(layer), []).append((int(index), a))
    out = {}
    for layer, items in sorted(per_layer.items()):
        items.sort()
        out[layer] = LayerScale(
            torch.tensor([i for i, _ in items], dtype=torch.long),
            torch.tensor([a for _, a in items], dtype=torch.float32),
        )
    return out


# ------------------------------------------------------------------------------------------------- hooks
@contextlib.contextmanager
def hooks_removed_on_exit(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


@contextlib.contextmanager
def on_down_inputs(
    model: nn.Module, callback: Callable[[int, torch.Tensor], None], layers: Iterable[int] | None = None
) -> Iterator[None]:
    """Call ``callback(layer, z)`` with each chosen layer's down-projection input [batch, seq, d_ff].

    The hooks are removed when the ``with`` block exits, also on errors.
    """
    modules = down_proj_modules(model)
    chosen = range(len(modules)) if layers is None else layers
    handles = []
    for layer in chosen:
        def hook(_module, args, _layer=layer):
            callback(_layer, args[0])

        handles.append(modules[layer].register_forward_pre_hook(hook))
    with hooks_removed_on_exit(handles):
        yield


@contextlib.contextmanager
def capture_down_inputs(model: nn.Module, layers: Iterable[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Collect the down-projection inputs of the last forward pass, keyed by layer (detached)."""
    captured: dict[int, torch.Tensor] = {}

    def keep(layer: int, z: torch.Tensor) -> None:
        captured[layer] = z.detach()

    with on_down_inputs(model, keep, layers):
        yield captured


@contextlib.contextmanager
def scaled_neurons(model: nn.Module, scales: Mapping[int, LayerScale]) -> Iterator[None]:
    """Run-time intervention: z_j <- alpha_j * z_j at every position, weights untouched."""
    modules = down_proj_modules(model)
    handles = []
    for layer, scale in scales.items():
        if not 0 <= layer < len(modules):
            raise InputError(f"layer {layer} out of range: the model has {len(modules)} layers")

        def hook(_module, args, _scale=scale):
            z = args[0]
            idx = _scale.index.to(z.device)
            factor = torch.ones(z.shape[-1], dtype=z.dtype, device=z.device)
            factor[idx] = _scale.alpha.to(device=z.device, dtype=z.dtype)
            return (z * factor,) + tuple(args[1:])

        handles.append(modules[layer].register_forward_pre_hook(hook))
    with hooks_removed_on_exit(handles):
        yield
