"""Origin: were the H-Neurons there before instruction tuning? (docs/METHOD.md section 7)

Two analyses of an instruct model's H-Neurons against its base (pre-instruction-tuning) model of the
same architecture. Either can run alone; both write into one ``origin.json``.

Backward transfer
-----------------
The instruct model's probe (``probe.safetensors`` from locate), **unchanged**, scores the base model's
own answers: CETT features of the base model's selected responses (collected with base-model prompting,
``hneurons collect --prompt-style base``), computed exactly as locate computes them (same span,
aggregation and fp16 storage), then the probe's logits. Reported as AUROC with a stratified bootstrap
95% CI, never accuracy: the decision threshold was tuned on the instruct model's scores and does not
transfer. The probe never saw a base-model response, so every selected (non-fabricated) base response
is held out for it: hneurons scores all of them (all splits; more items, a tighter CI) and also reports
the base test split alone.

Controls, fit exactly as locate fits its random baseline: classifiers on the same number of randomly
chosen neurons (locate's draws: same count, same seeds, so the same neuron sets), refit with the probe's
C on the **instruct** model's training features (``features/`` of the locate folder), then applied
unchanged to the base features; and the classifier refit on the H-Neurons alone, transferred the same
way. The instruct model's own test AUROCs from ``locate.json`` are copied next to them for comparison.

Parameter drift
---------------
Per FFN neuron j of every layer, between the base and the instruct checkpoint:

* ``up``: 1 - cos(W_up row j): the up-projection's row feeding neuron j (gated MLPs: ``up_proj``, not
  the gate; phi3's fused ``gate_up_proj``: its rows [d_ff, 2 d_ff); non-gated MLPs: ``fc1``/``c_fc``;
  GPT-2 Conv1D ``c_fc`` is stored [in, out], so neuron j is its column j);
* ``down``: 1 - cos(W_down column j) (Conv1D ``c_proj``: row j).

Each measure is z-scored across **all** neurons of all layers, and the drift score is their average.
All neurons are ranked by score. **Rank convention (the paper's):** normalised rank = the fraction of
the other neurons whose score is higher (ties count one half), i.e. the position in *descending* order
of drift divided by N - 1: 0 = the most changed neuron, 1 = the least changed, 0.5 = a typical neuron.
The paper finds that H-Neurons change *less* than average (mean normalised ranks 0.58-0.97), so the
one-sided test (:func:`editor.stats.one_sided_rank_test`) has the alternative "greater" (the H-Neurons
changed less than random neurons); the opposite tail is reported as well.

1 - cos is computed as ||a/|a| - b/|b| ||^2 / 2, which is exact where the two vectors are nearly
parallel (the usual case between a base and its instruct model), unlike 1 - a.b/(|a||b|) in float32.

Out of core: the checkpoints are never loaded as models. Tensors are read from the safetensors files
with ``safe_open(...).get_slice``, one block of neurons of one tensor of each checkpoint at a time
(``chunk_elements`` values), so peak memory is a few such blocks whatever the model size. Tensor names
come from the registry (``layers`` + ``down_proj`` / ``up_proj`` + ``.weight``) with the prefix found
in the files (:func:`editor.edit.stage.down_proj_tensor_names`; the up-projection sits under the same layer
prefix). Checkpoints may be local folders, ``.gguf`` files and embedded aliases (their cached converted
folders) or Hub ids (downloaded, or read from the cache when offline).

Outputs in the output folder (docs/ARTIFACTS.md):

* ``origin.json``: ``format`` ``hneurons.origin/1``, ``model`` (the probe's model = the instruct model),
  ``base_model``, ``instruct_model`` (identities), ``probe``, ``backward_transfer``, ``drift``,
  ``plots``, ``settings``, ``wall_time_s``, ``provenance``;
* ``features/``: the base model's CETT features (resumable, as in locate);
* ``drift.safetensors``: per-neuron ``up``, ``down``, ``score`` and ``normalised_rank`` ([layers * d_ff],
  float32, flat index = layer * d_ff + j); reused by a re-run with the same two checkpoints;
* ``origin_drift_hist.png`` (drift scores of all neurons, H-Neurons marked) and
  ``origin_drift_per_layer.png``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import stats
from ..artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    check_no_outside_links,
    provenance,
    read_json,
    safetensors_bytes,
    sha256_file,
    sha256_json,
)
from ..errors import InputError, ModelLoadError, ModelMismatchError
from ..formats import (
    DRIFT,
    DRIFT_FORMAT,
    FEATURES_MANIFEST,
    LOCATE_REPORT,
    ORIGIN_FORMAT,
    ORIGIN_REPORT,
)
from ..locking import locked
from ..model.checkpoint import (
    Checkpoint,
    checkpoint_fingerprint,
    checkpoint_identity,
    down_proj_tensor_names,
    local_checkpoint,
    tensor_locations,
)
from ..model.loading import LoadedModel, LoadOptions
from ..model.registry import ArchSpec, architecture_hash
from .features import FeatureSettings, FeatureStore, extract_features
from .settings import OriginSettings
from .stage import (
    FittedProbe,
    load_probe,
    random_columns,
    refit_on,
    splits_of,
    training_rows,
)

HIST_PLOT = "origin_drift_hist.png"
LAYER_PLOT = "origin_drift_per_layer.png"

RANK_CONVENTION = (
    "normalised rank = (position in descending order of drift score) / (N - 1), ties averaged = the fraction "
    "of the other neurons that changed more: 0 = the most changed neuron, 1 = the least changed, 0.5 = a "
    "typical neuron (the paper's convention; it reports 0.58-0.97 for H-Neurons, i.e. they change less)"
)
ALTERNATIVE = "greater: the H-Neurons changed less than random neurons (mean normalised rank > 0.5)"


# ============================================================================================ drift
@dataclass
class Drift:
    """Per-neuron cosine distances between two checkpoints (flat index = layer * d_ff + j)."""

    up: np.ndarray  # 1 - cos of W_up row j, float64 [layers * d_ff]
    down: np.ndarray  # 1 - cos of W_down column j
    num_layers: int
    d_ff: int

    @property
    def score(self) -> np.ndarray:
        """The drift score: mean of the two distances, each z-scored across all neurons."""
        return (_zscore(self.up) + _zscore(self.down)) / 2

    @property
    def normalised_rank(self) -> np.ndarray:
        """0 = the most changed neuron, 1 = the least changed (see :data:`RANK_CONVENTION`)."""
        n = self.up.size
        if n < 2:
            return np.full(n, 0.5)
        return 1.0 - _average_ranks(self.score) / (n - 1)


def _zscore(values: np.ndarray) -> np.ndarray:
    std = values.std()
    # identical checkpoints (or a measure that moved every neuron alike): no neuron stands out
    return np.zeros_like(values) if std == 0 else (values - values.mean()) / std


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ascending ranks, tied values sharing the average of their positions."""
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(first + (counts - 1) / 2, counts)
    return ranks


