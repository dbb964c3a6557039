"""The card's inputs: the edit folder and the reports of the other stages, read and cross-checked.

Consistency is checked, not assumed (see :mod:`editor.report.card`): a report of another architecture,
another base model, another edit or another neuron set is a :class:`~editor.errors.ModelMismatchError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ...artifacts import read_json
from ...errors import InputError, ModelMismatchError
from ...formats import (
    COLLECT_MANIFEST,
    DOSE_FORMAT,
    DOSE_REPORT,
    EDIT_FORMAT,
    EDIT_MANIFEST,
    EVAL_FORMAT,
    EVAL_RESULTS,
    LOCATE_REPORT,
    NEURONS,
    ORIGIN_FORMAT,
    ORIGIN_REPORT,
    PROBE,
    SWEEP_REPORT,
)
from .constants import LIBRARY, REPORT_NAMES
from .sources import source_name
from .text import finite, md_text


@dataclass
class Report:
    """One input report: its parsed content and the file it came from."""

    doc: Any
    path: Path

    @property
    def folder(self) -> Path:
        return self.path.parent


@dataclass
class CardInputs:
    """Everything the card is made from: the edit folder, its manifest and the reports found for it."""

    folder: Path
    edit: dict
    locate: Report | None = None
    eval: Report | None = None
    sweep: Report | None = None
    dose: Report | None = None  # dose_response.json
    origin: Report | None = None
    recipe: Report | None = None  # doc = the recipe's text
    collect: Report | None = None  # collect.json found through the locate report
    repo_id: str | None = None
    notes: list[str] = field(default_factory=list)  # facts the card states about the inputs

    @property
    def identity(self) -> dict:
        return self.edit["model"]

    @property
    def mode(self) -> str:
        """The written form: weights / ia3 / lora / gguf (a trained abstention edit's form folder: its form)."""
        return self.edit.get("form") if self.trained else self.edit["mode"]

    @property
    def trained(self) -> bool:
        """A trained abstention edit (`hneurons edit --mode abstain`): no alpha, trained deltas."""
        return self.edit["mode"] == "abstain"

    @property
    def name(self) -> str:
        """The repo id when known; else a descriptive name (base model, hneurons, mode), not a bare
        folder name such as "model"."""
        if self.repo_id:
            return self.repo_id
        source = self.identity.get("source") or {}
        base = str(source.get("hub_id") or source.get("spec") or self.folder.resolve().name).rstrip("/")
        suffix = "" if self.mode == "weights" else f"-{self.mode}"
        return f"{base.split('/')[-1]}-hneurons{suffix}"

    @property
    def total_neurons(self) -> int:
        return int(self.identity["num_layers"]) * int(self.identity["d_ff"])

    @property
    def count(self) -> int:
        return int(self.edit["neurons"]["count"])

    @property
    def per_mille(self) -> float:
        return 1000.0 * self.count / self.total_neurons

    @property
    def metric_rows(self) -> list[dict]:
        """The eval report's per-(task, metric) rows; none without a report."""
        return list(self.eval.doc["metrics"]) if self.eval else []


def metric_label(row: Mapping[str, Any]) -> str:
    """The metric's name, with its lm-eval filter when it is not ``none``."""
    filt = row.get("filter")
    return str(row["metric"]) if filt in (None, "none") else f"{row['metric']} ({filt})"


def outcome(row: Mapping[str, Any]) -> str | None:
    """'better' / 'worse' for significant changes with a known direction, else None."""
    if not row.get("significant") or not finite(row.get("delta")) or row.get("higher_is_better") is None:
        return None
    up = row["delta"] > 0
    return "better" if up == bool(row["higher_is_better"]) else "worse"


def _report_path(given: str | os.PathLike | None, default_name: str, candidates: Iterable[Path]) -> Path | None:
    if given is not None:
        path = Path(given)
        return path / default_name if path.is_dir() else path
    return next((p for p in candidates if p.is_file()), None)


def _read_report(path: Path | None, what: str, fmt: str | None = None) -> Report | None:
    if path is None:
        return None
    doc = read_json(path, what)
    if not isinstance(doc, dict):
        raise InputError(f"{what} {path} must be a JSON object")
    if fmt is not None and doc.get("format") != fmt:
        raise InputError(f"{what} {path} has format {doc.get('format')!r}; expected {fmt!r}")
    return Report(doc, path)


def _need(doc: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in doc]
    if missing:
        raise InputError(f"{where} lacks key {missing[0]!r} (expected keys: {', '.join(keys)})")


def load_inputs(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, dose=None,
                origin=None, recipe=None, repo_id: str | None = None) -> CardInputs:
    """Read and cross-check every input of the card (module docstring of :mod:`editor.report.card`)."""
    folder = Path(edit_dir)
    edit = _read_edit(folder)
    if repo_id is not None:
        from ..publish import validate_repo_id

        validate_repo_id(repo_id)
    inputs = CardInputs(folder, edit, repo_id=repo_id)
    recorded = edit["neurons"].get("source_file")
    near_neurons = [Path(recorded).parent / LOCATE_REPORT] if recorded else []
    inputs.locate = _read_report(_report_path(locate_report, LOCATE_REPORT,
                                              [folder / REPORT_NAMES["locate"], *near_neurons]), "locate report")
    inputs.eval = _read_report(_report_path(eval_results, EVAL_RESULTS, [folder / REPORT_NAMES["eval"]]),
                               "eval results", EVAL_FORMAT)
    inputs.sweep = _read_report(_report_path(sweep, SWEEP_REPORT, [folder / REPORT_NAMES["sweep"]]), "sweep report")
    inputs.dose = _read_report(_report_path(dose, DOSE_REPORT, [folder / REPORT_NAMES["dose"]]),
                               "dose-response report", DOSE_FORMAT)
    inputs.origin = _read_report(_report_path(origin, ORIGIN_REPORT, [folder / REPORT_NAMES["origin"]]),
                                 "origin report")
    recipe_path = _report_path(recipe, "recipe.yaml", [folder / REPORT_NAMES["recipe"]])
    if recipe_path is not None:
        inputs.recipe = _read_recipe(recipe_path, inputs)
    for check in (_check_locate, _check_eval, _check_sweep, _check_dose, _check_origin):
        check(inputs)
    return inputs


def _read_edit(folder: Path) -> dict:
    """The edit manifest of a complete `hneurons edit` folder."""
    if not folder.is_dir():
        raise InputError(f"edit folder {folder} does not exist or is not a folder")
    edit = read_json(folder / EDIT_MANIFEST, f"edit manifest (written by `hneurons edit`) in {folder}")
    if not isinstance(edit, dict) or edit.get("format") != EDIT_FORMAT:
        raise InputError(f"{folder / EDIT_MANIFEST} is not an hneurons edit manifest (format {EDIT_FORMAT!r})")
    trained = isinstance(edit, dict) and edit.get("mode") == "abstain"
    _need(edit, ("mode", "model", "neurons", "files", "verification") + (() if trained else ("alpha",)),
          str(folder / EDIT_MANIFEST))
    if trained:
        if edit.get("form") not in ("weights", "lora"):
            raise InputError(f"{folder} is the top folder of a trained abstention edit (`hneurons edit --mode "
                             f"abstain`); write the card into one of its forms: {folder / 'model'} (checkpoint) or "
                             f"{folder / 'adapter-lora'} (LoRA adapter)")
    elif edit["mode"] not in LIBRARY:
        raise InputError(f"{folder / EDIT_MANIFEST}: unknown mode {edit['mode']!r}")
    if not (folder / NEURONS).is_file():
        raise InputError(f"{folder} has no neurons.json: the folder is not complete output of `hneurons edit`")
    return edit


# ---------------------------------------------------------------------------------------- consistency
def _same_architecture(identity: Mapping[str, Any] | None, inputs: CardInputs, what: str) -> None:
    mine = inputs.identity.get("architecture_hash")
    theirs = (identity or {}).get("architecture_hash")
    if theirs and mine and theirs != mine:
        raise ModelMismatchError(
            f"{what} was made with a model of another architecture ({(identity or {}).get('model_type')}, hash "
            f"{theirs}) than this edit ({inputs.identity.get('model_type')}, hash {mine})")


def _neuron_sha(path: Path) -> str:
    from ...model.neuron_set import NeuronSet

    return NeuronSet.load(path).sha256


def _check_locate(inputs: CardInputs) -> None:
    report = inputs.locate
    if report is None:
        return
    where = f"locate report {report.path}"
    _need(report.doc, ("model", "chosen", "h_neurons", "test"), where)
    _same_architecture(report.doc["model"], inputs, where)
    sibling = report.folder / NEURONS
    if sibling.is_file() and report.folder.resolve() != inputs.folder.resolve():
        if _neuron_sha(sibling) != inputs.edit["neurons"]["sha256"]:
            raise ModelMismatchError(f"{where} belongs to the neuron set {sibling}, which differs from the set this "
                                     f"edit used ({inputs.folder / 'neurons.json'}); give the locate report of "
                                     f"that set")
    elif report.doc["h_neurons"].get("count") != inputs.count:
        raise ModelMismatchError(f"{where} found {report.doc['h_neurons'].get('count')} H-Neurons but this edit "
                                 f"scales {inputs.count}; give the locate report of the set the edit used")
    if report.doc["model"].get("weights_fingerprint") != inputs.identity.get("weights_fingerprint"):
        inputs.notes.append(
            f"The neurons were located in other weights of the same architecture "
            f"({md_text(source_name(report.doc['model']))}) than the edited model; the detection numbers are "
            f"that model's.")
    folder = (report.doc.get("responses") or {}).get("folder")
    if folder and (Path(folder) / COLLECT_MANIFEST).is_file():
        inputs.collect = _read_report(Path(folder) / COLLECT_MANIFEST, "collect manifest")


def _check_eval(inputs: CardInputs) -> None:
    report = inputs.eval
    if report is None:
        return
    where = f"eval results {report.path}"
    _need(report.doc, ("models", "settings", "metrics"), where)
    models = report.doc["models"] or {}
    edited, base = models.get("edited"), models.get("base")
    if not edited:
        raise InputError(f"{where} evaluate no edited model (models.edited is null): evaluate the edit with "
                         f"`hneurons eval --base MODEL --model/--adapter {inputs.folder}`")
    for role, variant in (("edited", edited), ("base", base)):
        if variant:
            _same_architecture(variant.get("model"), inputs, f"{where} ({role} model)")
    if base and base["model"].get("weights_fingerprint") != inputs.identity.get("weights_fingerprint"):
        raise ModelMismatchError(
            f"{where}: the base model it compares with ({source_name(base['model'])}, fingerprint "
            f"{base['model'].get('weights_fingerprint')}) is not the model this edit was made from "
            f"({source_name(inputs.identity)}, fingerprint {inputs.identity.get('weights_fingerprint')})")
    _check_edited_variant(edited, inputs, where)


def _check_edited_variant(edited: Mapping[str, Any], inputs: CardInputs, where: str) -> None:
    kind, mine = edited.get("kind"), inputs.edit
    if kind == "hooks" and inputs.trained:
        raise ModelMismatchError(f"{where}: its edited model is a run-time neuron scaling, but {inputs.folder} is a "
                                 f"trained abstention edit; evaluate the edit itself (--model or --adapter)")
    if kind == "hooks":
        neurons, alpha = edited.get("neurons") or {}, edited.get("alpha") or {}
        if neurons.get("sha256") != mine["neurons"]["sha256"]:
            raise ModelMismatchError(f"{where}: its edited model scales another neuron set (sha256 "
                                     f"{str(neurons.get('sha256'))[:12]}...) than this edit "
                                     f"({mine['neurons']['sha256'][:12]}...)")
        if (alpha.get("min"), alpha.get("max")) != (mine["alpha"].get("min"), mine["alpha"].get("max")):
            raise ModelMismatchError(f"{where}: its edited model scales the neurons by alpha {alpha.get('min')}.."
                                     f"{alpha.get('max')}, this edit by {mine['alpha'].get('min')}.."
                                     f"{mine['alpha'].get('max')}")
    elif kind == "adapter":
        recorded = (edited.get("adapter") or {}).get("sha256") or {}
        differing = [n for n, h in recorded.items() if mine["files"].get(n) != h]
        if inputs.mode == "weights" or differing or not recorded:
            raise ModelMismatchError(f"{where}: its edited model is an adapter whose files "
                                     f"({', '.join(differing or list(recorded)) or 'none recorded'}) are not this "
                                     f"edit's ({inputs.mode} in {inputs.folder})")
    elif kind == "model":
        if inputs.mode != "weights":
            raise ModelMismatchError(f"{where}: its edited model is a checkpoint, but {inputs.folder} holds a "
                                     f"{inputs.mode} adapter; evaluate it with --base MODEL --adapter {inputs.folder}")
        source = (edited.get("model") or {}).get("source") or {}
        same_folder = (source.get("kind") == "folder"
                       and Path(source.get("path", "")).resolve() == inputs.folder.resolve())
        if not same_folder and edited["model"].get("weights_fingerprint") != _checkpoint_fingerprint(inputs.folder):
            raise ModelMismatchError(f"{where}: its edited model ({source_name(edited['model'])}) has other weights "
                                     f"than the checkpoint in {inputs.folder}")
    else:
        raise InputError(f"{where}: models.edited.kind is {kind!r}; expected model, adapter or hooks")


def _checkpoint_fingerprint(folder: Path) -> str:
    from ...model.checkpoint import checkpoint_fingerprint, local_checkpoint

    return checkpoint_fingerprint(local_checkpoint(str(folder)))


def _check_sweep(inputs: CardInputs) -> None:
    report = inputs.sweep
    if report is None:
        return
    where = f"sweep report {report.path}"
    _need(report.doc, ("model", "neurons", "grid", "chosen", "constraints"), where)
    _same_architecture(report.doc["model"], inputs, where)
    if (report.doc["neurons"] or {}).get("sha256") != inputs.edit["neurons"]["sha256"]:
        raise ModelMismatchError(f"{where} swept another neuron set than the one this edit used "
                                 f"({inputs.folder / 'neurons.json'})")


def _check_dose(inputs: CardInputs) -> None:
    """The dose-response must be of this edit's source model (architecture and weights, as the eval's base) and of
    the neuron set this edit scales (as the sweep)."""
    report = inputs.dose
    if report is None:
        return
    where = f"dose-response report {report.path}"
    _need(report.doc, ("model", "neurons", "sets", "grid", "settings", "rows"), where)
    if not isinstance(report.doc["rows"], list) or not isinstance(report.doc["grid"], list):
        raise InputError(f"{where}: 'rows' and 'grid' must be lists")
    for i, row in enumerate(report.doc["rows"]):
        if not isinstance(row, dict):
            raise InputError(f"{where}: rows[{i}] must be an object")
        _need(row, ("task", "metric", "n", "sets", "random", "h_minus_random", "h_rank"), f"{where} rows[{i}]")
    model = report.doc["model"] or {}
    _same_architecture(model, inputs, where)
    if model.get("weights_fingerprint") != inputs.identity.get("weights_fingerprint"):
        raise ModelMismatchError(
            f"{where}: it scaled the neurons of another model ({source_name(model)}, fingerprint "
            f"{model.get('weights_fingerprint')}) than the one this edit was made from "
            f"({source_name(inputs.identity)}, fingerprint {inputs.identity.get('weights_fingerprint')})")
    theirs = (report.doc["neurons"] or {}).get("sha256")
    if theirs != inputs.edit["neurons"]["sha256"]:
        raise ModelMismatchError(f"{where} scaled another neuron set (sha256 {str(theirs)[:12]}...) than the one this "
                                 f"edit used ({inputs.folder / 'neurons.json'}, sha256 "
                                 f"{inputs.edit['neurons']['sha256'][:12]}...); give the dose-response of that set")


def _check_origin(inputs: CardInputs) -> None:
    report = inputs.origin
    if report is None:
        return
    where = f"origin report {report.path}"
    blocks = {"backward_transfer": ("auroc", "auroc_ci95", "random_auroc_mean"),
              "drift": ("mean_normalised_rank", "p_value", "n_neurons")}
    fmt = report.doc.get("format")
    if fmt is not None and fmt != ORIGIN_FORMAT:
        raise InputError(f"{where} has format {fmt!r}; expected 'hneurons.origin/1'")
    present = [b for b in blocks if report.doc.get(b) is not None]
    if not present:
        raise InputError(f"{where} has neither 'backward_transfer' nor 'drift'")
    for block in present:
        if not isinstance(report.doc[block], dict):
            raise InputError(f"{where}: {block!r} must be an object")
        _need(report.doc[block], blocks[block], f"{where} {block!r}")
    if "model" in report.doc:
        _same_architecture(report.doc["model"], inputs, where)
    probe = report.doc.get("probe") or {}
    own = inputs.edit["files"].get(PROBE)
    if own and probe.get("sha256") and probe["sha256"] != own:
        raise ModelMismatchError(f"{where} analysed another probe (sha256 {probe['sha256'][:12]}...) than the one "
                                 f"shipped with this edit ({own[:12]}...)")
    if isinstance(probe.get("h_neurons"), int) and probe["h_neurons"] != inputs.count:
        raise ModelMismatchError(f"{where} analysed a probe with {probe['h_neurons']} H-Neurons; this edit scales "
                                 f"{inputs.count}")


def _read_recipe(path: Path, inputs: CardInputs) -> Report:
    """The recipe's text, checked to be for this edit's model. The card quotes the recipe and does not run it;
    its callers (``hneurons card --recipe``, ``hneurons run``) validate it with :func:`editor.pipeline.recipe.load_recipe`."""
    import yaml

    if not path.is_file():
        raise InputError(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        doc = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise InputError(f"recipe {path} is not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"recipe {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    model_id = (doc.get("model") or {}).get("id") if isinstance(doc, dict) and isinstance(doc.get("model"), dict) else None
    if not isinstance(model_id, str):
        raise InputError(f"recipe {path} names no model (expected a 'model: {{id: ...}}' section)")
    spec = inputs.identity.get("source", {}).get("spec")
    if spec is not None and model_id != spec:
        raise ModelMismatchError(f"recipe {path} is for model {model_id!r}, but this edit was made from {spec!r}")
    return Report(text, path)

