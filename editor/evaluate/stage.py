"""The eval stage: lm-eval benchmarks for a base model, its edit and random-neuron controls, side by side.

What is evaluated ("variants")
------------------------------
Every variant comes down to one loaded model plus, optionally, a run-time edit:

* ``model``: a checkpoint folder, Hub id, ``.gguf`` file or embedded alias (:func:`editor.model.loading.load_model`),
  or an in-memory :class:`~editor.model.loading.LoadedModel`;
* ``adapter``: the base model with a PEFT adapter folder (IA3 / LoRA written by ``hneurons edit``), applied with
  ``peft.PeftModel.from_pretrained`` on the already loaded base and removed again (``unload``) afterwards;
* ``hooks``: the base model with a neuron set scaled at run time (forward pre-hooks,
  :func:`editor.model.hooks.scaled_neurons`): no weights are written. Random controls and sweep points are hook
  variants, so the base model is loaded once and every hook variant runs on it.

Each variant is run through lm-eval's Python API: ``HFLM(pretrained=<model object>, tokenizer=<tokenizer>,
batch_size=N)`` and ``simple_evaluate`` with a ``TaskManager`` that includes the bundled task folder
``<repo>/eval`` (and any ``include_paths``). Built-in lm-eval task names pass through (built-in tasks are
indexed only when a requested name is not found in the include paths, which saves ~7 s). When every task is
local, ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are set before lm-eval is imported. The chat template is
applied (with ``fewshot_as_multiturn``, as lm-eval's CLI does) when the tokenizer has one, unless told otherwise.

Comparison and statistics (hneurons' choices; docs/METHOD.md section 8)
----------------------------------------------------------------------
For each task and metric that lm-eval reports, ``higher_is_better`` is read from lm-eval's output. When a
metric is the mean of per-item values (checked: the mean of the logged per-sample values must equal lm-eval's
number), the delta edited - base is tested on the same items (``paired_test``, default ``auto``):

* 0/1 per item (accuracy, rates): the exact McNemar test, two-sided mid-p, on the discordant items, with the CI
  of the change that inverts the same binomial tails (:func:`editor.stats.paired_binary`);
* other per-item values (log-probability margins): the paired t-test and its CI (:func:`editor.stats.paired_t`);
* ``paired_test: bootstrap``: hneurons 0.1's percentile paired bootstrap (``ci_iters`` resamples, ``ci_seed``).

Every row reports ``n`` and ``mde``, the change detectable with 80% power at 0.05 (McNemar at the observed
discordance, with ``mde_lower_bound`` when every changed item moves one way; paired t: (t_.975 + t_.8) sd /
sqrt(n)). p-values are Holm-adjusted across the report's rows (``p_holm``; ``significant`` = p_holm <= 0.05,
``significant_unadjusted`` beside it) and across the primary rows alone (``p_holm_primary``): each task declares
one ``primary_metric`` in its YAML metadata, the report's headline, so the headline is not the best of many
comparisons. Metrics that are not item means (perplexities, corpus-level BLEU/F1) get the delta without a CI
(``ci_method`` says which).

Random controls: the same number of neurons as the H-Neuron set in each layer (matched per layer; with
``match_layers`` false, uniform over all FFN neurons), none of them H-Neurons, one set per seed (``controls``
seeds starting at ``control_seed``), scaled with the same alphas (control neuron i takes H-Neuron i's alpha).
Each row reports the control's mean, std (ddof=1), min and max over seeds, ``edited_minus_control`` = edited -
mean control, and its CI with variance var(d_i)/n + var(set means)/sets, so that the between-control-set
variance counts (:func:`editor.stats.minus_control_sets`; t with sets - 1 df), its p-value and Holm
(``edited_minus_control_p_holm``, ``edited_minus_control_significant``).

KL divergence (needs two models, so hneurons computes it itself): neutral prompts
(``eval/data/neutral_prompts.jsonl``: instructions, everyday questions, short texts; no factual trivia) are
rendered with the chat template when there is one; the base model greedily continues each for ``kl_new_tokens``
tokens (stopping at end of turn); on prompt + continuation, KL(base || edited) of the next-token distributions
is computed at every position in float32 (log-softmax), averaged per prompt, then over prompts, with a
percentile bootstrap CI over prompts. The continuations are generated once and shared by every variant.

Output folder (``out``)
-----------------------
* ``eval_results.json`` (format ``hneurons.eval/1``)::

    {"format": "hneurons.eval/1",
     "models": {"base": VARIANT, "edited": VARIANT, "controls": [VARIANT, ...]},   # absent roles are null / []
     "settings": {"tasks", "limit", "batch_size", "apply_chat_template", "gen_kwargs", "seeds", "include_paths",
                  "lm_eval_bootstrap_iters", "paired_test", "ci_iters", "ci_seed", "controls", "control_seed", "match_layers",
                  "alpha", "kl": {...}},
     "tasks": {TASK: {"split", "n_samples", "version", "output_type"}},
     "metrics": [{"task", "metric", "filter", "higher_is_better", "primary", "n", "base", "edited", "delta",
                  "delta_ci95", "p_value", "p_holm", "p_holm_primary", "significant", "significant_unadjusted",
                  "test", "ci_method", "mde", "mde_lower_bound", "discordant": {"better", "worse"} | null,
                  "control": {"mean", "std", "min", "max", "seeds": {SEED: value}} | null,
                  "edited_minus_control", "edited_minus_control_ci95", "edited_minus_control_p_value",
                  "edited_minus_control_p_holm", "edited_minus_control_significant",
                  "edited_minus_control_ci_method"}],
     "kl": {"mean", "ci95", "n_prompts", "n_positions", "direction": "KL(base || edited)", "prompts_file",
            "prompts_sha256", "new_tokens", "control": {"mean", "std", "min", "max", "seeds"} | null} | null,
     "lm_eval_commands": {"base": CMD | null, "edited": CMD | null, "controls": NOTE | null},
     "controls_note": null | "why an edit has no random controls (a trained abstention edit; the prompt baseline)",
     "kl_note": (only when KL was skipped because the edited variant is the base model with an instruction),
     "abstention": ABSTENTION | null,
     "files": {"plot", "abstention_plot"}, "provenance": {...}}

  ABSTENTION (editor/evaluate/abstention.py; null unless ``hneurons_facts`` ran for base and edited)::

    {"format": "hneurons.abstention/1", "task": "hneurons_facts", "n", "n_base_wrong", "n_base_right",
     "base": RATES, "edited": RATES,      # RATES = {"accuracy", "hallucination_rate", "abstention_rate": RATE,
                                          #          "risk_coverage": {"coverage", "risk", "answered", "n"}}
     "delta": {"accuracy" | "hallucination_rate" | "abstention_rate": {"delta", "ci95", "p_value", "n",
               "discordant": {"better", "worse"}, "mde", "mde_lower_bound", "test": "mcnemar_mid_p"}},
     "selectivity": RATE + {"note"},      # of the edited model's abstentions, the share the base got wrong
     "abstention_auroc": {"value", "ci95", "n", "n_base_wrong", "n_base_right", "ci_method", "note"},
     "abstention_on_base_wrong": RATE, "abstention_on_base_right": RATE, "base_wrong_means", "auroc_note",
     "nonexist": {"task", "n", "base": RATE, "edited": RATE, "delta", "means"} | null,
     "probe": {"probe", "file": "abstention_probe.json", "n_unscored", "rule",
               "auroc_vs_base_wrong": {"value", "ci95", "n", "n_base_wrong", "ci_method", "note"},
               "curve": [{"threshold" (null: the base model itself), "coverage", "risk", "answered", "n"}]} | null,
     "plot": "abstention_rc.png"}

  RATE = {"value", "k", "n", "ci95" (Wilson), "ci_method": "wilson"}. Base wrong = the base model is not accurate
  on the item. The AUROC of a 0/1 abstention depends on its rate (0.5 + (rate on base-wrong - rate on base-right)
  / 2): read it with the abstention rate beside it.

  VARIANT = {"name", "kind": "model"|"adapter"|"hooks", "model": identity, plus "adapter" {path, sha256 of its
  files, edit manifest summary} or "neurons" {sha256, count, per_layer, source_file, seed, match_layers} and
  "alpha" {default, min, max}}. Fields a comparison lacks (e.g. ``base`` in a single-model run) are null.
* ``lm_eval/<variant>/results.json`` (lm-eval's full results dict, without samples), ``samples_<task>.jsonl``
  (lm-eval's per-sample log), ``hneurons_run.json`` (the settings key used to resume: a variant whose results
  exist with the same key is not re-run).
* ``kl/continuations.jsonl`` (prompts and the base model's continuations) and ``kl/<variant>.json`` (per-prompt
  KL values).
* ``eval_deltas.png``: delta per metric with its CI, and the controls' deltas.
* ``abstention_rc.png`` (with the abstention block): risk-coverage points of base and edited, and the probe
  rule's curve with ``detector``; ``abstention_probe.json`` (``detector``): the probe's hallucination probability
  of every base facts answer, read again by ``hneurons abstain-report``.

System instructions: ``system_instruction`` goes to lm-eval's ``simple_evaluate(system_instruction=...)`` for
every variant; ``edited_system_instruction`` for the edited variant and its controls only. With a base model alone
and ``edited_system_instruction`` the edited role is the base model itself told the instruction (the prompt
baseline: base without vs base with the instruction; no controls, no KL). A variant's instruction is part of its
run key and of its printed lm-eval command (``--system_instruction``). An ``hneurons edit --mode abstain`` folder
gets no hook controls (``controls_note`` says why).

The equivalent ``lm_eval`` command is printed for every variant that has one (checkpoints and base + adapter);
hook variants have no plain-CLI equivalent until written out with ``hneurons edit``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import (
    atomic_write_json,
    check_no_outside_links,
    provenance,
    read_json,
    sha256_file,
)
from ..errors import InputError, ModelMismatchError, OutputExistsError
from ..formats import EDIT_MANIFEST, EVAL_FORMAT, EVAL_RESULTS
from ..locking import output_lock
from ..model.loading import LoadedModel, LoadOptions, check_model, load_model
from ..model.neuron_set import NeuronSet, as_neuron_set, check_alpha
from ..paths import portable_path
from .compare import compare_runs, spread
from .kl import kl_divergences, kl_sequences, kl_summary, write_kl_files
from .known import write_known_facts
from .lm_eval_run import (
    HOOKS_NOTE,
    lm_eval_command,
    prepare_environment,
    run_lm_eval,
    task_manager,
)
from .preflight import apply_availability, check_task_data
from .settings import EvalSettings
from .table import plot_deltas, render_table
from .two_pass import first_answers_metadata
from .variants import (
    ABSTAIN_CONTROLS_NOTE,
    Pair,
    Variant,
    check_adapter,
    control_variants,
    edit_folder_mode,
    edit_folder_neurons,
)

log = logging.getLogger(__name__)



# ================================================================================ the whole comparison
@dataclass
class EvalReport:
    out: Path
    results: dict[str, Any]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.results["metrics"]

    def table(self) -> str:
        return render_table(self.results)


def _load(spec: str | LoadedModel | None, load: LoadOptions | None) -> LoadedModel | None:
    if spec is None or isinstance(spec, LoadedModel):
        return spec
    return load_model(str(spec), load)


def resolve_neurons(neurons: Any, alpha: float | None, lm: LoadedModel, force: bool = False,
                    layer_alpha: Mapping[int, float] | None = None) -> tuple[NeuronSet, dict[Pair, float]]:
    nset = as_neuron_set(neurons)
    nset.validate(lm, force=force)
    return nset, nset.alphas(0.0 if alpha is None else alpha, layer_alpha)


def check_edit_source(folder: str | Path | None, base: LoadedModel, force: bool) -> None:
    """An ``hneurons edit`` folder records the model it was made from: it must be the base compared with."""
    manifest = Path(folder) / EDIT_MANIFEST if folder else None
    if manifest is None or not manifest.is_file():
        return
    source = read_json(manifest, "edit manifest").get("model") or {}
    recorded = source.get("weights_fingerprint")
    if recorded and recorded != base.fingerprint and not force:
        raise ModelMismatchError(f"{folder} was made from {source.get('source', {}).get('spec', '?')} (fingerprint "
                                 f"{recorded}), but the base model given is {base.source.spec} (fingerprint "
                                 f"{base.fingerprint}); compare an edit with the model it was made from, or pass "
                                 f"--force")


def check_combination(base: Any, edited: Any, adapter: Any, neurons: Any, alpha: float | None) -> None:
    """The combinations :func:`evaluate` accepts, checked before anything is loaded."""
    if (adapter is not None or neurons is not None) and base is None:
        raise InputError("an adapter or a neuron set is applied to a base model: give --base")
    if base is None and edited is None:
        raise InputError("nothing to evaluate: give a model (--model) and/or a base model (--base)")
    if adapter is not None and edited is not None:
        raise InputError("give either an edited model (--model) or an adapter (--adapter), not both")
    if alpha is not None and neurons is None and adapter is None and edited is None:
        raise InputError("--alpha needs a neuron set (--neurons)")


def build_variants(base: LoadedModel | None, edited: LoadedModel | None, adapter: str | Path | None,
                   neurons: Any, alpha: float | None, settings: EvalSettings, force: bool = False
                   ) -> tuple[Variant | None, Variant | None, list[Variant], tuple[NeuronSet, dict] | None]:
    """Decide what is compared from what was given (see :func:`evaluate`)."""
    check_combination(base, edited, adapter, neurons, alpha)
    base_v = Variant("base", base) if base is not None else None
    edited_v = None
    recorded = None  # the neuron set an edit folder records, for the controls
    mode = None  # the mode an edit folder records (no hook controls for a trained abstention edit)
    if edited is not None:
        edited_v = Variant("edited", edited)
        if edited.folder and edited.source.kind == "folder":
            recorded = edit_folder_neurons(edited.folder)
            mode = edit_folder_mode(edited.folder)
    elif adapter is not None:
        edited_v = Variant("edited", base, adapter=Path(adapter).resolve())
        recorded = edit_folder_neurons(adapter)
        mode = edit_folder_mode(adapter)
    neuron_info = None
    if neurons is not None:
        nset_alphas = resolve_neurons(neurons, alpha, base, force)
        if alpha is None and recorded is not None and recorded[0].sha256 == nset_alphas[0].sha256:
            nset_alphas = (nset_alphas[0], recorded[1])  # the same set as the edit's: its alphas too
        neuron_info = nset_alphas
        if edited_v is None:
            edited_v = Variant("edited", base, neurons=nset_alphas[0], alphas=nset_alphas[1])
    elif recorded is not None and base is not None:
        recorded[0].validate(base, force=force)  # located in the base model: same layout and weights
        neuron_info = recorded
    if base is not None and edited_v is not None and edited_v.kind != "hooks":
        check_edit_source(edited.folder if edited is not None else adapter, base, force)
    if alpha is not None and neurons is None and recorded is None:
        raise InputError("--alpha needs a neuron set (--neurons, or an `hneurons edit` folder that records one)")
    if base is not None and edited_v is not None and edited_v.lm.architecture_hash != base.architecture_hash:
        raise ModelMismatchError(f"the edited model ({edited_v.lm.source.spec}) and the base model "
                                 f"({base.source.spec}) have different architectures (hashes "
                                 f"{edited_v.lm.architecture_hash} vs {base.architecture_hash}); compare an edit "
                                 f"with the model it was made from")
    if edited_v is None and base is not None and settings.edited_system_instruction is not None:
        edited_v = Variant("edited", base)  # the prompt baseline: the base model told to abstain
    if edited_v is not None and settings.edited_system_instruction is not None:
        edited_v.system_instruction = settings.edited_system_instruction
    controls: list[Variant] = []
    if (settings.controls and neuron_info is not None and base is not None and edited_v is not None
            and mode != "abstain"):
        seeds = range(settings.control_seed, settings.control_seed + settings.controls)
        controls = control_variants(base, neuron_info[0], neuron_info[1], seeds, settings.match_layers)
        for control in controls:  # the controls take the edited role's instruction too
            control.system_instruction = edited_v.system_instruction
    return base_v, edited_v, controls, neuron_info


def controls_note(edited_v: Variant | None, base_v: Variant | None, settings: EvalSettings,
                  controls: Sequence[Variant]) -> str | None:
    """Why an eval with an edit has no random controls, when it is not the settings' choice."""
    if edited_v is None or base_v is None or controls or not settings.controls:
        return None
    folder = edited_v.adapter if edited_v.adapter is not None else (
        edited_v.lm.folder if edited_v.lm is not base_v.lm else None)
    if edit_folder_mode(folder) == "abstain":
        return ABSTAIN_CONTROLS_NOTE
    if instruction_only(base_v, edited_v):
        return "the edited variant is the base model with a system instruction: no neuron set, no random controls"
    return None


