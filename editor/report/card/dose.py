"""The values of the card's Dose-response section, from ``dose_response.json`` (format ``hneurons.dose_response/1``,
:mod:`editor.evaluate.dose`): what was run, the slope table of the tasks' primary metrics, a verdict computed from
the Holm-adjusted p-values (and, when nothing is significant, the CI widths that bound what was not measured),
the KL per alpha, and the slope figures (``dose_slopes.png``, ``dose_counts.png`` when neuron counts were run).

Which rows: the rows marked ``primary`` (one declared metric per task, ``metadata.primary_metric`` in its YAML),
with ``p_holm_primary`` (Holm across the primary metrics: the headline is not a multiple-comparison winner);
when no task declares one, every row with ``p_holm`` (Holm across all rows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .figures import Plots, image
from .inputs import CardInputs, metric_label
from .text import ci, finite, fmt, md_text, plural

LEVEL = 0.05  # the dose report's significance level (editor.evaluate.dose.holm_rows)


def dose(inputs: CardInputs, plots: Plots) -> dict | None:
    """The section's values; None without a dose-response report."""
    if inputs.dose is None:
        return None
    doc = inputs.dose.doc
    rows = [r for r in doc["rows"] if isinstance(r, dict)]
    h = h_set(doc)
    primary = [r for r in rows if r.get("primary")]
    shown, p_key = (primary, "p_holm_primary") if primary else (rows, "p_holm")
    where = f"dose-response report {inputs.dose.path}"
    images = []
    slopes = plots.add_copy(inputs.dose.folder, (doc.get("files") or {}).get("slopes"), where)
    if slopes:
        images.append(image(slopes, "dose-response slopes per unit alpha: H-Neurons with 95% CIs, matched random "
                                    "sets as grey points"))
    counts = _counts(doc, plots, inputs.dose.folder, where)
    if counts and counts["image"]:
        images.append(counts["image"])
    return {"run": _what_ran(doc, rows), "rows": [_cells(r, h, p_key) for r in shown],
            "family": _family(doc, rows, primary), "verdict": _verdict(shown, p_key, rows, primary),
            "kl": _kl(doc, h), "counts": counts["text"] if counts else None, "images": images}


def h_set(doc: Mapping[str, Any]) -> str:
    """The name of the H-Neuron set in the report (``sets`` entry of kind ``h_neurons``; "H" in hneurons/1)."""
    return next((str(s.get("name")) for s in doc.get("sets") or [] if isinstance(s, dict)
                 and s.get("kind") == "h_neurons"), "H")


def count_text(n: Any) -> str:
    return str(n) if isinstance(n, int) and not isinstance(n, bool) else "n/a"


def p_text(p: Any) -> str:
    if not finite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def rank_text(rank: Mapping[str, Any] | None) -> str:
    rank = rank or {}
    return f"{rank['rank']:g} of {count_text(rank.get('of'))}" if finite(rank.get("rank")) else "n/a"


def _cells(row: Mapping[str, Any], h: str, p_key: str) -> list[str]:
    """task | metric | better | n | H slope [95% CI] | random slope mean (sd) | H - random [95% CI] | p | rank."""
    hs = (row.get("sets") or {}).get(h) or {}
    rnd, diff = row.get("random") or {}, row.get("h_minus_random") or {}
    h_cell = fmt(hs.get("slope"), signed=True) + (f" {ci(hs['slope_ci95'], signed=True)}" if hs.get("slope_ci95")
                                                  else "")
    sd = f" ({fmt(rnd['slope_sd'])})" if finite(rnd.get("slope_sd")) else ""
    d_cell = fmt(diff.get("slope_difference"), signed=True) + (f" {ci(diff['ci95'], signed=True)}" if diff.get("ci95")
                                                               else "")
    direction = {True: "higher", False: "lower"}.get(row.get("higher_is_better"), "unknown")
    return [md_text(row["task"]), md_text(metric_label(row)), direction, count_text(row.get("n")),
            h_cell, fmt(rnd.get("slope_mean"), signed=True) + sd, d_cell, p_text(diff.get(p_key)),
            rank_text(row.get("h_rank"))]


