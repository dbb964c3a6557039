"""The comparison for people: the plain-text table ``hneurons eval`` prints and the PNG of deltas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import EVAL_PLOT
from ..plots import figure, save_png
from ..text import fmt


def render_table(results: Mapping[str, Any]) -> str:
    """The comparison as a plain-text table (what ``hneurons eval`` prints)."""
    header = ["task", "metric", "dir", "n", "base", "edited", "delta", "95% CI", "p Holm", "sig", "MDE",
              "control d (sd)", "edit-ctrl"]
    lines = [header]
    for row in results["metrics"]:
        direction = {True: "up", False: "down", None: "?"}[row["higher_is_better"]]
        ci = row["delta_ci95"]
        ctrl = row.get("control")
        ctrl_text = "-"
        if ctrl and row["base"] is not None:
            sd = f" ({ctrl['std']:.3f})" if ctrl.get("std") is not None else ""
            ctrl_text = f"{ctrl['mean'] - row['base']:+.3f}{sd}"
        edit_ctrl = fmt(row.get("edited_minus_control"), signed=True, missing="-")
        if row.get("edited_minus_control_significant"):
            edit_ctrl += "*"
        metric = ("* " if row.get("primary") else "") + row["metric"]
        lines.append([row["task"], metric + ("" if row["filter"] == "none" else f" [{row['filter']}]"),
                      direction, str(row["n"] if row["n"] is not None else "-"), fmt(row["base"], missing="-"),
                      fmt(row["edited"], missing="-"), fmt(row["delta"], signed=True, missing="-"),
                      f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-",
                      _p(row.get("p_holm")), {True: "yes", False: "no", None: "-"}[row["significant"]],
                      fmt(row.get("mde"), missing="-"), ctrl_text, edit_ctrl])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    kl = results.get("kl")
    if kl:
        ci = kl["ci95"]
        line = (f"KL(base || edited) on {kl['n_prompts']} neutral prompts: {kl['mean']:.4f} nats"
                + (f" [95% CI {ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""))
        if kl.get("control"):
            line += f"; random control: {kl['control']['mean']:.4f}"
        text.append(line)
    if results["metrics"]:
        text.append("* = the task's primary metric (its headline); p Holm = p-value Holm-adjusted across the rows "
                    "(McNemar mid-p for 0/1 metrics, paired t for margins); sig = p Holm <= 0.05; MDE = the change "
                    "detectable with 80% power")
    if any(r.get("control") for r in results["metrics"]):
        text.append("control d = mean control - base (sd over seeds); edit-ctrl = edited - mean control "
                    "(* = Holm-adjusted p <= 0.05, between-set variance included)")
    return "\n".join(text)


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def plot_deltas(out: Path, rows: Sequence[Mapping[str, Any]], name: str = EVAL_PLOT) -> str | None:
    """Horizontal bars: edited - base per metric with its 95% CI; diamonds: each control's delta."""
    rows = [r for r in rows if r["delta"] is not None]
    if not rows:
        return None
    plt, fig, ax = figure(7.5, 0.45 * len(rows) + 1.4)
    ys = np.arange(len(rows))[::-1]
    deltas = [r["delta"] for r in rows]
    errs = np.array([[r["delta"] - r["delta_ci95"][0], r["delta_ci95"][1] - r["delta"]] if r["delta_ci95"]
                     else [0.0, 0.0] for r in rows]).T
    # an interval's end can sit a rounding error beside the point (1/24 * (2 * 0 - 1) vs a difference of means,
    # when every changed item moved one way): matplotlib refuses negative error bars
    errs = np.clip(errs, 0.0, None)
    colors = ["#c0392b" if r["significant"] else "#95a5a6" for r in rows]
    ax.barh(ys, deltas, xerr=errs, color=colors, ecolor="#2c3e50", capsize=3, height=0.6, label="edited - base")
    labelled = False
    for y, r in zip(ys, rows):
        for value in (r.get("control") or {}).get("seeds", {}).values():
            ax.scatter([value - r["base"]], [y], marker="D", s=18, color="#2980b9", zorder=3,
                       label=None if labelled else "random control - base")
            labelled = True
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{r['task']} {r['metric']} ({'up' if r['higher_is_better'] else 'down'} is better)"
                       for r in rows], fontsize=8)
    ax.set_xlabel("delta (95% CI; red = significant after Holm)")
    ax.legend(loc="best", fontsize=8)
    return save_png(plt, fig, out / name)