@dataclass(frozen=True)
class _NeuronTensor:
    """One neuron-indexed weight tensor: its name, the axis that indexes neurons, the first neuron's offset."""

    name: str
    axis: int
    offset: int = 0


def ffn_neuron_tensors(ckpt: Checkpoint) -> tuple[dict[str, str], dict[int, tuple[_NeuronTensor, _NeuronTensor]]]:
    """(tensor -> shard file, layer -> (W_up tensor, W_down tensor)) of a checkpoint, from the registry.

    Gated MLPs: the up-projection (not the gate); fused gate_up: its second half; Conv1D: [in, out] layout,
    so the up weight indexes neurons by column and the down weight by row.
    """
    arch: ArchSpec = ckpt.arch
    num_layers, d_ff = arch.num_layers(ckpt.config), arch.d_ff(ckpt.config)
    where = tensor_locations(ckpt.folder)
    downs = down_proj_tensor_names(where, arch, num_layers, str(ckpt.folder))
    down_suffix = f"{arch.down_proj}.weight"
    up_axis, down_axis = (1, 0) if arch.conv1d else (0, 1)
    out = {}
    for layer, down in downs.items():
        up = down[: -len(down_suffix)] + f"{arch.up_proj}.weight"  # same layer prefix as the down-projection
        if up not in where:
            raise ModelLoadError(f"checkpoint {ckpt.folder}: layer {layer} has {down} but no up-projection {up}")
        out[layer] = (_NeuronTensor(up, up_axis, d_ff if arch.fused_gate_up else 0), _NeuronTensor(down, down_axis))
    return where, out


