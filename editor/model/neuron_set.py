"""Neuron sets: read, validate and hash the H-Neuron list that the edit stage applies.

The file format is documented in docs/ARTIFACTS.md. The minimal form anyone can write by hand is

    {"neurons": [{"layer": 12, "index": 873}, {"layer": 20, "index": 5}]}

``locate`` writes the extended form (``format``, ``model`` identity, probe weights, counts); every extra
key is allowed and kept. A neuron may carry its own ``"alpha"``, which overrides any alpha given to the
edit.

``locate`` also writes ``neurons_path.json``: named neuron sets along its regularisation path (``x2``, ``x5``,
``x10``: about that multiple of the chosen count), each in the neurons.json schema. Wherever a neuron file is
accepted, ``<locate_dir>/neurons_path.json#x5`` (or ``<locate_dir>#x5``, or :meth:`NeuronSet.load` with
``name="x5"``) names one of them; such a set has no ``path`` of its own (it is no neuron file: an edit ships its
document as neurons.json) and ``source`` says where it came from.

Alpha precedence (most specific wins): per-neuron ``alpha`` in the file > per-layer alpha
(``layer_alpha`` / ``--layer-alpha L=A``) > the edit's global alpha (default 0.0 = full suppression).
Every alpha must be a finite number >= 0 (the paper's range is [0, 3]; alpha < 1 suppresses).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import read_json, sha256_json
from ..errors import InputError, ModelMismatchError
from ..formats import (
    NEURONS_FORMAT,
    NEURONS_PATH,
    NEURONS_PATH_FORMAT,
    NEURONS_PATH_SEPARATOR,
)
from .hooks import LayerScale, group_by_layer
from .registry import architecture_hash, get_arch

Pair = tuple[int, int]


def check_alpha(value: Any, what: str) -> float:
    """A valid activation scale: a finite real number >= 0 (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{what} must be a number >= 0, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number >= 0, got {value!r}")
    if number < 0:
        raise InputError(f"{what} must be >= 0 (0 = full suppression, 1 = unchanged), got {value!r}")
    return number


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class NeuronSet:
    """A validated-shape list of (layer, index) neurons with optional per-neuron alphas.

    Construct with :meth:`load` (a file), :meth:`from_dict` (a parsed document) or :meth:`from_pairs`.
    Shape problems (missing keys, non-integers, duplicates, empty set, bad alphas) are caught on
    construction; ranges and model identity need the model and are checked by :meth:`validate`.
    """

    neurons: tuple[Pair, ...]  # in file order
    neuron_alpha: Mapping[Pair, float] = field(default_factory=dict)  # per-neuron overrides from the file
    model: Mapping[str, Any] | None = None  # identity of the model the set was located in, if recorded
    path: Path | None = None  # the file it was read from (None for a named set of neurons_path.json)
    document: Mapping[str, Any] = field(default_factory=dict)  # the parsed file, all keys kept
    reference: str | None = None  # "<file>#<name>" for a named set of neurons_path.json

    # ---------------------------------------------------------------------------------------- reading
    @classmethod
    def load(cls, path: str | Path, name: str | None = None) -> NeuronSet:
        """A neuron file, or the set ``name`` of a ``neurons_path.json`` (also written ``FILE#NAME`` or
        ``LOCATE_DIR#NAME``)."""
        p = Path(path)
        text = str(path)
        if name is None and NEURONS_PATH_SEPARATOR in text and not p.exists():
            text, _, name = text.rpartition(NEURONS_PATH_SEPARATOR)
            p = Path(text)
        if name is not None and p.is_dir():
            p = p / NEURONS_PATH
        doc = read_json(p, "neuron file")
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if name is not None or (isinstance(fmt, str) and fmt.startswith("hneurons.neurons_path/")):
            return cls.from_path_document(doc, name, p)
        return cls.from_dict(doc, where=str(p), path=p)

    @classmethod
    def from_path_document(cls, doc: Any, name: str | None, path: Path) -> NeuronSet:
        """The set ``name`` of a parsed ``neurons_path.json`` read from ``path``."""
        fmt = doc.get("format") if isinstance(doc, dict) else None
        if not (isinstance(fmt, str) and fmt.startswith("hneurons.neurons_path/")) or not isinstance(
                doc.get("sets"), dict):
            raise InputError(f"{path} is not a neurons_path file (format {fmt!r}, expected {NEURONS_PATH_FORMAT!r}), "
                             f"so it holds no set named {name!r}; name sets as <locate_dir>/{NEURONS_PATH}"
                             f"{NEURONS_PATH_SEPARATOR}x5")
        names = sorted(doc["sets"], key=lambda n: (len(n), n))
        missing = doc.get("missing") or {}
        if name is None or name not in doc["sets"]:
            example = f"{path}{NEURONS_PATH_SEPARATOR}{names[0] if names else 'x5'}"
            if name is None:
                what = f"{path} holds named neuron sets along locate's regularisation path: name one (e.g. {example})"
            else:
                what = f"{path} has no neuron set named {name!r}" + (
                    f" (locate: {missing[name]})" if name in missing else "")
            raise InputError(f"{what}; available sets: {', '.join(names) or 'none'}")
        reference = f"{path}{NEURONS_PATH_SEPARATOR}{name}"
        found = cls.from_dict(doc["sets"][name], where=reference)
        return cls(found.neurons, found.neuron_alpha, found.model, None, found.document, reference)

    @property
    def source(self) -> str | None:
        """Where the set came from: its file, ``FILE#NAME`` for a named path set, or None (built in Python)."""
        return str(self.path) if self.path is not None else self.reference

    @classmethod
    def from_dict(cls, doc: Any, where: str = "neuron set", path: Path | None = None) -> NeuronSet:
        if not isinstance(doc, dict) or "neurons" not in doc:
            raise InputError(f'{where}: expected a JSON object with a "neurons" list, e.g. '
                             f'{{"neurons": [{{"layer": 12, "index": 873}}]}}')
        fmt = doc.get("format")
        if fmt is not None and not (isinstance(fmt, str) and fmt.startswith("hneurons.neurons/")):
            raise InputError(f"{where}: format {fmt!r} is not a neuron file (expected {NEURONS_FORMAT!r})")
        items = doc["neurons"]
        if not isinstance(items, list):
            raise InputError(f'{where}: "neurons" must be a list of {{"layer", "index"}} objects')
        pairs: list[Pair] = []
        alphas: dict[Pair, float] = {}
        for i, item in enumerate(items):
            at = f"{where}: neurons[{i}]"
            if not isinstance(item, dict) or "layer" not in item or "index" not in item:
                raise InputError(f'{at} must be an object with integer "layer" and "index", got {item!r}')
            pair = (_check_int(item["layer"], f"{at}.layer"), _check_int(item["index"], f"{at}.index"))
            pairs.append(pair)
            if item.get("alpha") is not None:
                alphas[pair] = check_alpha(item["alpha"], f"{at}.alpha")
        model = doc.get("model")
        if model is not None and not isinstance(model, dict):
            raise InputError(f'{where}: "model" must be the identity object written by locate, got {model!r}')
        return cls._checked(tuple(pairs), alphas, model, path, doc, where)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[int, int]], model: Mapping[str, Any] | None = None) -> NeuronSet:
        checked = tuple((_check_int(layer, "layer"), _check_int(j, "index")) for layer, j in pairs)
        return cls._checked(checked, {}, model, None, {}, "neuron set")

    @classmethod
    def _checked(cls, pairs, alphas, model, path, doc, where) -> NeuronSet:
        if not pairs:
            raise InputError(f"{where}: the neuron set is empty; there is nothing to edit")
        negative = [p for p in pairs if p[0] < 0 or p[1] < 0]
        if negative:
            raise InputError(f"{where}: negative layer or index {negative[0]} (layers and indices count from 0)")
        dupes = [p for p, n in Counter(pairs).items() if n > 1]
        if dupes:
            raise InputError(f"{where}: neuron (layer {dupes[0][0]}, index {dupes[0][1]}) is listed more than once"
                             f" ({len(dupes)} duplicate(s) in all)")
        return cls(pairs, alphas, model, path, doc)

    # ---------------------------------------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.neurons)

    @property
    def sha256(self) -> str:
        """Hash of the set itself (sorted (layer, index) pairs), independent of file layout and alphas."""
        return sha256_json(sorted([list(p) for p in self.neurons]))

    def per_layer(self) -> dict[int, int]:
        return dict(sorted(Counter(layer for layer, _ in self.neurons).items()))

    def alphas(self, alpha: float = 0.0, layer_alpha: Mapping[int, float] | None = None) -> dict[Pair, float]:
        """The scale of every neuron: per-neuron file alpha > ``layer_alpha[layer]`` > ``alpha``."""
        default = check_alpha(alpha, "alpha")
        per_layer = {int(k): check_alpha(a, f"alpha of layer {k}") for k, a in (layer_alpha or {}).items()}
        present = {layer for layer, _ in self.neurons}
        unused = sorted(set(per_layer) - present)
        if unused:
            raise InputError(f"a per-layer alpha names layer {unused[0]}, which has no neuron in the set "
                             f"(layers with neurons: {sorted(present)})")
        return {p: self.neuron_alpha.get(p, per_layer.get(p[0], default)) for p in self.neurons}

    def scales(self, alpha: float = 0.0, layer_alpha: Mapping[int, float] | None = None) -> dict[int, LayerScale]:
        """Per-layer index/alpha tensors for :func:`editor.model.hooks.scaled_neurons` and the writers."""
        return group_by_layer(self.neurons, self.alphas(alpha, layer_alpha))

    def to_document(self) -> dict[str, Any]:
        """The file to ship with an edit: the original document if there is one, else the minimal form."""
        if self.document:
            return dict(self.document)
        doc: dict[str, Any] = {"format": NEURONS_FORMAT}
        if self.model:
            doc["model"] = dict(self.model)
        doc["neurons"] = [{"layer": layer, "index": j} for layer, j in self.neurons]
        doc["count"] = len(self.neurons)
        return doc

    # ------------------------------------------------------------------------------------- validation
    def validate(self, target: Any, *, fingerprint: str | None = None, force: bool = False) -> dict[str, Any] | None:
        """Check the set against a model: ranges, architecture hash, weights fingerprint.

        ``target`` is a :class:`editor.model.loading.LoadedModel` or a transformers config. The fingerprint is
        taken from a LoadedModel, or passed in (``fingerprint=``) by callers that hash the checkpoint
        themselves; with neither, it is not checked. A different architecture hash is always an error (the
        indices mean other neurons); a different fingerprint (same layout, other weights, e.g. the base model
        of the instruct model the set was located in) is an error unless ``force``; returns what ``force``
        accepted then (the two identities, for the manifest), else None.
        """
        config = getattr(target, "config", target)
        arch = get_arch(config)
        layers, d_ff = arch.num_layers(config), arch.d_ff(config)
        where = self.source or "neuron set"
        for layer, index in self.neurons:
            if layer >= layers:
                raise InputError(f"{where}: neuron (layer {layer}, index {index}): layer out of range; the model "
                                 f"has {layers} layers (0..{layers - 1})")
            if index >= d_ff:
                raise InputError(f"{where}: neuron (layer {layer}, index {index}): index out of range; the model's "
                                 f"FFN width d_ff is {d_ff} (0..{d_ff - 1})")
        self._check_flat_indices(d_ff, where)
        if not self.model:
            return None
        recorded = self.model.get("architecture_hash")
        actual = architecture_hash(config)
        if recorded is not None and recorded != actual:
            raise ModelMismatchError(
                f"{where} was located in a {self.model.get('model_type', '?')} model with "
                f"{self.model.get('num_layers', '?')} layers x d_ff {self.model.get('d_ff', '?')} (architecture hash "
                f"{recorded}), but the model given is {arch.model_type} with {layers} layers x d_ff {d_ff} "
                f"(architecture hash {actual}): its neuron indices mean other neurons here"
            )
        recorded_fp = self.model.get("weights_fingerprint")
        if fingerprint is None and hasattr(target, "fingerprint"):
            fingerprint = target.fingerprint
        if not (recorded_fp and fingerprint and recorded_fp != fingerprint):
            return None
        source = self.model.get("source") or {}
        given = getattr(getattr(target, "source", None), "spec", None)
        if not force:
            raise ModelMismatchError(
                f"{where} was located in other weights ({source.get('spec', '?')}, fingerprint {recorded_fp}) than "
                f"the model given ({given or 'its config'}, fingerprint {fingerprint}). The layout matches, so the "
                f"indices are meaningful (e.g. base vs instruct model); pass --force (force=True) to apply the set "
                f"anyway"
            )
        return {"artifact": where, "recorded": {"spec": source.get("spec"), "weights_fingerprint": recorded_fp},
                "model": {"spec": given, "weights_fingerprint": fingerprint}}

    def _check_flat_indices(self, d_ff: int, where: str) -> None:
        """The extended format repeats each neuron as flat_index = layer * d_ff + index: they must agree."""
        for i, item in enumerate(self.document.get("neurons", []) if self.document else []):
            flat = item.get("flat_index")
            if flat is not None and flat != item["layer"] * d_ff + item["index"]:
                raise InputError(f"{where}: neurons[{i}].flat_index is {flat}, but layer {item['layer']} x d_ff "
                                 f"{d_ff} + index {item['index']} = {item['layer'] * d_ff + item['index']}")


