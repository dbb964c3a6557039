"""PNG plots for the reports (matplotlib, headless). Each function returns the file names it wrote."""

from __future__ import annotations

import os
from pathlib import Path

from .formats import PER_LAYER_PLOT

os.environ.setdefault("MPLBACKEND", "Agg")


def figure(width: float = 6.4, height: float = 3.6, rows: int | None = None, cols: int | None = None, dpi: int = 110):
    """A headless figure: (pyplot, figure, axes); with ``rows``/``cols`` a grid of axes (always 2-D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if rows is None and cols is None:
        fig, ax = plt.subplots(figsize=(width, height), dpi=dpi)
    else:
        fig, ax = plt.subplots(rows or 1, cols or 1, figsize=(width, height), dpi=dpi, squeeze=False)
    return plt, fig, ax


def save_png(plt, fig, path: Path) -> str:
    """Lay out, write atomically (a temporary sibling renamed into place) and close; returns the file name. A full
    disk (or read-only file system) is one clear OutputWriteError and leaves no temporary file behind."""
    from .artifacts import reported_write_errors

    fig.tight_layout()
    tmp = path.with_name(".hneurons-tmp-" + path.name)
    try:
        with reported_write_errors(path):
            fig.savefig(tmp, format="png")
            tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path.name


def plot_per_layer(out: Path, neurons: dict, name: str = PER_LAYER_PLOT) -> str:
    plt, fig, ax = figure()
    layers = sorted(int(k) for k in neurons["per_layer"])
    counts = [neurons["per_layer"][str(k)] for k in layers]
    ax.bar(layers, counts, color="#c0392b")
    ax.set_xlabel("layer")
    ax.set_ylabel("H-Neurons")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no fractional ticks
    ax.set_title(f"{neurons['count']} H-Neurons ({neurons['per_mille']:.2f} per mille of "
                 f"{neurons['total_ffn_neurons']:,} FFN neurons)")
    return save_png(plt, fig, out / name)


def plot_path(out: Path, report: dict, name: str = "regularisation_path.png") -> str:
    plt, fig, ax = figure()
    path = report["path"]
    xs = [max(p["n_positive"], 0.8) for p in path]
    ax.plot(xs, [p["val_auroc"] for p in path], marker="o", ms=3, color="#2c3e50")
    chosen = path[report["chosen"]["index"]]
    ax.scatter([max(chosen["n_positive"], 0.8)], [chosen["val_auroc"]], s=80, color="#c0392b", zorder=3,
               label=f"chosen C={chosen['C']:.3g} ({chosen['n_positive']} H-Neurons)")
    ax.set_xscale("log")
    ax.set_xlabel("neurons with positive weight (log)")
    ax.set_ylabel("validation AUROC")
    ax.set_title("regularisation path (C chosen on validation)")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(plt, fig, out / name)


def plot_roc(out: Path, report: dict, name: str = "roc_test.png") -> str:
    plt, fig, ax = figure(4.8, 4.4)
    test = report["test"]
    curves = [("probe", test.get("probe"), "#c0392b"), ("H-Neurons only", test.get("h_neurons_only"), "#e67e22"),
              ("random neurons (draw 0)", test.get("random"), "#7f8c8d")]
    for label, entry, color in curves:
        if entry and "roc" in entry:
            auc = entry.get("auroc", entry.get("auroc_mean"))
            ax.plot(entry["roc"]["fpr"], entry["roc"]["tpr"], color=color, label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="black", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("hallucination detection, test split")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(plt, fig, out / name)


def plot_locate(out: Path, neurons: dict, report: dict) -> list[str]:
    return [plot_per_layer(out, neurons), plot_path(out, report), plot_roc(out, report)]