class _SliceReader:
    """Blocks of neuron vectors from a checkpoint's safetensors files (one safe_open handle per shard)."""

    def __init__(self, ckpt: Checkpoint, where: dict[str, str], stack: contextlib.ExitStack):
        from safetensors import safe_open

        self.folder, self.where, self.stack, self._open = ckpt.folder, where, stack, safe_open
        self.handles: dict[str, Any] = {}

    def _slice(self, name: str):
        shard = self.where[name]
        if shard not in self.handles:
            self.handles[shard] = self.stack.enter_context(self._open(str(self.folder / shard), framework="pt"))
        return self.handles[shard].get_slice(name)

    def shape(self, name: str) -> list[int]:
        return list(self._slice(name).get_shape())

    def vectors(self, tensor: _NeuronTensor, start: int, stop: int) -> torch.Tensor:
        """Neurons [start, stop) of ``tensor`` as rows of a float32 [k, dim] matrix."""
        sl = self._slice(tensor.name)
        a, b = tensor.offset + start, tensor.offset + stop
        block = sl[a:b] if tensor.axis == 0 else sl[:, a:b].T
        return block.float()


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise 1 - cos(a_i, b_i) = ||a_i/|a_i| - b_i/|b_i| ||^2 / 2 (stable for nearly parallel rows).

    A zero row against a zero row is distance 0; a zero row against a non-zero row is distance 1."""
    na = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=1, keepdim=True)
    ua = a / na.clamp_min(torch.finfo(a.dtype).tiny)
    ub = b / nb.clamp_min(torch.finfo(b.dtype).tiny)
    dist = 0.5 * torch.linalg.vector_norm(ua - ub, dim=1) ** 2
    zero_a, zero_b = na.squeeze(1) == 0, nb.squeeze(1) == 0
    dist = torch.where(zero_a & zero_b, torch.zeros_like(dist), dist)
    return torch.where(zero_a ^ zero_b, torch.ones_like(dist), dist)


def check_same_architecture(base: Checkpoint, instruct: Checkpoint) -> None:
    ha, hb = architecture_hash(base.config), architecture_hash(instruct.config)
    if ha != hb:
        aa, ab = base.arch, instruct.arch
        raise ModelMismatchError(
            f"base {base.source.spec!r} ({aa.model_type}, {aa.num_layers(base.config)} layers x "
            f"{aa.d_ff(base.config)}) and instruct {instruct.source.spec!r} ({ab.model_type}, "
            f"{ab.num_layers(instruct.config)} x {ab.d_ff(instruct.config)}) are not the same architecture "
            f"(architecture hashes {ha} and {hb}): their neurons do not correspond")


def parameter_drift(base: Checkpoint, instruct: Checkpoint, *, chunk_elements: int = 1 << 22,
                    progress: bool = False) -> Drift:
    """Per-neuron 1 - cos of W_up rows and W_down columns between two checkpoints, read block by block."""
    check_same_architecture(base, instruct)
    arch = base.arch
    num_layers, d_ff = arch.num_layers(base.config), arch.d_ff(base.config)
    where_b, tensors_b = ffn_neuron_tensors(base)
    where_i, tensors_i = ffn_neuron_tensors(instruct)
    up = np.zeros(num_layers * d_ff)
    down = np.zeros(num_layers * d_ff)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_layers, desc="parameter drift", unit="layer", dynamic_ncols=True)
    with contextlib.ExitStack() as stack:
        read_b, read_i = _SliceReader(base, where_b, stack), _SliceReader(instruct, where_i, stack)
        for layer in range(num_layers):
            for which, out in ((0, up), (1, down)):
                tb, ti = tensors_b[layer][which], tensors_i[layer][which]
                _check_shapes(read_b, read_i, tb, ti, d_ff)
                dim = read_b.shape(tb.name)[1 - tb.axis]
                step = max(1, chunk_elements // dim)
                for start in range(0, d_ff, step):
                    stop = min(d_ff, start + step)
                    dist = cosine_distance(read_b.vectors(tb, start, stop), read_i.vectors(ti, start, stop))
                    out[layer * d_ff + start: layer * d_ff + stop] = dist.double().numpy()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Drift(up, down, num_layers, d_ff)


def _check_shapes(read_b: _SliceReader, read_i: _SliceReader, tb: _NeuronTensor, ti: _NeuronTensor, d_ff: int) -> None:
    sb, si = read_b.shape(tb.name), read_i.shape(ti.name)
    if len(sb) != 2 or sb != si:
        raise ModelMismatchError(f"tensor {tb.name} has shape {sb} in the base checkpoint and {ti.name} has {si} "
                                 f"in the instruct checkpoint; expected the same 2-D shape")
    if sb[tb.axis] < tb.offset + d_ff:
        raise ModelLoadError(f"tensor {tb.name} has {sb[tb.axis]} entries along its neuron axis; expected "
                             f"{tb.offset + d_ff} (d_ff = {d_ff})")


def drift_report(drift: Drift, h_flat: torch.Tensor | np.ndarray, *, top: int = 20) -> dict:
    """The ``drift`` block of origin.json for the H-Neurons ``h_flat`` (flat indices)."""
    h = np.asarray(h_flat, dtype=np.int64)
    score, rank = drift.score, drift.normalised_rank
    d_ff, layers = drift.d_ff, drift.num_layers
    per_layer = score.reshape(layers, d_ff).mean(axis=1)
    report: dict[str, Any] = {
        "convention": RANK_CONVENTION,
        "score": "mean of z(1 - cos W_up row j) and z(1 - cos W_down column j), z-scored across all neurons",
        "n_neurons": int(h.size), "n_total": int(score.size),
        "mean_normalised_rank": None, "median_normalised_rank": None, "p_value": None,
        "alternative": ALTERNATIVE, "p_value_changed_more": None,
        "mean_cosine_distance": {"up": float(drift.up.mean()), "down": float(drift.down.mean())},
        "per_layer_mean": {str(layer): float(v) for layer, v in enumerate(per_layer)},
        "per_layer_mean_cosine_distance": {
            str(layer): {"up": float(u), "down": float(d)} for layer, (u, d) in
            enumerate(zip(drift.up.reshape(layers, d_ff).mean(1), drift.down.reshape(layers, d_ff).mean(1)))},
    }
    if h.size:
        hr = rank[h]
        report.update(
            mean_normalised_rank=float(hr.mean()), median_normalised_rank=float(np.median(hr)),
            p_value=stats.one_sided_rank_test(hr, alternative="greater"),
            p_value_changed_more=stats.one_sided_rank_test(hr, alternative="less"),
            h_neurons_mean_cosine_distance={"up": float(drift.up[h].mean()), "down": float(drift.down[h].mean())},
            h_neurons=[_neuron_entry(f, drift, score, rank) for f in h[np.argsort(rank[h], kind="stable")].tolist()],
        )
    else:
        report["note"] = "no H-Neurons (the probe has no positive weight): nothing to test"
    h_set = set(h.tolist())
    most = np.argsort(-score, kind="stable")[:top]
    report["top_changed"] = [dict(_neuron_entry(int(f), drift, score, rank), h_neuron=int(f) in h_set)
                             for f in most.tolist()]
    return report


def _neuron_entry(flat: int, drift: Drift, score: np.ndarray, rank: np.ndarray) -> dict:
    return {"layer": flat // drift.d_ff, "index": flat % drift.d_ff, "flat_index": flat,
            "score": float(score[flat]), "up": float(drift.up[flat]), "down": float(drift.down[flat]),
            "normalised_rank": float(rank[flat])}


def _drift_key(base: Checkpoint, base_id: dict, instruct: Checkpoint, instruct_id: dict) -> str:
    """What a stored drift must have been computed from: both identities and their files (name, size, mtime)."""
    def files(ckpt: Checkpoint) -> list:
        return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(ckpt.folder.glob("*.safetensors"))]

    return sha256_json({"base": [base_id, files(base)], "instruct": [instruct_id, files(instruct)],
                        "format": DRIFT_FORMAT})


def cached_drift(path: Path, key: str) -> Drift | None:
    """The drift stored by an earlier run for the same two checkpoints, else None."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("key") != key:
            return None
        up, down = handle.get_tensor("up").double().numpy(), handle.get_tensor("down").double().numpy()
    return Drift(up, down, int(meta["num_layers"]), int(meta["d_ff"]))