def as_neuron_set(neurons: Any) -> NeuronSet:
    """Accept a NeuronSet, a path to a neuron file (or ``<locate_dir>/neurons_path.json#x5``: a named set along
    locate's regularisation path), a parsed document, or (layer, index) pairs."""
    if isinstance(neurons, NeuronSet):
        return neurons
    if isinstance(neurons, (str, Path)):
        return NeuronSet.load(neurons)
    if isinstance(neurons, dict):
        return NeuronSet.from_dict(neurons)
    return NeuronSet.from_pairs(neurons)


def matched_random_pairs(taken: Iterable[tuple[int, int]], d_ff: int, seed: int) -> list[tuple[int, int]]:
    """A random neuron set matched to ``taken`` per layer: exactly as many neurons in each layer as ``taken``
    has there, none of them in ``taken`` (the random-neuron control of every comparison: eval, sweep,
    dose-response, locate's and origin's baselines).

    Layers are drawn in increasing order with one numpy PCG64 generator seeded with ``seed``, so a control is a
    function of the set and the seed alone and can be re-created exactly; different seeds give different sets.
    """
    pairs = sorted({(int(layer), int(index)) for layer, index in taken})
    by_layer: dict[int, list[int]] = {}
    for layer, index in pairs:
        by_layer.setdefault(layer, []).append(index)
    import numpy as np

    rng = np.random.default_rng(seed)
    drawn: list[tuple[int, int]] = []
    for layer in sorted(by_layer):
        own = by_layer[layer]
        free = np.setdiff1d(np.arange(d_ff), own)
        if len(free) < len(own):
            raise InputError(f"layer {layer} has only {len(free)} neurons outside the set; cannot draw {len(own)} "
                             f"matched random neurons there")
        drawn += [(layer, int(j)) for j in rng.choice(free, size=len(own), replace=False)]
    return drawn