def _what_ran(doc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    settings = doc.get("settings") or {}
    neurons = doc.get("neurons") or {}
    randoms = [s for s in doc.get("sets") or [] if isinstance(s, dict) and s.get("kind") == "random_matched"]
    k = len(randoms) or int(settings.get("controls") or 0)
    grid = ", ".join(f"{a:g}" for a in doc["grid"] if finite(a))
    tasks = sorted({str(r["task"]) for r in rows})
    splits = sorted({str(s) for s in (doc.get("splits") or {}).values() if s})
    ns = sorted({r["n"] for r in rows if isinstance(r.get("n"), int)})
    n_text = ("n/a" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]} to {ns[-1]}")
    limit = settings.get("limit")
    items = (f"at most {md_text(limit)} items per task" if limit else "every item of each task's split")
    if settings.get("known_only"):
        known = "; behaviour tasks scored on the facts the base model knows only (known\\_only)"
    elif doc.get("known_facts"):
        known = "; behaviour tasks scored on every item, known facts or not (known\\_only off)"
    else:
        known = ""
    prov = doc.get("provenance") or {}
    created = str(prov.get("created") or "")[:10]
    version = (prov.get("packages") or {}).get("hneurons")
    when = " ".join(p for p in (f"on {md_text(created)}" if created else "",
                                f"with hneurons {md_text(version)}" if version else "",
                                f"in {doc['wall_time_s']:.0f} s" if finite(doc.get("wall_time_s")) else "") if p)
    return (f"`hneurons dose-response` scaled the {plural(int(neurons.get('count') or 0), 'H-Neuron')} and "
            f"{plural(k, 'random-neuron set')} matched to them per layer by alpha = {grid} (1 = the unedited model, "
            f"scored once for every set), as run-time hooks on the base model, on {plural(len(tasks), 'task')} "
            f"({md_text(', '.join(splits) or 'split not recorded')} split; {items}, n = {n_text} per task"
            f"{known}).{f' Run {when}.' if when else ''} Slopes are per unit alpha (least squares over the grid, 95% "
            f"bootstrap CIs over items); H - random has a CI that includes the between-set variance; rank 1 = the "
            f"H-Neurons' slope is the largest of the {k + 1} sets.")


def _family(doc: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], primary: Sequence[Mapping[str, Any]]) -> str:
    """Which rows the table shows and which Holm family its p-values are from."""
    if not primary:
        return (f"No task declares a primary metric, so every row is shown; p: Holm-adjusted across all "
                f"{plural(len(rows), 'row')}.")
    without = sorted({str(r["task"]) for r in rows} - {str(r["task"]) for r in primary})
    text = (f"One row per task: its declared primary metric; p: Holm-adjusted across the "
            f"{plural(len(primary), 'primary metric')}.")
    if without:
        text += (f" Tasks without a primary metric ({md_text(', '.join(without))}) are not in the table; every row is "
                 f"in dose\\_response.json.")
    return text


def _row_name(row: Mapping[str, Any]) -> str:
    return f"{md_text(row['task'])} {md_text(metric_label(row))}"


def _significant(rows: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if finite((r.get("h_minus_random") or {}).get(key))
            and r["h_minus_random"][key] <= LEVEL]


def _verdict(shown: Sequence[Mapping[str, Any]], p_key: str, rows: Sequence[Mapping[str, Any]],
             primary: Sequence[Mapping[str, Any]]) -> str:
    family = f"the {plural(len(shown), 'primary metric')}" if primary else f"all {plural(len(shown), 'row')}"
    tested = [r for r in shown if finite((r.get("h_minus_random") or {}).get(p_key))]
    if not tested:
        return ("No row has a p-value (none is a mean of per-item values), so this run cannot say whether the "
                "H-Neurons' slope differs from random neurons'.")
    significant = _significant(shown, p_key)
    if significant:
        parts = "; ".join(_direction(r) for r in significant)
        text = (f"After Holm correction across {family}, {len(significant)} of {len(tested)} H-minus-random slopes "
                f"{'is' if len(significant) == 1 else 'are'} significant (p <= {LEVEL:g}): {parts}.")
    else:
        text = (f"No H-minus-random slope is significant after Holm correction across {family} (every adjusted "
                f"p > {LEVEL:g}): on these items the H-Neurons' dose-response cannot be told from that of random "
                f"neurons matched per layer. This does not show that there is no effect: smaller effects are not "
                f"measured here. {_widths(tested)}")
    if primary and len(rows) > len(primary):
        others = [r for r in rows if r.get("h_minus_random", {}).get("significant")]
        text += (f" Across all {plural(len(rows), 'row')} of the report (Holm over every row), {len(others)} "
                 f"{'is' if len(others) == 1 else 'are'} significant"
                 + (f": {'; '.join(_row_name(r) for r in others)}." if others else "."))
    return text


