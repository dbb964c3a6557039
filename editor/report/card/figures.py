"""The plots the card shows: copied from the reports that made them, or drawn for the card (neurons per layer).
Each is registered under its path in the edit folder, so that the card, the copy and the publish manifest
agree on one list."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import InputError
from .constants import PLOTS_DIR
from .inputs import CardInputs
from .text import md_text

_PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.png")


@dataclass
class Plots:
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

    def add_report_plots(self, report: Any, names: Any, what: str, skip: str | None = None) -> list[dict]:
        """Images for the plots a report lists (those that exist), titled after their file names."""
        images = []
        for name in names or []:
            if name == skip:
                continue
            rel = self.add_copy(report.folder, name, f"{what} {report.path}")
            if rel:
                images.append(image(rel, name.removesuffix(".png").replace("_", " ")))
        return images


def image(rel: str, alt: str) -> dict:
    """An image of the card: the template writes ``![alt](path)``."""
    return {"alt": md_text(alt), "path": rel}


def plot_per_layer(inputs: CardInputs, out: Path) -> None:
    """Draw the H-Neurons-per-layer bar chart of the edit (every layer, empty ones included)."""
    from ...plots import plot_per_layer as draw

    counts = {str(layer): 0 for layer in range(int(inputs.identity["num_layers"]))}
    for layer, n in (inputs.edit["neurons"].get("per_layer") or {}).items():
        counts[str(int(layer))] = int(n)
    doc = {"per_layer": counts, "count": inputs.count, "per_mille": inputs.per_mille,
           "total_ffn_neurons": inputs.total_neurons}
    draw(out.parent, doc, name=out.name)
