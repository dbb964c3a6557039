"""The card's YAML front matter (``ModelCardData``): hneurons' choices for the Hub's metadata keys.

base_model only where the source's Hub id is known; base_model_relation ``adapter`` for IA3 / LoRA and
``finetune`` for a patched checkpoint; datasets only real Hub ids; one model-index result per (task, metric)
of the edited model (module docstring of :mod:`editor.report.card`).
"""

from __future__ import annotations

from typing import Any

from ...evaluate.suites import dataset_ref
from .constants import LIBRARY, RELATION, TAGS
from .inputs import CardInputs, metric_label
from .sources import base_model_id, source_license
from .text import finite, yaml_text


def _bundled(task: str) -> bool:
    return task.startswith("hneurons")


def eval_results_for_index(inputs: CardInputs) -> list:
    """One EvalResult per (task, metric) with a finite edited value."""
    from huggingface_hub import EvalResult

    tasks = (inputs.eval.doc.get("tasks") or {}) if inputs.eval else {}
    results = []
    for row in inputs.metric_rows:
        if not finite(row.get("edited")):
            continue
        task = str(row["task"])
        split = (tasks.get(task) or {}).get("split")
        ref = None if _bundled(task) else dataset_ref(task)  # the benchmarks' real dataset ids (evaluate.suites)
        if ref is not None:
            split = ref.split
        results.append(EvalResult(
            task_type="text-generation", dataset_name=yaml_text(task),
            dataset_type=yaml_text(ref.id if ref else f"hneurons/{task}" if _bundled(task) else task),
            dataset_config=yaml_text(ref.config) if ref and ref.config else None,
            dataset_split=yaml_text(split) if isinstance(split, str) else None,
            metric_type=yaml_text(row["metric"]), metric_name=yaml_text(metric_label(row)),
            metric_value=float(row["edited"])))
    return results


def _hub_datasets(inputs: CardInputs) -> list[str]:
    """The Hub ids of the datasets collect read (bundled sets and local files have none)."""
    from ...data.questions import HUB_DATASETS

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
    """The card's ``ModelCardData``."""
    from huggingface_hub import ModelCardData

    mode = inputs.mode
    base = base_model_id(inputs.identity)
    tags = list(TAGS) + {"weights": [], "gguf": ["gguf"]}.get(mode, ["peft", mode])
    extra: dict[str, Any] = {}
    if base:
        extra["base_model_relation"] = RELATION[mode]
    results = eval_results_for_index(inputs)
    return ModelCardData(
        base_model=base, library_name=LIBRARY[mode], pipeline_tag="text-generation",
        license=source_license(inputs.identity), tags=tags, datasets=_hub_datasets(inputs) or None,
        model_name=yaml_text(inputs.name) if results else None, eval_results=results or None, **extra)