def instruction_only(base_v: Variant | None, edited_v: Variant | None) -> bool:
    """The edited variant is the base model itself, differing only by its system instruction (prompt baseline)."""
    return (base_v is not None and edited_v is not None and edited_v.lm is base_v.lm and edited_v.kind == "model"
            and edited_v.system_instruction is not None)


def evaluate(
    base: str | LoadedModel | None = None,
    edited: str | LoadedModel | None = None,
    *,
    adapter: str | Path | None = None,
    neurons: Any = None,
    alpha: float | None = None,
    settings: EvalSettings | None = None,
    out: str | Path,
    overwrite: bool = False,
    force: bool = False,
    load: LoadOptions | None = None,
    **fields: Any,
) -> EvalReport:
    """Evaluate base and edited models side by side and write ``out/eval_results.json``.

    What is compared:

    * ``edited`` (a checkpoint, e.g. written by ``hneurons edit``) against ``base``;
    * ``base`` + ``adapter`` (a PEFT folder) against ``base``;
    * ``base`` with ``neurons`` scaled by ``alpha`` at run time against ``base``;
    * one model alone (only ``base`` or only ``edited``): its numbers, no deltas.

    Random controls (``settings.controls`` seeds) need a neuron set: ``neurons`` (+ ``alpha``), or the
    ``neurons.json`` and alpha recorded in an ``hneurons edit`` folder given as ``edited`` or ``adapter``.
    Models are given as specs (loaded with ``load``) or as loaded models (evaluated in memory). ``settings``
    (:class:`~editor.evaluate.settings.EvalSettings`) may also be given field by field as keywords.
    Re-running into the same ``out`` reuses every variant whose lm-eval results exist with the same settings;
    an ``out`` holding results of other settings is an error unless ``overwrite``.
    """
    settings = EvalSettings.of(settings, **fields)
    prepare_environment(settings)
    out = Path(out)
    check_combination(base, edited, adapter, neurons, alpha)
    settings = preflight(settings, [base, edited], load, alpha)
    if adapter is not None:
        check_adapter(adapter)
    with output_lock(out):
        return _evaluate(base, edited, adapter, neurons, alpha, settings, out, overwrite, force, load)


