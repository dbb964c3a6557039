"""The alpha sweep: evaluate H-Neuron scaling over a grid of alphas and choose one under retention constraints.

Every grid point is a run-time edit of the same loaded base model (forward pre-hooks, no checkpoint is
written), evaluated with the same lm-eval runner as ``hneurons eval`` (:mod:`editor.evaluate.stage`), together with
random-neuron controls: for each control seed one random set matched to the H-Neurons per layer (the same
count in each layer, none of them H-Neurons; uniform over all layers with ``match_layers`` false), fixed across the grid and scaled by the same alpha. alpha = 1 is
the unedited model: it is evaluated once without hooks and is also the control's value there (scaling any
neuron by 1 changes nothing).

Choosing alpha (hneurons' definitions)
--------------------------------------
* Reference: alpha = 1. For each metric, the improvement at alpha is (value - reference value), signed so that
  positive is better by lm-eval's ``higher_is_better``.
* **Score** of an alpha = the mean over *targets* of their improvement. A target is a task family: a
  generative task and its multiple-choice twin (``hneurons_false_premise`` and ``hneurons_false_premise_mc``)
  are one target (their metrics are averaged first), so no behaviour counts twice. Default target metrics:
  facts / nonexist hallucination rate, premise rejection, misleading-context adoption, sycophancy flips and
  the twins' accuracies (configurable); rates are fractions, so the score is in absolute points / 100.
  **Control score**: the same for the mean of the matched random sets (``controls``, default 3) at that alpha.
* **Constraints**: for every *knowledge* metric (``hneurons_knowledge_mc`` acc and ``hneurons_facts``
  accuracy by default), the 95% upper bound of its drop against alpha = 1 (the paired CI of the change:
  McNemar mid-p for 0/1 metrics, paired t otherwise; the point drop for a metric that is not an item mean)
  is at most ``max_knowledge_drop`` (default 0.02 = 2 points), and the mean KL(base || edited) on the neutral
  prompts is at most ``max_kl`` (default 0.1 nats).
* The chosen alpha is the alpha != 1 that meets the constraints, has a positive score **and beats the control
  score**, with the largest score - control score (ties: the one closest to 1, the smaller edit). When none
  qualifies the result says which rule failed ("no alpha meets the constraints" with the closest candidates,
  "none reduces hallucination", "no alpha beats its matched random-neuron control", or no control run) and
  ``chosen.alpha`` is null; a recipe with ``edit.alpha: auto`` then stops before the edit stage (an explicit
  ``edit.alpha`` number edits anyway).

Metric names are ``TASK:METRIC``. A task name matches its split variants too: ``hneurons_facts`` matches
``hneurons_facts_val`` / ``hneurons_facts_validation`` (so the defaults work on validation tasks).

Honest selection: alpha is a hyperparameter, so the sweep must not score on the split the final report uses.
Before running, the sweep reads each task's split (``metadata.split`` in the task YAML, else its data file
names, else lm-eval's split name) and refuses tasks on the ``test`` split unless ``allow_test_split`` is set;
``sweep.json`` records the split of every task. The default tasks (``DEFAULT_SWEEP_TASKS``) are the group
``hneurons_val``: the validation variants of the bundled tasks (eval/README.md).

Output folder
-------------
* ``sweep.json`` (format ``hneurons.sweep/1``)::

    {"format": "hneurons.sweep/1", "model": identity, "neurons": {sha256, count, per_layer, source_file},
     "grid": [alphas], "reference_alpha": 1.0, "splits": {TASK: split},
     "settings": {...as eval_results.json..., "control_seeds": [..]},
     "constraints": {"max_knowledge_drop", "max_kl", "knowledge": [used TASK:METRIC], "targets": [used],
                     "missing": [requested but not reported]},
     "points": [{"alpha", "metrics": [{"task", "metric", "filter", "higher_is_better", "value", "delta",
                                       "delta_ci95", "control", "control_seeds": {SEED: value}}],
                 "kl": {"mean", "ci95", "n_prompts"}, "control_kl": mean | null,
                 "knowledge_drop": {TASK:METRIC: drop}, "knowledge_drop_upper": {TASK:METRIC: 95% bound},
                 "max_knowledge_drop", "max_knowledge_drop_upper", "score", "control_score", "beats_control",
                 "feasible", "violations": [text]}],
     "chosen": {"alpha": A | null, "reason": text, "score", "control_score"},
     "closest": [{"alpha", "violations", "score"}],
     "files": {"plot": "sweep.png"}, "provenance": {...}}

* ``lm_eval/alpha_<A>/`` and ``lm_eval/alpha_<A>_control_seed<S>/`` (lm-eval output per point, resumable),
  ``kl/`` (continuations and per-prompt KL), ``sweep.png`` (each target / knowledge metric and the KL vs
  alpha, H-Neurons and random control; the constraints and the chosen alpha marked).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import atomic_write_json, provenance, sha256_file
from ..errors import InputError
from ..formats import SWEEP_FORMAT, SWEEP_PLOT, SWEEP_REPORT
from ..locking import output_lock
from ..model.loading import LoadedModel, LoadOptions, load_model
from ..model.neuron_set import NeuronSet, as_neuron_set
from ..paths import portable_path
from ..plots import figure, save_png
from ..text import fmt
from .compare import paired_stats
from .kl import kl_divergences, kl_sequences, kl_summary, write_kl_files
from .lm_eval_run import (
    LmEvalRun,
    prepare_environment,
    run_lm_eval,
    task_manager,
    task_split,
)
from .settings import EvalSettings, SweepSettings
from .stage import check_out, known_facts_manager, known_facts_summary, preflight
from .variants import Variant, control_alphas, random_control

log = logging.getLogger(__name__)

REFERENCE_ALPHA = 1.0
_SPLIT_SUFFIX = re.compile(r"_(val|validation|dev|test)$")
_TWIN_SUFFIX = re.compile(r"_mc$")


def parse_metric_spec(spec: str) -> tuple[str, str]:
    task, sep, metric = str(spec).partition(":")
    if not sep or not task or not metric:
        raise InputError(f"metric {spec!r} must be written TASK:METRIC, e.g. hneurons_facts:hallucination_rate")
    return task, metric


def task_matches(wanted: str, task: str) -> bool:
    return task == wanted or _SPLIT_SUFFIX.sub("", task) == wanted


def target_group(task: str) -> str:
    """The target a task measures: a generative task and its multiple-choice twin (``X`` and ``X_mc``, any split)
    are one target, so neither counts twice in the score."""
    return _TWIN_SUFFIX.sub("", _SPLIT_SUFFIX.sub("", task))


# ====================================================================================== the per-point table
Key = tuple[str, str, str]  # task, metric, filter


@dataclass
class Point:
    """One alpha: metric values, deltas against alpha = 1, the control's values, KL."""

    alpha: float
    values: dict[Key, float]
    higher_is_better: dict[Key, bool | None]
    delta_ci95: dict[Key, list[float] | None] = field(default_factory=dict)
    control: dict[Key, dict[str, float]] = field(default_factory=dict)  # seed -> value
    kl: dict[str, Any] | None = None
    control_kl: float | None = None


