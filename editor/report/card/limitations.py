"""The Limitations section: caveats computed from the numbers (what got worse, what a random control explains as
well, small samples, multiple testing, detection quality, model size, task coverage), one bullet each."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ...formats import PROBE
from .constants import BUNDLED_TASKS, SMALL_SAMPLE
from .inputs import CardInputs, metric_label, outcome
from .text import ci, finite, fmt, human_count, md_text, plural

Rows = Sequence[Mapping[str, Any]]


def limitations(inputs: CardInputs) -> list[str]:
    """The bullets, in the order the card lists them."""
    rows = [r for r in inputs.metric_rows if finite(r.get("delta"))]
    bullets = [*_worse(rows), *_against_control(rows), *_unqualified(rows), *_small_samples(rows),
               *_multiple_testing(rows), *_kl_shift(inputs), *_detection_limits(inputs), _size_caveat(inputs),
               _task_coverage(inputs)]
    if (inputs.identity.get("source") or {}).get("kind") in ("alias", "gguf"):
        bullets.append("The source is a quantised GGUF build (dequantised for editing): numbers for the full-precision "
                       "Hub original can differ.")
    return bullets


def _names(rows: Rows) -> str:
    return ", ".join(f"{md_text(r['task'])} {md_text(metric_label(r))}" for r in rows)


def _worse(rows: Rows) -> list[str]:
    worse = [r for r in rows if outcome(r) == "worse"]
    if worse:
        return ["**Got significantly worse**: " + "; ".join(
            f"{md_text(r['task'])} {md_text(metric_label(r))} {fmt(r['base'])} -> {fmt(r['edited'])} "
            f"({fmt(r['delta'], signed=True)} {ci(r.get('delta_ci95'), signed=True)})" for r in worse) + "."]
    if rows:
        return ["No metric got significantly worse at these sample sizes; that is not evidence that none did."]
    return []


def _against_control(rows: Rows) -> list[str]:
    out = []
    unclear = [r for r in rows if r.get("control") and r.get("edited_minus_control_significant") is not True]
    if unclear:
        out.append("**Not distinguishable from the random-neuron control** (edited - control CI includes 0, or no "
                   "CI): " + _names(unclear) + ". For these, scaling any neurons this way changes the numbers about "
                   "as much.")
    if rows and not any(r.get("control") for r in rows):
        out.append("The evaluation ran no random-neuron control, so the deltas are not compared with scaling "
                   "arbitrary neurons.")
    return out


def _unqualified(rows: Rows) -> list[str]:
    """Metrics without a CI, and metrics whose better direction lm-eval does not report."""
    out = []
    no_ci = [r for r in rows if not r.get("delta_ci95")]
    if no_ci:
        out.append("No confidence interval (not a mean of per-item values): " + _names(no_ci) + ".")
    unknown = [r for r in rows if r.get("higher_is_better") is None]
    if unknown:
        out.append("Direction unknown (lm-eval reports no higher_is_better): " + _names(unknown) + ".")
    return out


def _small_samples(rows: Rows) -> list[str]:
    small = [r for r in rows if isinstance(r.get("n"), int) and r["n"] < SMALL_SAMPLE]
    if not small:
        return []
    widths = [r["delta_ci95"][1] - r["delta_ci95"][0] for r in small if r.get("delta_ci95")]
    return [f"**Small samples**: {plural(len(small), 'metric')} rest on fewer than {SMALL_SAMPLE} items "
            f"(smallest n = {min(r['n'] for r in small)})"
            + (f"; their CIs are up to {max(widths):.3f} wide" if widths and max(widths) > 0 else "")
            + ": effects smaller than that cannot be seen."]


def _multiple_testing(rows: Rows) -> list[str]:
    if len(rows) <= 1:
        return []
    return [f"{len(rows)} metrics are tested at 95% each without correction: about "
            f"{0.05 * len(rows):.1f} significant result(s) are expected by chance alone."]


def _kl_shift(inputs: CardInputs) -> list[str]:
    kl = (inputs.eval.doc.get("kl") or {}) if inputs.eval else {}
    control_kl = (kl.get("control") or {}).get("mean")
    if not (finite(kl.get("mean")) and finite(control_kl) and kl["mean"] > control_kl):
        return []
    return [f"The edit shifts next-token distributions on neutral prompts more than the random control "
            f"(KL {fmt(kl['mean'], 4)} vs {fmt(kl['control']['mean'], 4)} nats)."]


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
    size = f"{human_count(params)} parameters, " if params else ""
    return (f"Model size: this {md_text(inputs.identity.get('model_type'))} model has {size}"
            f"{inputs.identity['num_layers']} layers x {inputs.identity['d_ff']} FFN neurons; the paper located "
            f"H-Neurons in 4B-70B models. Whether the effect carries over to this size is what the numbers above "
            f"measure, no more.")


def _parameter_count(inputs: CardInputs) -> int | None:
    """From the safetensors headers of a weights-mode edit (no tensor is read)."""
    if inputs.mode != "weights":
        return None
    from ...model.checkpoint import read_safetensors_header

    total = 0
    for name in inputs.edit["files"]:
        if name.endswith(".safetensors") and name != PROBE:
            header, _ = read_safetensors_header(inputs.folder / name)
            for key, info in header.items():
                if key != "__metadata__":
                    total += math.prod(info.get("shape") or [1])
    return total or None


def _task_coverage(inputs: CardInputs) -> str:
    tasks = sorted({str(r["task"]) for r in inputs.metric_rows})
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