def preflight(settings: EvalSettings, models: Sequence[Any], load: LoadOptions | None,
              alpha: float | None = None) -> EvalSettings:
    """What can fail before any model loads: alpha, the tasks' datasets (one line per task that cannot read its
    data; ``available_only`` leaves those out: the returned settings), every model spec and the device."""
    if alpha is not None:
        check_alpha(alpha, "alpha")
    settings, _ = apply_availability(settings)
    check_task_data(settings.tasks, settings.task_paths)
    for spec in models:
        if spec is not None:
            check_model(spec, load)
    return settings


def _evaluate(base, edited, adapter, neurons, alpha, settings: EvalSettings, out: Path, overwrite: bool, force: bool,
              load: LoadOptions | None) -> EvalReport:
    check_out(out, settings, overwrite)
    base_lm = _load(base, load)
    edited_lm = _load(edited, load)
    base_v, edited_v, controls, neuron_info = build_variants(base_lm, edited_lm, adapter, neurons, alpha, settings,
                                                             force)
    manager, known = known_facts_manager((base_v or edited_v).lm, settings, out)
    runs = {v.name: run_lm_eval(v, settings, out / "lm_eval" / v.name, manager)
            for v in [base_v, edited_v, *controls] if v is not None}
    seeds = [c.seed for c in controls]
    rows = compare_runs(runs.get("base"), runs.get("edited"), [runs[c.name] for c in controls], seeds,
                        settings.ci_iters, settings.ci_seed, settings.paired_test)
    same_weights = instruction_only(base_v, edited_v)  # KL on prompts without the instruction would be 0
    kl = (_kl_block(base_v, edited_v, controls, settings, out / "kl")
          if base_v and edited_v and settings.kl and not same_weights else None)
    results = _results_doc(base_v, edited_v, controls, settings, runs, rows, kl, alpha, neuron_info,
                           getattr(manager, "metadata", None))
    results["known_facts"] = known_facts_summary(known)
    results["force"] = {"given": force}  # --force: a neuron set or edit of other weights was accepted
    results["controls_note"] = controls_note(edited_v, base_v, settings, controls)
    if same_weights and settings.kl:
        results["kl_note"] = ("not measured: the edited variant has the base model's weights (only its system "
                              "instruction differs)")
    results["abstention"] = abstention_block(runs, base_v, settings, out, force)
    results["files"] = {"plot": plot_deltas(out, rows) if base_v and edited_v else None,
                        "abstention_plot": (results["abstention"] or {}).get("plot")}
    atomic_write_json(out / EVAL_RESULTS, results)
    return EvalReport(out, results)