def _direction(row: Mapping[str, Any]) -> str:
    diff = row["h_minus_random"]
    d = diff.get("slope_difference")
    way = ("rises with alpha more than under random neurons (suppressing the H-Neurons lowers it)"
           if finite(d) and d > 0 else
           "falls with alpha more than under random neurons (suppressing the H-Neurons raises it)")
    better = {True: ", higher is better", False: ", lower is better"}.get(row.get("higher_is_better"), "")
    return (f"{_row_name(row)} {way}{better}: H - random {fmt(d, signed=True)} {ci(diff.get('ci95'), signed=True)} "
            f"per unit alpha")


def _widths(rows: Sequence[Mapping[str, Any]]) -> str:
    """The narrowest and widest 95% CI of H - random: what this run could and could not resolve. A zero-width
    interval (the same slope difference on every item and for every random set) bounds nothing and is named apart."""
    widths, flat = [], []
    for r in rows:
        interval = r["h_minus_random"].get("ci95")
        if isinstance(interval, list) and len(interval) == 2 and all(finite(v) for v in interval):
            width = interval[1] - interval[0]
            (widths if width > 0 else flat).append((width, r))
    flat_text = (f" Zero-width intervals, which bound nothing (the H-minus-random slope was the same on every item and "
                 f"for every random set; the metric did not move): {'; '.join(_row_name(r) for _, r in flat)}."
                 if flat else "")
    if not widths:
        return ("No row has a CI of nonzero width for H - random." + flat_text if flat
                else "No row has a CI for H - random.")
    widths.sort(key=lambda wr: wr[0])
    (lo, narrow), (hi, wide) = widths[0], widths[-1]
    if len(widths) == 1:
        return (f"The 95% CI of H - random is {fmt(lo)} wide per unit alpha ({_row_name(narrow)}): slope "
                f"differences smaller than about half that width could not be told from zero.{flat_text}")
    return (f"The 95% CIs of H - random are {fmt(lo)} wide per unit alpha at the narrowest ({_row_name(narrow)}) and "
            f"{fmt(hi)} at the widest ({_row_name(wide)}): slope differences smaller than about half these widths "
            f"could not be told from zero.{flat_text}")


def _kl(doc: Mapping[str, Any], h: str) -> str | None:
    """Mean KL(base || edited) per alpha, H-Neurons and the random sets' mean."""
    kl = doc.get("kl")
    if not isinstance(kl, dict) or not isinstance(kl.get("mean_per_alpha"), dict):
        return None
    grid, per = doc["grid"], kl["mean_per_alpha"]

    def series(values: Sequence[Any]) -> str:
        return ", ".join(f"{fmt(v, 4)} at {a:g}" for a, v in zip(grid, values) if finite(a))

    text = (f"Mean KL(base || edited) on {count_text(kl.get('n_prompts'))} neutral prompts, nats per position, at each "
            f"alpha: H-Neurons {series(per.get(h) or [])}")
    randoms = [v for name, v in per.items() if name != h and isinstance(v, list) and len(v) == len(grid)]
    if randoms:
        means = [sum(col) / len(col) if all(finite(x) for x in col) else None for col in zip(*randoms)]
        text += f"; random sets (mean of {len(randoms)}) {series(means)}"
    return text + "."


def _counts(doc: Mapping[str, Any], plots: Plots, folder: Path, where: str) -> dict | None:
    """The neuron-count dimension (--neuron-sets): which counts were run, and dose_counts.png."""
    block = doc.get("neuron_count")
    if not isinstance(block, dict):
        return None
    sets = {name: s for name, s in (block.get("sets") or {}).items() if isinstance(s, dict)}
    listed = ", ".join(f"{md_text(name)}: {count_text(s.get('count'))}" for name, s in
                       sorted(sets.items(), key=lambda kv: kv[1].get("count") or 0))
    rel = plots.add_copy(folder, block.get("figure"), where)
    text = (f"Neuron count: the same dose-response was run for larger sets along locate's regularisation path, each "
            f"with its own matched random sets ({listed} neurons); ")
    text += ("the figure below shows the slopes against the number of neurons (the primary metrics where tasks "
             "declare one)." if rel else
             f"its figure ({md_text(block.get('figure') or 'dose_counts.png')}) was not found beside the report.")
    return {"text": text, "image": image(rel, "dose-response slope vs neuron count, H-Neurons and matched random sets")
            if rel else None}

