"""What is evaluated: a loaded model, optionally with a PEFT adapter or a run-time neuron scaling, and the
random-neuron controls drawn for a neuron set."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import files_sha256, read_json
from ..errors import InputError, ModelLoadError
from ..formats import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EDIT_MANIFEST, NEURONS
from ..model.hooks import LayerScale, group_by_layer, scaled_neurons
from ..model.loading import LoadedModel, check_safetensors_file
from ..model.neuron_set import NeuronSet, matched_random_pairs

Pair = tuple[int, int]


@dataclass
class Variant:
    """One model to evaluate: a loaded model, optionally with an adapter or a run-time neuron scaling."""

    name: str
    lm: LoadedModel
    adapter: Path | None = None
    neurons: NeuronSet | None = None
    alphas: Mapping[Pair, float] | None = None
    seed: int | None = None  # control seed
    match_layers: bool = True
    system_instruction: str | None = None  # given to lm-eval for this variant (None: the settings' one)

    @property
    def kind(self) -> str:
        return "hooks" if self.neurons is not None else "adapter" if self.adapter is not None else "model"

    def scales(self) -> dict[int, LayerScale]:
        assert self.neurons is not None and self.alphas is not None
        return group_by_layer(self.neurons.neurons, self.alphas)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "model": self.lm.identity()}
        if self.adapter is not None:
            info["adapter"] = describe_adapter(self.adapter)
        if self.neurons is not None:
            info["neurons"] = {"sha256": self.neurons.sha256, "count": len(self.neurons),
                               "per_layer": {str(k): v for k, v in self.neurons.per_layer().items()},
                               "source_file": str(self.neurons.path) if self.neurons.path else None,
                               "seed": self.seed, "match_layers": self.match_layers if self.seed is not None else None}
            values = list((self.alphas or {}).values())
            info["alpha"] = {"min": min(values), "max": max(values),
                             "default": values[0] if len(set(values)) == 1 else None}
        if self.system_instruction is not None:  # only when set: the run keys of earlier results stay valid
            info["system_instruction"] = self.system_instruction
        return info

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        """The module to evaluate, with the edit applied for the duration of the block."""
        if self.kind == "hooks":
            with scaled_neurons(self.lm.model, self.scales()):
                yield self.lm.model
        elif self.kind == "adapter":
            with peft_applied(self.lm.model, self.adapter) as wrapped:
                yield wrapped
        else:
            yield self.lm.model


def describe_adapter(folder: Path) -> dict[str, Any]:
    files = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if (folder / n).is_file()]
    info: dict[str, Any] = {"path": str(folder), "sha256": files_sha256(folder, files)}
    manifest = folder / EDIT_MANIFEST
    if manifest.is_file():
        doc = read_json(manifest, "edit manifest")
        info["edit"] = {k: doc.get(k) for k in ("format", "mode", "alpha")} | {
            "neurons_sha256": (doc.get("neurons") or {}).get("sha256")}
    return info


def check_adapter(adapter: str | Path) -> Path:
    """A PEFT adapter folder hneurons can apply (config JSON, complete safetensors weights; no pickle), checked
    before any model loads; returns it as an absolute path (a relative one would be taken for a Hub id)."""
    folder = Path(adapter).resolve()
    if not (folder / ADAPTER_CONFIG).is_file():
        raise InputError(f"adapter folder {adapter} has no adapter_config.json; expected a PEFT adapter written by "
                         f"`hneurons edit --mode ia3|lora`")
    read_json(folder / ADAPTER_CONFIG, "adapter config")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        what = f"only the pickled {pickled[0]}: unpickling can run arbitrary code, so hneurons refuses it; convert " \
               f"it to safetensors" if pickled else "no weights"
        raise ModelLoadError(f"adapter folder {adapter} has no adapter_model.safetensors ({what})")
    check_safetensors_file(folder / ADAPTER_WEIGHTS, "adapter weights", "write the adapter again (`hneurons edit`)")
    return folder


@contextlib.contextmanager
def peft_applied(model: torch.nn.Module, adapter: Path) -> Iterator[torch.nn.Module]:
    """Wrap ``model`` with the adapter in place; on exit remove the adapter layers again (no merge)."""
    from peft import PeftModel

    folder = check_adapter(adapter)
    wrapped = PeftModel.from_pretrained(model, str(folder))
    wrapped.eval()
    try:
        yield wrapped
    finally:
        wrapped.unload()  # puts the original modules back into ``model``


def edit_folder_mode(folder: str | Path | None) -> str | None:
    """The ``mode`` an ``hneurons edit`` folder records (weights, ia3, lora, abstain), None without a manifest."""
    manifest = Path(folder) / EDIT_MANIFEST if folder else None
    if manifest is None or not manifest.is_file():
        return None
    return read_json(manifest, "edit manifest").get("mode")


ABSTAIN_CONTROLS_NOTE = ("a trained abstention edit (`hneurons edit --mode abstain`): no random-neuron hook controls "
                         "(scaling random neurons is not a control for a trained edit); train a matched random neuron "
                         "set the same way and compare both evals with `hneurons abstain-report`")


def edit_folder_neurons(folder: str | Path) -> tuple[NeuronSet, dict[Pair, float]] | None:
    """The neuron set and alphas an ``hneurons edit`` folder records (for the random controls), if any. A trained
    abstention edit (mode ``abstain``) records no alpha and has no hook controls: None."""
    folder = Path(folder)
    manifest, neurons = folder / EDIT_MANIFEST, folder / NEURONS
    if not (manifest.is_file() and neurons.is_file()):
        return None
    doc = read_json(manifest, "edit manifest")
    if doc.get("mode") == "abstain":
        return None
    alpha = doc.get("alpha") or {}
    nset = NeuronSet.load(neurons)
    layer_alpha = {int(k): v for k, v in (alpha.get("per_layer") or {}).items()}
    return nset, nset.alphas(alpha.get("default", 0.0), layer_alpha)


def random_control(nset: NeuronSet, num_layers: int, d_ff: int, seed: int, match_layers: bool = True) -> NeuronSet:
    """As many random FFN neurons as ``nset``, none of them in ``nset``.

    By default (``match_layers``) exactly the same count in each layer as ``nset``
    (:func:`editor.model.neuron_set.matched_random_pairs`); ``match_layers=False`` draws uniformly over all
    layers x d_ff neurons (hneurons 0.1's control). The draw is a function of the seed alone (numpy PCG64), so
    a control can be re-created exactly.
    """
    if match_layers:
        return NeuronSet.from_pairs(matched_random_pairs(nset.neurons, d_ff, seed))
    rng = np.random.default_rng(seed)
    taken = {layer * d_ff + index for layer, index in nset.neurons}
    free = np.setdiff1d(np.arange(num_layers * d_ff), sorted(taken))
    if len(free) < len(nset):
        raise InputError(f"the model has only {len(free)} FFN neurons outside the set; cannot draw {len(nset)}")
    pairs = [(int(f) // d_ff, int(f) % d_ff) for f in rng.choice(free, size=len(nset), replace=False)]
    return NeuronSet.from_pairs(pairs)


def control_alphas(nset: NeuronSet, alphas: Mapping[Pair, float], control: NeuronSet,
                   match_layers: bool) -> dict[Pair, float]:
    """Control neuron i takes H-Neuron i's alpha (within each layer when matched), so alpha mixes are kept."""
    if not match_layers:
        return {c: alphas[h] for c, h in zip(control.neurons, nset.neurons)}
    out: dict[Pair, float] = {}
    for layer in nset.per_layer():
        own = [p for p in nset.neurons if p[0] == layer]
        drawn = [p for p in control.neurons if p[0] == layer]
        out.update({c: alphas[h] for c, h in zip(drawn, own)})
    return out


def control_variants(base: LoadedModel, nset: NeuronSet, alphas: Mapping[Pair, float], seeds: Iterable[int],
                     match_layers: bool = True, prefix: str = "control") -> list[Variant]:
    variants = []
    for seed in seeds:
        control = random_control(nset, base.num_layers, base.d_ff, seed, match_layers)
        variants.append(Variant(f"{prefix}-seed{seed}", base, neurons=control,
                                alphas=control_alphas(nset, alphas, control, match_layers), seed=seed,
                                match_layers=match_layers))
    return variants