def point_from_runs(alpha: float, run: LmEvalRun, reference: LmEvalRun, controls: Mapping[int, LmEvalRun],
                    ci_iters: int, ci_seed: int, method: str = "auto") -> Point:
    point = Point(alpha, {}, {})
    for task in run.leaf_tasks():
        for metric, filt in run.metric_keys(task):
            key = (task, metric, filt)
            point.values[key] = run.value(task, metric, filt)
            point.higher_is_better[key] = run.higher_is_better(task, metric)
            point.control[key] = {str(s): c.value(task, metric, filt) for s, c in controls.items()}
            point.delta_ci95[key] = _delta_ci(run, reference, key, ci_iters, ci_seed, method)
    return point


def _delta_ci(run: LmEvalRun, reference: LmEvalRun, key: Key, iters: int, seed: int, method: str = "auto"
              ) -> list[float] | None:
    task, metric, filt = key
    a, b = reference.per_item(task, metric, filt), run.per_item(task, metric, filt)
    if not a or not b or set(a) != set(b):
        return None
    mean_ok = all(math.isclose(float(np.mean(list(items.values()))), r.value(task, metric, filt) or 0.0,
                               abs_tol=1e-9) for items, r in ((a, reference), (b, run)))
    if not mean_ok:
        return None
    docs = sorted(a)
    if run is reference:
        return [0.0, 0.0]
    return paired_stats(np.array([a[d] for d in docs]), np.array([b[d] for d in docs]), method, iters, seed)["ci"]