def write_drift(path: Path, drift: Drift, key: str) -> None:
    tensors = {"up": drift.up, "down": drift.down, "score": drift.score, "normalised_rank": drift.normalised_rank}
    atomic_write_bytes(path, safetensors_bytes(
        {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()},
        metadata={"format": DRIFT_FORMAT, "key": key, "num_layers": str(drift.num_layers),
                  "d_ff": str(drift.d_ff), "convention": RANK_CONVENTION}))


# ================================================================================ backward transfer
@dataclass
class _InstructTraining:
    """What locate trained on: the instruct model's training rows, labels, C and baseline settings."""

    x: torch.Tensor
    y: torch.Tensor
    labels: str
    random_draws: int
    seed: int
    report: dict


def instruct_training(locate_dir: Path, probe_meta: dict, instruct_responses: str | Path | None) -> _InstructTraining:
    from ..collect.stage import load_responses

    if not (locate_dir / "features" / FEATURES_MANIFEST).is_file():
        raise InputError(f"{locate_dir} holds no locate features (features/features.json): give the probe's locate "
                         f"folder (--locate); the controls are refit on the instruct model's training features")
    report = read_json(locate_dir / LOCATE_REPORT, "locate report")
    store = FeatureStore.open(locate_dir / "features")
    recorded = store.meta.get("settings", {}).get("model", {})
    if recorded.get("weights_fingerprint") != probe_meta["model"].get("weights_fingerprint"):
        raise ModelMismatchError(f"the features in {locate_dir / 'features'} were made with another model "
                                 f"(fingerprint {recorded.get('weights_fingerprint')}) than the probe's "
                                 f"({probe_meta['model'].get('weights_fingerprint')}); give the probe's own locate folder")
    folder = instruct_responses or (report.get("responses") or {}).get("folder")
    if not folder:
        raise InputError(f"{locate_dir / LOCATE_REPORT} names no collect folder; give the instruct model's collect folder")
    records, _ = load_responses(folder)
    selected = [r for r in records if r["selected"]]
    if sha256_json([[r["id"], r["representative"]] for r in selected]) != store.meta["settings"].get("records_sha256"):
        raise InputError(f"collect folder {folder} does not hold the responses whose features are in "
                         f"{locate_dir / 'features'}; give the instruct model's collect folder that locate read")
    settings = report.get("settings", {})
    labels = probe_meta.get("labels", settings.get("labels", "3v1"))
    x, y = training_rows(store, splits_of(records, False)["train"], labels)
    return _InstructTraining(x, y, labels, int(settings.get("random_draws", 10)), int(settings.get("seed", 0)), report)


