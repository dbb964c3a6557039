"""Render the card: prepare every section's values, fill README.md.j2 with ``ModelCard.from_template``, check the
front matter and the metadata, and (``write_card``) write README.md with the plots and reports it cites."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ...artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_no_outside_links,
    provenance,
    safe_join,
    sha256_file,
)
from ...errors import PublishError
from ...formats import (
    ADAPTER_CONFIG,
    CARD,
    EDIT_MANIFEST,
    EVAL_RESULTS,
    LOCATE_REPORT,
    PUBLISH_FORMAT,
    PUBLISH_MANIFEST,
)
from ...locking import locked
from . import dose as dose_section
from . import evidence, sections
from .constants import PAPER_URL, REPORT_NAMES
from .figures import Plots
from .inputs import CardInputs, load_inputs
from .limitations import limitations
from .metadata import card_metadata
from .text import short_path
from .validate import check_front_matter, validate_card_metadata

TEMPLATE = Path(__file__).with_name("README.md.j2")
# File names the template's fixed text mentions.
NAMES = {"card": CARD, "edit_manifest": EDIT_MANIFEST, "publish_manifest": PUBLISH_MANIFEST,
         "locate_report": LOCATE_REPORT, "eval_results": EVAL_RESULTS, "adapter_config": ADAPTER_CONFIG}


@dataclass
class CardPlan:
    """The rendered card and every file it needs next to it (relative path -> source file or generator)."""

    card: Any
    files: dict[str, Path | Callable[[Path], None]]
    inputs: CardInputs


def _reports(inputs: CardInputs) -> dict[str, Path]:
    """The reports the card copies: name in the edit folder -> the file read."""
    return {REPORT_NAMES[role]: report.path for role, report in (
        ("eval", inputs.eval), ("locate", inputs.locate), ("sweep", inputs.sweep), ("dose", inputs.dose),
        ("origin", inputs.origin), ("recipe", inputs.recipe)) if report is not None}


def template_values(inputs: CardInputs, plots: Plots) -> dict[str, Any]:
    """Every value README.md.j2 reads. Sections that show plots register them in ``plots``; the file list comes
    last because it lists those plots."""
    values = {"names": NAMES, "paper_url": PAPER_URL, "title": sections.title(inputs),
              "summary": sections.summary(inputs), "edit": sections.edit(inputs, plots),
              "detection": evidence.detection(inputs, plots), "evaluation": evidence.evaluation(inputs, plots),
              "dose": dose_section.dose(inputs, plots),
              "limitations": limitations(inputs), "origin": evidence.origin(inputs, plots),
              "load": sections.load(inputs), "reproduce": sections.reproduce(inputs)}
    values["files"] = sections.files(inputs, [*plots.sources, *_reports(inputs)])
    return values


def plan_card(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, dose=None,
              origin=None, recipe=None, repo_id: str | None = None) -> CardPlan:
    """Read the inputs and render the card; nothing is written."""
    from huggingface_hub import ModelCard

    inputs = load_inputs(edit_dir, locate_report=locate_report, eval_results=eval_results, sweep=sweep, dose=dose,
                         origin=origin, recipe=recipe, repo_id=repo_id)
    plots = Plots()
    values = template_values(inputs, plots)
    data = card_metadata(inputs)
    card = ModelCard.from_template(data, template_path=str(TEMPLATE), **values)
    check_front_matter(card, data.to_dict())
    validate_card_metadata(card)
    files: dict[str, Path | Callable[[Path], None]] = dict(plots.sources)
    files.update(_reports(inputs))
    return CardPlan(card, files, inputs)


def build_card(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, dose=None,
               origin=None, recipe=None, repo_id: str | None = None):
    """The model card of an edit folder as a ``huggingface_hub.ModelCard`` (nothing is written)."""
    return plan_card(edit_dir, locate_report=locate_report, eval_results=eval_results, sweep=sweep, dose=dose,
                     origin=origin, recipe=recipe, repo_id=repo_id).card


@locked("edit_dir", "edit folder")
def write_card(edit_dir: str | os.PathLike, *, locate_report=None, eval_results=None, sweep=None, dose=None,
               origin=None, recipe=None, repo_id: str | None = None) -> Path:
    """Write README.md, the plots and reports it cites, then hneurons_publish.json; returns README.md's path."""
    plan = plan_card(edit_dir, locate_report=locate_report, eval_results=eval_results, sweep=sweep, dose=dose,
                     origin=origin, recipe=recipe, repo_id=repo_id)
    folder = plan.inputs.folder
    check_no_outside_links(folder)
    outputs = [CARD, *plan.files]
    taken = sorted(set(outputs) & set(plan.inputs.edit["files"]))
    if taken:
        raise PublishError(f"{folder / EDIT_MANIFEST} already lists {taken[0]}: the card would overwrite a file of the "
                           f"edit; remove it from the edit output or re-run `hneurons edit`")
    _write_files(folder, plan.files)
    readme = atomic_write_text(folder / CARD, str(plan.card))
    _write_publish_manifest(plan, outputs)
    return readme


def _write_files(folder: Path, files: dict[str, Path | Callable[[Path], None]]) -> None:
    """Copy (or draw) every file the card cites into the edit folder."""
    for rel, source in files.items():
        target = safe_join(folder, rel)  # names come from reports: never outside the edit folder
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(source):
            source(target)
        elif not (target.exists() and os.path.samefile(source, target)):
            atomic_write_bytes(target, Path(source).read_bytes())


def _write_publish_manifest(plan: CardPlan, outputs: list[str]) -> None:
    """hneurons_publish.json, last: the card's files with their sha256 and the inputs they came from."""
    folder = plan.inputs.folder
    inputs = {role: {"source": short_path(report.path), "sha256": sha256_file(report.path)}
              for role, report in (("locate", plan.inputs.locate), ("eval", plan.inputs.eval),
                                   ("sweep", plan.inputs.sweep), ("dose", plan.inputs.dose),
                                   ("origin", plan.inputs.origin),
                                   ("recipe", plan.inputs.recipe)) if report is not None}
    atomic_write_json(folder / PUBLISH_MANIFEST, {
        "format": PUBLISH_FORMAT, "files": {rel: sha256_file(folder / rel) for rel in sorted(outputs)},
        "repo_id": plan.inputs.repo_id, "inputs": inputs, "provenance": provenance()})