def resolve_specs(specs: Sequence[str], keys: Sequence[Key]) -> tuple[list[Key], list[str]]:
    """The reported (task, metric, filter) keys each ``TASK:METRIC`` names, and the specs nothing matched."""
    found, missing = [], []
    for spec in specs:
        task, metric = parse_metric_spec(spec)
        hits = [k for k in keys if task_matches(task, k[0]) and k[1] == metric]
        found += [k for k in hits if k not in found]
        if not hits:
            missing.append(spec)
    return found, missing


def _oriented(value: float, reference: float, higher_is_better: bool | None) -> float:
    return (value - reference) if higher_is_better is not False else (reference - value)


def _score(point: Point, reference: Point, keys: Sequence[Key], control: bool = False) -> float | None:
    """Mean over target groups (:func:`target_group`) of the mean improvement of the group's metrics against
    alpha 1; ``control``: the same for the mean of the random sets. Unmeasured (NaN) metrics are left out."""
    groups: dict[str, list[float]] = {}
    for key in keys:
        hib = reference.higher_is_better.get(key)
        value = (np.mean(list(point.control[key].values())) if control and point.control.get(key)
                 else None if control else point.values[key])
        if value is None:
            return None
        ref = reference.values[key]
        if not (math.isfinite(float(value)) and ref is not None and math.isfinite(ref)):
            continue
        groups.setdefault(target_group(key[0]), []).append(_oriented(float(value), ref, hib))
    return float(np.mean([np.mean(g) for g in groups.values()])) if groups else None


def _drop_upper(point: Point, reference: Point, key: Key) -> tuple[float, bool]:
    """The knowledge drop's 95% upper bound (oriented by higher_is_better) from the paired CI of the change, or
    the point drop when there is no CI; and whether it is a bound."""
    drop = -_oriented(point.values[key], reference.values[key], reference.higher_is_better.get(key))
    ci = point.delta_ci95.get(key)
    if not ci:
        return drop, False
    return (-ci[0] if reference.higher_is_better.get(key) is not False else ci[1]), True


def assess(points: Sequence[Point], constraints: SweepSettings, reference_alpha: float = REFERENCE_ALPHA
           ) -> dict[str, Any]:
    """Score every point, check the constraints and choose alpha (see the module docstring)."""
    by_alpha = {p.alpha: p for p in points}
    if reference_alpha not in by_alpha:
        raise InputError(f"the grid must contain alpha = {reference_alpha:g} (the unedited reference)")
    reference = by_alpha[reference_alpha]
    keys = list(reference.values)
    knowledge, missing_k = resolve_specs(constraints.knowledge, keys)
    targets, missing_t = resolve_specs(constraints.targets, keys)
    available = ", ".join(f"{t}:{m}" for t, m, _ in keys)
    if not targets:
        raise InputError(f"none of the target metrics ({', '.join(constraints.targets)}) is among the results "
                         f"({available}); name them with --target TASK:METRIC")
    if not knowledge:
        raise InputError(f"none of the knowledge metrics ({', '.join(constraints.knowledge)}) is among the results "
                         f"({available}); name them with --knowledge TASK:METRIC")
    assessed = [_assess_point(p, reference, knowledge, targets, constraints) for p in points]
    chosen, closest = _choose(assessed, reference_alpha)
    return {"points": assessed, "chosen": chosen, "closest": closest,
            "constraints": {"max_knowledge_drop": constraints.max_knowledge_drop, "max_kl": constraints.max_kl,
                            "knowledge": [f"{t}:{m}" for t, m, _ in knowledge],
                            "targets": [f"{t}:{m}" for t, m, _ in targets], "missing": missing_k + missing_t}}