def _base_rows(records: list[dict], source: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids, labels and test-split mask of the base model's selected factual responses."""
    rows = [r for r in records if r["selected"] and not r["fabricated"] and r.get("hallucinated") is not None]
    y = np.array([int(r["hallucinated"]) for r in rows], dtype=int)
    if len(rows) == 0 or y.min() == y.max():
        raise InputError(f"{source}: the base model's selected factual responses are {int((y == 0).sum())} faithful and "
                         f"{int(y.sum())} hallucinated; AUROC needs both. Collect more questions with the base model")
    return [str(r["id"]) for r in rows], y, np.array([r.get("split") == "test" for r in rows])


def _auroc_with_ci(scores: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[float, list[float]]:
    ci = stats.bootstrap_ci(stats.auroc, scores, y, n_boot=n_boot, seed=seed, stratify=y)
    return stats.auroc(scores, y), [ci[0], ci[1]]


def backward_transfer(base: LoadedModel, base_responses: str | Path, probe_path: str | Path, out_dir: str | Path, *,
                      locate_dir: str | Path | None = None, instruct_responses: str | Path | None = None,
                      settings: OriginSettings | None = None, force: bool = False,
                      progress: bool = True) -> dict:
    """The ``backward_transfer`` block of origin.json (see the module docstring)."""
    from ..collect.stage import load_responses
    from .stage import check_same_model

    settings = settings or OriginSettings()
    probe_path = Path(probe_path)
    probe, meta = load_probe(probe_path)
    instruct_id = meta["model"]
    _check_base_against_probe(instruct_id, base.identity(), base.source.spec)
    records, manifest = load_responses(base_responses)
    check_same_model(manifest["model"], base, f"collect output {base_responses}", force)
    ids, y, is_test = _base_rows(records, f"collect output {base_responses}")
    selected = [r for r in records if r["selected"]]
    features = FeatureSettings(aggregate=meta.get("aggregate", "mean"), span=meta.get("span", "response"),
                               batch_size=settings.batch_size, store_dtype=meta.get("store_dtype", "float16"))
    store = extract_features(base, selected, Path(out_dir) / "features", features, progress=progress)
    x = store.load(ids, "answer")
    if x.shape[1] != probe.weight.numel():
        raise ModelMismatchError(f"probe {probe_path} has {probe.weight.numel()} weights; the base model has "
                                 f"{x.shape[1]} FFN neurons")
    nb = settings.bootstrap
    scores = probe.scores(x)
    auroc, ci = _auroc_with_ci(scores, y, nb, settings.seed or 0)
    block: dict[str, Any] = {
        "base_model": base.source.hub_id or base.source.spec,
        "prompt_style": {True: "chat", False: "base"}.get((manifest.get("prompt") or {}).get("chat"), "unknown"),
        "responses": {"folder": str(base_responses), "prompt": manifest.get("prompt"),
                      "questions_sha256": manifest.get("questions_sha256")},
        "scored": "all selected factual responses of the base model (every split: the probe never saw them)",
        "metric": "AUROC (thresholds tuned on the instruct model do not transfer, so no accuracy)",
        "n": len(y), "n_hallucinated": int(y.sum()), "auroc": auroc, "auroc_ci95": ci,
    }
    if is_test.any() and len(set(y[is_test].tolist())) == 2:
        t_auc, t_ci = _auroc_with_ci(scores[is_test], y[is_test], nb, settings.seed or 0)
        block["test_split"] = {"n": int(is_test.sum()), "n_hallucinated": int(y[is_test].sum()), "auroc": t_auc,
                               "auroc_ci95": t_ci}
    block.update(_transfer_controls(probe, meta, x, y, Path(locate_dir) if locate_dir else probe_path.parent,
                                    instruct_responses, settings))
    return block


def _transfer_controls(probe: FittedProbe, meta: dict, x: torch.Tensor, y: np.ndarray, locate_dir: Path,
                       instruct_responses, settings: OriginSettings) -> dict:
    """H-Neurons-only and random-neuron classifiers fit on the instruct training rows, applied to the base."""
    h_cols = torch.nonzero(probe.weight > 0).flatten()
    k = len(h_cols)
    if k == 0:
        return {"note": "the probe has no H-Neurons (no positive weight): no H-Neuron or random-neuron control",
                "random_auroc_mean": None, "random_auroc_std": None, "random_auroc_min": None,
                "random_auroc_max": None, "h_neurons_only_auroc": None, "h_neurons_only_auroc_ci95": None}
    train = instruct_training(locate_dir, meta, instruct_responses)
    draws = settings.random_draws or train.random_draws
    seed = train.seed if settings.seed is None else settings.seed
    nb = settings.bootstrap
    h_fit = refit_on(h_cols, train.x, train.y, probe.C)
    h_auc, h_ci = _auroc_with_ci(h_fit.scores(x[:, h_cols]), y, nb, seed)
    random_aucs = []
    for d in range(draws):  # locate's draws: same count, same seeds, hence the same neuron sets
        cols = random_columns(x.shape[1], k, h_cols, seed + d, int(meta["model"]["d_ff"]))
        random_aucs.append(stats.auroc(refit_on(cols, train.x, train.y, probe.C).scores(x[:, cols]), y))
    aucs = np.array(random_aucs)
    test = train.report.get("test") or {}
    return {
        "h_neurons": k, "C": probe.C, "labels": train.labels,
        "h_neurons_only_auroc": h_auc, "h_neurons_only_auroc_ci95": h_ci,
        "random_draws": draws, "random_seed": seed,
        "random_auroc_mean": float(aucs.mean()), "random_auroc_std": float(aucs.std()),
        "random_auroc_min": float(aucs.min()), "random_auroc_max": float(aucs.max()),
        "random_auroc_per_draw": [float(a) for a in aucs],
        "controls": "refit with the probe's C on the instruct model's training features (as locate's baseline), "
                    "applied unchanged to the base model's features",
        "instruct_test": {"probe_auroc": (test.get("probe") or {}).get("auroc"),
                          "h_neurons_only_auroc": (test.get("h_neurons_only") or {}).get("auroc"),
                          "random_auroc_mean": (test.get("random") or {}).get("auroc_mean")},
    }


def _check_base_against_probe(instruct_id: dict, base_id: dict, base_spec: str) -> None:
    if instruct_id.get("architecture_hash") != base_id.get("architecture_hash"):
        raise ModelMismatchError(
            f"base model {base_spec!r} ({base_id.get('model_type')}, {base_id.get('num_layers')} layers x "
            f"{base_id.get('d_ff')}) is not of the probe's architecture ({instruct_id.get('model_type')}, "
            f"{instruct_id.get('num_layers')} x {instruct_id.get('d_ff')}): its neurons do not correspond")
    if instruct_id.get("weights_fingerprint") == base_id.get("weights_fingerprint"):
        raise InputError(f"base model {base_spec!r} has the probe's own weights (fingerprint "
                         f"{base_id.get('weights_fingerprint')}); give the base (pre-instruction-tuning) model")


# ========================================================================================== the stage
@dataclass
class OriginResult:
    out_dir: Path
    report: dict

    @property
    def path(self) -> Path:
        return self.out_dir / ORIGIN_REPORT


def _checkpoint(model: str | LoadedModel | Checkpoint, **kwargs) -> Checkpoint:
    return model if isinstance(model, Checkpoint) else local_checkpoint(model, **kwargs)


def _identity(model: str | LoadedModel | Checkpoint, ckpt: Checkpoint | None) -> dict:
    if isinstance(model, LoadedModel):
        return model.identity()
    return checkpoint_identity(ckpt, checkpoint_fingerprint(ckpt))


@locked("out_dir")
def origin(probe_path: str | Path, out_dir: str | Path, *, base: str | LoadedModel | Checkpoint,
           instruct: str | LoadedModel | Checkpoint | None = None, base_responses: str | Path | None = None,
           locate_dir: str | Path | None = None, instruct_responses: str | Path | None = None,
           settings: OriginSettings | None = None, force: bool = False, progress: bool = True,
           load: LoadOptions | None = None, instruct_revision: str | None = None) -> OriginResult:
    """Run the origin analysis and write ``origin.json`` and the plots into ``out_dir``.

    ``instruct`` (the probe's own model) enables parameter drift; ``base_responses`` (a collect folder of
    the base model) enables backward transfer, which needs ``base`` loaded (a LoadedModel; a spec is
    loaded here with ``load``). ``load`` (:class:`~editor.model.loading.LoadOptions`) applies to specs; its
    ``revision`` is the base's, ``instruct_revision`` the instruct's (Hub ids). A re-run resumes the base
    features and the drift.
    """
    settings = settings or OriginSettings()
    load = load or LoadOptions()
    if instruct is None and base_responses is None:
        raise InputError("nothing to do: give the instruct checkpoint (parameter drift) and/or the base model's "
                         "collect folder (backward transfer)")
    started = time.time()
    probe_path = Path(probe_path)
    probe, meta = load_probe(probe_path)
    instruct_id = meta["model"]
    out = Path(out_dir)
    check_no_outside_links(out)
    out.mkdir(parents=True, exist_ok=True)
    options = {"dtype": load.dtype, "revision": load.revision, "trust_remote_code": load.trust_remote_code}
    if base_responses is not None and not isinstance(base, LoadedModel):
        from ..model.loading import load_model

        if isinstance(base, Checkpoint):
            base = str(base.folder)
        base = load_model(base, load)
    report: dict[str, Any] = {"format": ORIGIN_FORMAT, "model": instruct_id,
                              "probe": {"path": str(probe_path), "sha256": sha256_file(probe_path), "C": probe.C,
                                        "labels": meta.get("labels"), "h_neurons": int((probe.weight > 0).sum())}}
    base_ckpt = None
    if instruct is not None:
        base_ckpt = _checkpoint(base, **options)
    base_id = _identity(base, base_ckpt)
    _check_base_against_probe(instruct_id, base_id, _spec(base))
    report["base_model"] = base_id
    if base_responses is not None:
        report["backward_transfer"] = backward_transfer(base, base_responses, probe_path, out, locate_dir=locate_dir,
                                                        instruct_responses=instruct_responses, settings=settings,
                                                        force=force, progress=progress)
    plots: list[str] = []
    if instruct is not None:
        inst_ckpt = _checkpoint(instruct, **dict(options, revision=instruct_revision))
        inst_id = _identity(instruct, inst_ckpt)
        _check_instruct_against_probe(instruct_id, inst_id, _spec(instruct), force)
        report["instruct_model"] = inst_id
        key = _drift_key(base_ckpt, base_id, inst_ckpt, inst_id)
        drift = cached_drift(out / DRIFT, key)
        if drift is None:
            drift = parameter_drift(base_ckpt, inst_ckpt, chunk_elements=settings.chunk_elements, progress=progress)
            write_drift(out / DRIFT, drift, key)
        h_flat = torch.nonzero(probe.weight > 0).flatten().numpy()
        report["drift"] = dict(drift_report(drift, h_flat, top=settings.top), base_model=_spec(base),
                               instruct_model=_spec(instruct), file=DRIFT)
        plots = plot_drift(out, drift, h_flat, report["drift"])
    report["plots"] = plots
    report["settings"] = settings.model_dump()
    report["wall_time_s"] = round(time.time() - started, 2)
    report["provenance"] = provenance()
    atomic_write_json(out / ORIGIN_REPORT, report)
    return OriginResult(out, report)


def _spec(model: str | LoadedModel | Checkpoint) -> str:
    if isinstance(model, (LoadedModel, Checkpoint)):
        return model.source.hub_id or model.source.spec
    return str(model)


def _check_instruct_against_probe(recorded: dict, inst_id: dict, spec: str, force: bool) -> None:
    if recorded.get("architecture_hash") != inst_id.get("architecture_hash"):
        raise ModelMismatchError(f"instruct checkpoint {spec!r} is not of the probe's architecture "
                                 f"({recorded.get('model_type')}, {recorded.get('num_layers')} x {recorded.get('d_ff')})")
    if not force and recorded.get("weights_fingerprint") != inst_id.get("weights_fingerprint"):
        raise ModelMismatchError(
            f"instruct checkpoint {spec!r} (fingerprint {inst_id.get('weights_fingerprint')}) is not the model the "
            f"probe was made with (fingerprint {recorded.get('weights_fingerprint')}); drift must compare the probe's "
            f"own model with its base. Pass --force to use it anyway")


# ============================================================================================ output
def plot_drift(out: Path, drift: Drift, h_flat: np.ndarray, block: dict) -> list[str]:
    """Histogram of all neurons' drift scores with the H-Neurons marked, and the per-layer mean."""
    from ..plots import figure, save_png

    score = drift.score
    plt, fig, ax = figure()
    ax.hist(score, bins=100, color="#7f8c8d", log=True, label=f"all {score.size:,} FFN neurons")
    if len(h_flat):
        for value in score[h_flat]:
            ax.axvline(value, color="#c0392b", lw=0.8, alpha=0.7)
        ax.plot([], [], color="#c0392b", label=f"{len(h_flat)} H-Neurons: mean normalised rank "
                                                f"{block['mean_normalised_rank']:.2f} (1 = least changed)\n"
                                                f"p = {block['p_value']:.3g} (changed less), "
                                                f"{block['p_value_changed_more']:.3g} (changed more)")
    ax.set_xlabel("drift score: mean z of 1 - cos(W_up row), 1 - cos(W_down col); right = changed more", fontsize=8)
    ax.set_ylabel("neurons (log)")
    ax.set_title("parameter drift, base -> instruct")
    ax.legend(loc="upper right", fontsize=7)
    names = [save_png(plt, fig, out / HIST_PLOT)]

    plt, fig, ax = figure()
    layers = np.arange(drift.num_layers)
    ax.bar(layers, score.reshape(drift.num_layers, drift.d_ff).mean(axis=1), color="#2c3e50")
    counts = np.bincount(np.asarray(h_flat, dtype=np.int64) // drift.d_ff, minlength=drift.num_layers)
    if counts.any():
        twin = ax.twinx()
        twin.plot(layers, counts, "o", color="#c0392b", ms=4)
        twin.set_ylim(bottom=0)
        twin.yaxis.get_major_locator().set_params(integer=True)
        twin.set_ylabel("H-Neurons", color="#c0392b")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean drift score")
    ax.set_title("parameter drift per layer (bars) and H-Neurons per layer (dots)")
    names.append(save_png(plt, fig, out / LAYER_PLOT))
    return names


def format_report(report: dict) -> str:
    """The printed summary of origin.json."""
    lines = []
    bt = report.get("backward_transfer")
    if bt:
        lo, hi = bt["auroc_ci95"]
        lines.append(f"backward transfer: the instruct probe on {bt['base_model']}'s own answers (n={bt['n']}, "
                     f"{bt['n_hallucinated']} hallucinated)")
        lines.append(f"  probe (unchanged)                  AUROC {bt['auroc']:.3f} [{lo:.3f}, {hi:.3f}]")
        if bt.get("h_neurons_only_auroc") is not None:
            hlo, hhi = bt["h_neurons_only_auroc_ci95"]
            lines.append(f"  classifier on H-Neurons only       AUROC {bt['h_neurons_only_auroc']:.3f} "
                         f"[{hlo:.3f}, {hhi:.3f}]")
            lines.append(f"  random neurons, same count         AUROC {bt['random_auroc_mean']:.3f} +- "
                         f"{bt['random_auroc_std']:.3f} (min {bt['random_auroc_min']:.3f}, max "
                         f"{bt['random_auroc_max']:.3f}, {bt['random_draws']} draws)")
        if bt.get("prompt_style") == "chat":
            lines.append("  note: the base responses were collected with chat prompting; base models are usually "
                         "asked with --prompt-style base")
        inst = (bt.get("instruct_test") or {}).get("probe_auroc")
        if inst is not None:
            lines.append(f"  (on the instruct model's own test split: AUROC {inst:.3f})")
    d = report.get("drift")
    if d:
        lines.append(f"parameter drift, {d['base_model']} -> {d['instruct_model']}: {d['n_total']:,} neurons ranked "
                     f"(0 = most changed, 1 = least changed)")
        if d["mean_normalised_rank"] is not None:
            lines.append(f"  H-Neurons ({d['n_neurons']}): mean normalised rank {d['mean_normalised_rank']:.3f}; "
                         f"one-sided p = {d['p_value']:.3g} (changed less than random neurons), "
                         f"{d['p_value_changed_more']:.3g} (changed more)")
        else:
            lines.append(f"  {d['note']}")
    return "\n".join(lines)