def abstention_block(runs: Mapping[str, Any], base_v: Variant | None, settings: EvalSettings, out: Path,
                     force: bool = False) -> dict[str, Any] | None:
    """The abstention measures (editor.evaluate.abstention) when hneurons_facts ran for base and edited."""
    from .abstention import FACTS_TASK, eval_block

    base_run, edited_run = runs.get("base"), runs.get("edited")
    if base_run is None or edited_run is None or FACTS_TASK not in base_run.leaf_tasks() \
            or FACTS_TASK not in edited_run.leaf_tasks():
        return None
    return eval_block(base_run.folder, edited_run.folder, out, n_boot=settings.ci_iters,
                      seed=settings.ci_seed, lm=base_v.lm if base_v else None, detector=settings.detector, force=force)


def known_facts_manager(base: LoadedModel, settings: EvalSettings, out: Path):
    """The task manager the variants run with: with the base model's known facts as task metadata when a
    bundled behaviour task is selected (editor.evaluate.known), and the base model's own first answers when a
    two-pass task is (sycophancy_eval: editor.evaluate.two_pass), else the plain one. Returns (manager, file)."""
    plain = task_manager(settings)
    known = write_known_facts(base, settings, out, plain)
    metadata = {"known_facts": str(known.resolve())} if known else {}
    metadata.update(first_answers_metadata(base, settings, out, plain))
    return (task_manager(settings, metadata) if metadata else plain), known