def _assess_point(point: Point, reference: Point, knowledge, targets, constraints: SweepSettings) -> dict[str, Any]:
    drops = {f"{t}:{m}": -_oriented(point.values[(t, m, f)], reference.values[(t, m, f)],
                                    reference.higher_is_better.get((t, m, f))) for t, m, f in knowledge}
    bounds = {f"{t}:{m}": _drop_upper(point, reference, (t, m, f)) for t, m, f in knowledge}
    kl_mean = 0.0 if point.alpha == reference.alpha else (point.kl or {}).get("mean")
    limit = constraints.max_knowledge_drop
    violations = [f"{name} drops by up to {bound:.3f} (95% upper bound; point {drops[name]:+.3f}) > {limit:g}"
                  if is_bound else f"{name} drops by {bound:.3f} > {limit:g}"
                  for name, (bound, is_bound) in bounds.items() if bound > limit + 1e-12]
    if kl_mean is None:
        violations.append("KL not measured")
    elif kl_mean > constraints.max_kl:
        violations.append(f"mean KL {kl_mean:.4f} > {constraints.max_kl:g} nats")
    excess = sum(max(0.0, b - limit) / max(limit, 1e-9) for b, _ in bounds.values()) + (
        max(0.0, (kl_mean or 0) - constraints.max_kl) / max(constraints.max_kl, 1e-9))
    score, control_score = _score(point, reference, targets), _score(point, reference, targets, control=True)
    return {
        "alpha": point.alpha,
        "metrics": [{"task": t, "metric": m, "filter": f, "higher_is_better": point.higher_is_better.get((t, m, f)),
                     "value": v, "delta": v - reference.values[(t, m, f)], "delta_ci95": point.delta_ci95.get((t, m, f)),
                     "control": (float(np.mean(list(point.control[(t, m, f)].values())))
                                 if point.control.get((t, m, f)) else None),
                     "control_seeds": point.control.get((t, m, f)) or {}}
                    for (t, m, f), v in point.values.items()],
        "kl": point.kl, "control_kl": point.control_kl,
        "knowledge_drop": drops, "max_knowledge_drop": max(drops.values()),
        "knowledge_drop_upper": {name: b for name, (b, _) in bounds.items()},
        "max_knowledge_drop_upper": max(b for b, _ in bounds.values()),
        "score": score, "control_score": control_score,
        "beats_control": (None if score is None or control_score is None else score > control_score + 1e-12),
        "feasible": not violations, "violations": violations, "_excess": excess,
    }


def _choose(assessed: list[dict[str, Any]], reference_alpha: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The feasible alpha != 1 whose score is positive and beats the matched random sets' mean score, best
    first (ties: closest to 1); otherwise None with the reason."""
    others = [p for p in assessed if p["alpha"] != reference_alpha]
    feasible = [p for p in others if p["feasible"]]
    closest = [{"alpha": p["alpha"], "violations": p["violations"], "score": p["score"]}
               for p in sorted(others, key=lambda p: (p["_excess"], -(p["score"] or 0)))[:3] if not p["feasible"]]
    for p in assessed:
        p.pop("_excess")
    none = {"alpha": None, "score": None, "control_score": None}
    if not feasible:
        return none | {"reason": "no alpha meets the constraints (every alpha other than 1 violates the knowledge-drop "
                                 "bound or the KL limit; see 'closest')"}, closest
    improving = [p for p in feasible if (p["score"] or 0) > 0]
    if not improving:
        best = max(feasible, key=lambda p: p["score"] if p["score"] is not None else -math.inf)
        return none | {"reason": f"alphas {', '.join(format(p['alpha'], 'g') for p in feasible)} meet the constraints, "
                                 f"but none reduces hallucination / over-compliance (best score "
                                 f"{fmt(best['score'], signed=True)} at alpha {best['alpha']:g}); the edit does not "
                                 f"help on these tasks"}, closest
    if all(p["control_score"] is None for p in improving):
        return none | {"reason": "no random control was run (controls: 0), so no alpha can be shown to beat "
                                 "random neurons; run the sweep with --controls 3"}, closest
    beating = [p for p in improving if p["beats_control"]]
    if not beating:
        listed = "; ".join(f"alpha {p['alpha']:g}: {fmt(p['score'], signed=True)} vs random "
                           f"{fmt(p['control_score'], signed=True)}" for p in improving)
        return none | {"reason": f"no alpha beats its matched random-neuron control: every alpha that meets the "
                                 f"constraints and improves the targets improves them no more than random neurons "
                                 f"scaled alike ({listed})"}, closest
    best = max(beating, key=lambda p: (p["score"] - p["control_score"], -abs(p["alpha"] - reference_alpha)))
    reason = (f"alpha {best['alpha']:g} meets the constraints (knowledge drop's 95% upper bound "
              f"{best['max_knowledge_drop_upper']:+.3f}) and improves the targets by {best['score']:+.4f} against alpha "
              f"1, more than the matched random sets' mean ({best['control_score']:+.4f})")
    return {"alpha": best["alpha"], "score": best["score"], "control_score": best["control_score"],
            "reason": reason}, closest


# ============================================================================================= running it
@dataclass
class SweepReport:
    out: Path
    results: dict[str, Any]

    @property
    def chosen_alpha(self) -> float | None:
        return self.results["chosen"]["alpha"]

    def summary(self) -> str:
        return render_summary(self.results)


def _folder_name(alpha: float) -> str:
    return f"alpha_{alpha:g}"


def check_splits(settings: EvalSettings, manager, allow_test_split: bool) -> dict[str, str | None]:
    """Each leaf task's split; tasks on the test split are refused (selection must not see test data)."""
    loaded = manager.load(list(settings.tasks))
    splits = {name: task_split(task.config.to_dict() if hasattr(task.config, "to_dict") else vars(task.config))
              for name, task in loaded["tasks"].items()}
    on_test = sorted(t for t, s in splits.items() if s == "test")
    if on_test and not allow_test_split:
        raise InputError(f"the sweep chooses alpha, a hyperparameter, but task(s) {', '.join(on_test)} score the "
                         f"test split; choosing on test data biases the final report. Use the validation variants "
                         f"of the tasks, or pass --allow-test-split if you know what you are doing")
    return splits


def sweep(
    base: str | LoadedModel,
    neurons: Any,
    settings: SweepSettings | None = None,
    *,
    out: str | Path,
    force: bool = False,
    overwrite: bool = False,
    load: LoadOptions | None = None,
    **fields: Any,
) -> SweepReport:
    """Evaluate the neuron set at every alpha of the grid (hooks on one loaded base), choose alpha, plot.

    ``settings`` (:class:`~editor.evaluate.settings.SweepSettings`; its fields may also be given as keywords)
    hold the grid, the evaluation and the rule that chooses alpha; ``load`` how ``base`` is loaded when it is
    a spec. Re-running into the same ``out`` reuses every grid point whose lm-eval results exist with the same
    settings (so changing only the constraints re-decides without re-evaluating); an ``out`` holding a sweep
    of other tasks / limit / seeds is an error unless ``overwrite``.
    """
    settings = SweepSettings.of(settings, **fields)
    grid = _grid(settings.alphas)
    prepare_environment(settings)
    out = Path(out)
    settings = preflight(settings, [base], load)
    with output_lock(out):
        return _sweep(base, neurons, settings, grid, out, force, overwrite, load)


def _sweep(base, neurons, settings: SweepSettings, grid: list[float], out: Path, force: bool, overwrite: bool,
           load: LoadOptions | None) -> SweepReport:
    match_layers, control_seeds = settings.match_layers, settings.control_seeds
    check_out(out, settings, overwrite, SWEEP_REPORT, "a sweep")
    lm = base if isinstance(base, LoadedModel) else load_model(str(base), load)
    nset = _sweep_set(neurons, lm, force)
    splits = check_splits(settings, task_manager(settings), settings.allow_test_split)
    manager, known = known_facts_manager(lm, settings, out)
    controls = {s: random_control(nset, lm.num_layers, lm.d_ff, s, match_layers) for s in control_seeds}
    seqs = kl_sequences(lm, settings)
    base_variant = Variant("alpha_1", lm)
    reference = run_lm_eval(base_variant, settings, out / "lm_eval" / _folder_name(REFERENCE_ALPHA), manager)
    points, kl_values = [], {}
    for alpha in grid:
        run, control_runs, point_kl = reference, {s: reference for s in controls}, {}
        if alpha != REFERENCE_ALPHA:
            variant = Variant(_folder_name(alpha), lm, neurons=nset, alphas=nset.alphas(alpha))
            run = run_lm_eval(variant, settings, out / "lm_eval" / variant.name, manager)
            point_variants = [variant]
            for seed, cset in controls.items():
                cvar = Variant(f"{variant.name}_control_seed{seed}", lm, neurons=cset, seed=seed, match_layers=match_layers,
                               alphas=control_alphas(nset, nset.alphas(alpha), cset, match_layers))
                control_runs[seed] = run_lm_eval(cvar, settings, out / "lm_eval" / cvar.name, manager)
                point_variants.append(cvar)
            point_kl = kl_divergences(base_variant, point_variants, seqs, settings.batch_size)
        point = point_from_runs(alpha, run, reference, control_runs, settings.ci_iters, settings.ci_seed,
                                settings.paired_test)
        if alpha != REFERENCE_ALPHA:
            point.kl = kl_summary(point_kl[_folder_name(alpha)], settings.ci_iters, settings.ci_seed)
            control_means = [float(np.mean(v)) for k, v in point_kl.items() if "_control_seed" in k]
            point.control_kl = float(np.mean(control_means)) if control_means else None
        else:
            point.kl = {"mean": 0.0, "ci95": [0.0, 0.0], "n_prompts": len(seqs.prompts)}
            point.control_kl = 0.0 if controls else None
        points.append(point)
        kl_values.update(point_kl)
    write_kl_files(out / "kl", seqs, lm.tokenizer, kl_values)
    assessed = assess(points, settings)
    results = _sweep_doc(lm, nset, grid, splits, settings, control_seeds, match_layers, assessed)
    results["known_facts"] = known_facts_summary(known)
    results["force"] = {"given": force}  # --force: a neuron set of other weights was accepted
    results["files"] = {"plot": plot_sweep(out, results)}
    atomic_write_json(out / SWEEP_REPORT, results)
    return SweepReport(out, results)


def _grid(alphas: Sequence[float]) -> list[float]:
    grid = sorted({float(a) for a in alphas} | {REFERENCE_ALPHA})
    bad = [a for a in grid if not (math.isfinite(a) and a >= 0)]
    if bad:
        raise InputError(f"alphas must be finite numbers >= 0, got {bad[0]!r}")
    if len(grid) < 2:
        raise InputError("the alpha grid needs at least one alpha other than 1")
    return grid


def _sweep_set(neurons: Any, lm: LoadedModel, force: bool) -> NeuronSet:
    nset = as_neuron_set(neurons)
    if nset.neuron_alpha:
        raise InputError(f"{nset.path or 'the neuron set'} gives {len(nset.neuron_alpha)} neuron(s) their own alpha; "
                         f"the sweep scales every neuron by the grid's alpha. Remove the per-neuron alphas")
    nset.validate(lm, force=force)
    return nset


def _sweep_doc(lm, nset, grid, splits, settings, control_seeds, match_layers, assessed) -> dict[str, Any]:
    described = settings.describe()
    described.update(apply_chat_template=settings.chat_for(lm.tokenizer), control_seeds=list(control_seeds),
                     match_layers=match_layers,
                     kl={"prompts": portable_path(settings.kl_prompts),
                         "prompts_sha256": sha256_file(settings.kl_prompts), "max_prompts": settings.kl_max_prompts,
                         "new_tokens": settings.kl_new_tokens})
    return {
        "format": SWEEP_FORMAT,
        "model": lm.identity(),
        "neurons": {"sha256": nset.sha256, "count": len(nset), "per_layer": {str(k): v for k, v in
                    nset.per_layer().items()}, "source_file": str(nset.path) if nset.path else None},
        "grid": grid,
        "reference_alpha": REFERENCE_ALPHA,
        "splits": splits,
        "settings": described,
        **assessed,
        "provenance": provenance(),
    }


# ============================================================================================== rendering
def render_summary(results: Mapping[str, Any]) -> str:
    """The sweep as text: score, control score, worst knowledge drop, KL and feasibility per alpha."""
    lines = [f"{'alpha':>6}  {'score':>8}  {'control':>8}  {'know.drop':>9}  {'drop<=':>8}  {'KL':>8}  {'ctrl KL':>8}  ok"]
    for p in results["points"]:
        kl = (p.get("kl") or {}).get("mean")
        upper = p.get("max_knowledge_drop_upper", p["max_knowledge_drop"])
        lines.append(f"{p['alpha']:>6g}  {_f(p['score'])}  {_f(p['control_score'])}  {p['max_knowledge_drop']:>+9.3f}  "
                     f"{upper:>+8.3f}  {_f(kl, 4)}  {_f(p['control_kl'], 4)}  "
                     f"{'yes' if p['feasible'] else 'no: ' + '; '.join(p['violations'])}")
    c = results["constraints"]
    lines.append(f"constraints: knowledge drop's 95% upper bound (drop<=) <= {c['max_knowledge_drop']:g} on "
                 f"{', '.join(c['knowledge'])}; mean KL <= {c['max_kl']:g} nats. score = mean improvement over the "
                 f"targets {', '.join(c['targets'])} (a task and its _mc twin are one target); the chosen alpha must "
                 f"beat the matched random sets' score (control)")
    if c["missing"]:
        lines.append(f"not in the results (ignored): {', '.join(c['missing'])}")
    lines.append(f"splits: {', '.join(f'{t}={s}' for t, s in sorted(results['splits'].items()))}")
    chosen = results["chosen"]
    lines.append(("chosen alpha: " + f"{chosen['alpha']:g}" if chosen["alpha"] is not None else "no alpha chosen")
                 + f" - {chosen['reason']}")
    return "\n".join(lines)


def _f(value: float | None, digits: int = 4) -> str:
    return f"{'-':>8}" if value is None else f"{value:>+8.{digits}f}"


def plot_sweep(out: Path, results: Mapping[str, Any], name: str = SWEEP_PLOT) -> str:
    """One panel per target / knowledge metric and one for KL: value vs alpha, H-Neurons and random control."""
    c = results["constraints"]
    wanted = c["knowledge"] + [t for t in c["targets"] if t not in c["knowledge"]]
    panels = wanted + ["KL"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    plt, fig, axes = figure(4.2 * cols, 3.0 * rows, rows=rows, cols=cols, dpi=100)
    alphas = [p["alpha"] for p in results["points"]]
    chosen = results["chosen"]["alpha"]
    for ax, panel in zip(axes.flat, panels):
        if panel == "KL":
            ax.plot(alphas, [(p.get("kl") or {}).get("mean") for p in results["points"]], "o-", color="#c0392b",
                    label="H-Neurons")
            ax.plot(alphas, [p.get("control_kl") for p in results["points"]], "s--", color="#2980b9",
                    label="random control")
            ax.axhline(c["max_kl"], color="grey", ls=":", lw=1, label="limit")
            ax.set_title("mean KL(base || edited), nats", fontsize=9)
        else:
            _metric_panel(ax, panel, results, c)
        if chosen is not None:
            ax.axvline(chosen, color="#27ae60", lw=1, alpha=0.7)
        ax.axvline(1.0, color="black", lw=0.5, alpha=0.4)
        ax.set_xlabel("alpha", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    title = f"alpha sweep ({'chosen alpha ' + format(chosen, 'g') if chosen is not None else 'no alpha chosen'})"
    fig.suptitle(title, fontsize=10)
    return save_png(plt, fig, out / name)


def _metric_panel(ax, spec: str, results: Mapping[str, Any], constraints: Mapping[str, Any]) -> None:
    task, metric = spec.split(":", 1)
    series, control, lows, highs = [], [], [], []
    for p in results["points"]:
        m = next(m for m in p["metrics"] if m["task"] == task and m["metric"] == metric)
        series.append(m["value"])
        control.append(m["control"])
        ci = m["delta_ci95"]
        lows.append(m["value"] - (m["delta"] - ci[0]) if ci else m["value"])
        highs.append(m["value"] + (ci[1] - m["delta"]) if ci else m["value"])
        hib = m["higher_is_better"]
    alphas = [p["alpha"] for p in results["points"]]
    ax.fill_between(alphas, lows, highs, color="#c0392b", alpha=0.15, lw=0)
    ax.plot(alphas, series, "o-", color="#c0392b", label="H-Neurons (95% CI of delta)")
    if any(v is not None for v in control):
        ax.plot(alphas, control, "s--", color="#2980b9", label="random control")
    role = "knowledge" if spec in constraints["knowledge"] else "target"
    ax.set_title(f"{task} {metric} ({role}, {'higher' if hib else 'lower'} is better)", fontsize=8)