def known_facts_summary(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    doc = read_json(path, "known facts")
    return {"file": path.name, "sha256": sha256_file(path), "splits": doc["splits"], "counts": doc["counts"]}


def check_out(out: Path, settings: EvalSettings, overwrite: bool, name: str = EVAL_RESULTS,
              what: str = "results") -> None:
    """Refuse to mix results of other tasks / limit / seeds into ``out`` unless overwriting."""
    check_no_outside_links(out)
    existing = out / name
    if existing.is_file() and not overwrite:
        previous = read_json(existing, f"previous {what}").get("settings", {})
        if {k: previous.get(k) for k in ("tasks", "limit", "seeds")} != {
                "tasks": list(settings.tasks), "limit": settings.limit, "seeds": list(settings.seeds)}:
            raise OutputExistsError(f"{existing} holds {what} of other settings (tasks/limit/seeds); pass "
                                    f"--overwrite to replace them, or choose another --out")


def _kl_block(base_v: Variant, edited_v: Variant, controls: Sequence[Variant], settings: EvalSettings,
              folder: Path) -> dict[str, Any]:
    seqs = kl_sequences(base_v.lm, settings)
    per_variant = kl_divergences(base_v, [edited_v, *controls], seqs, settings.batch_size)
    write_kl_files(folder, seqs, base_v.lm.tokenizer, per_variant)
    block = kl_summary(per_variant[edited_v.name], settings.ci_iters, settings.ci_seed)
    block.update(direction="KL(base || edited), nats per position, mean over positions then prompts",
                 n_positions=sum(len(s) for s in seqs.sequences), prompts_file=portable_path(settings.kl_prompts),
                 prompts_sha256=sha256_file(settings.kl_prompts), new_tokens=settings.kl_new_tokens,
                 chat_template=settings.chat_for(base_v.lm.tokenizer), control=None)
    if controls:
        means = [float(np.mean(per_variant[c.name])) for c in controls]
        block["control"] = spread(means) | {"seeds": {str(c.seed): m for c, m in zip(controls, means)}}
    return block


def _results_doc(base_v, edited_v, controls, settings, runs, rows, kl, alpha, neuron_info, metadata) -> dict[str, Any]:
    ref = runs.get("edited") or runs.get("base")
    tasks = {t: {"split": ref.split_of(t), "n_samples": ref.results.get("n-samples", {}).get(t),
                 "version": ref.results.get("versions", {}).get(t),
                 "output_type": ref.results.get("configs", {}).get(t, {}).get("output_type")}
             for t in ref.leaf_tasks()}
    commands = {
        "base": lm_eval_command(base_v, settings, "lm_eval_cli/base", metadata) if base_v else None,
        "edited": (lm_eval_command(edited_v, settings, "lm_eval_cli/edited", metadata)
                   if edited_v and edited_v.kind != "hooks"
                   else HOOKS_NOTE if edited_v else None),
        "controls": HOOKS_NOTE if controls else None,
    }
    described = settings.describe()
    described["apply_chat_template"] = settings.chat_for((edited_v or base_v).lm.tokenizer)
    described["alpha"] = alpha
    described["kl"] = {"enabled": settings.kl, "prompts": portable_path(settings.kl_prompts),
                       "max_prompts": settings.kl_max_prompts, "new_tokens": settings.kl_new_tokens}
    return {
        "format": EVAL_FORMAT,
        "models": {"base": base_v.describe() if base_v else None, "edited": edited_v.describe() if edited_v else None,
                   "controls": [c.describe() for c in controls]},
        "settings": described,
        "tasks": tasks,
        "metrics": rows,
        "kl": kl,
        "lm_eval_commands": commands,
        "provenance": provenance(),
    }


# ========================================================================================== rendering


