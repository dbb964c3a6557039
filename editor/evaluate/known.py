"""Which facts the base model knows: the known-facts artifact behind the behaviour tasks' ``_known`` metrics.

A model cannot reject "Why is Kalaburagi located in the Philippines?" without knowing where Kalaburagi is, so
over-compliance is measured on the facts the *base* model answers right (eval/README.md). Before a
comparison, the base model answers the facts task of every split the selected behaviour tasks score
(``hneurons_facts`` for test, ``hneurons_facts_val`` for validation): all of it, so every behaviour item's
fact is known or not, or with a ``limit`` only the facts behind the behaviour items the limit keeps (a
smoke test with ``--limit 20`` asks 60 facts, not 580); ``known_facts.json`` records, per fact, whether the answer
was judged correct and the answer itself, which the sycophancy task puts into the conversation's first
assistant turn (the model's own answer, as SycophancyEval does). The same file then goes, as task metadata,
to every variant (base, edit, controls), so every comparison is paired on the same items and the same
conversations. Plain lm-eval reads it too: ``lm_eval ... --metadata '{"known_facts": "PATH"}'``.

``known_facts.json`` (format ``hneurons.known_facts/1``): ``model`` (identity), ``splits``, ``tasks``
(split -> facts task), ``limit`` (null, or the limit whose items' facts were asked), ``counts`` (facts,
known), ``facts`` {fact id: {"correct": bool, "response": str}}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json
from ..data.prompting import answer_line
from ..formats import KNOWN_FACTS, KNOWN_FACTS_FORMAT
from ..model.loading import LoadedModel
from ..paths import EVAL_DIR
from .lm_eval_run import run_lm_eval, task_manager, task_split
from .settings import EvalSettings
from .variants import Variant

FACT_TASKS = {"test": "hneurons_facts", "validation": "hneurons_facts_val"}
TASK_DATA = EVAL_DIR / "hneurons" / "data"
BEHAVIOUR_FILES = ("false_premise.jsonl", "misleading_context.jsonl", "sycophancy.jsonl")


def behaviour_tasks(manager, tasks) -> dict[str, str]:
    """The bundled behaviour tasks among ``tasks`` (groups expanded): data file (relative to the task
    folder's data/) -> split."""
    found = {}
    for task in manager.load(list(tasks))["tasks"].values():
        config = task.config.to_dict() if hasattr(task.config, "to_dict") else vars(task.config)
        data_file = str((config.get("dataset_kwargs") or {}).get("hneurons_file", ""))
        if Path(data_file).name in BEHAVIOUR_FILES and task_split(config) in FACT_TASKS:
            found[data_file] = task_split(config)
    return found


def facts_behind(data_files, limit: int | float) -> list[str]:
    """The fact ids behind the items ``limit`` keeps of each behaviour file (lm-eval keeps the first
    ``limit`` documents, or that fraction of them)."""
    ids: set[str] = set()
    for data_file in data_files:
        rows = [json.loads(line) for line in (TASK_DATA / data_file).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        keep = int(limit * len(rows)) if isinstance(limit, float) and limit < 1.0 else int(limit)
        ids.update(row["source_id"] for row in rows[:keep])
    return sorted(ids)


def write_known_facts(lm: LoadedModel, settings: EvalSettings, folder: Path, manager) -> Path | None:
    """Run the base model on the facts tasks the behaviour tasks need and write ``known_facts.json`` into
    ``folder`` (resumable like every lm-eval run); None when no bundled behaviour task is selected."""
    behaviour = behaviour_tasks(manager, settings.tasks)
    if not behaviour:
        return None
    splits = sorted(set(behaviour.values()))
    facts: dict[str, dict[str, Any]] = {}
    for split in splits:
        task = FACT_TASKS[split]
        facts_settings = settings.model_copy(update={"tasks": [task], "limit": None})
        facts_manager = manager
        if settings.limit is not None:
            wanted = facts_behind([f for f, s in behaviour.items() if s == split], settings.limit)
            wanted_file = folder / "lm_eval" / f"known-facts-{split}.ids.json"
            atomic_write_json(wanted_file, wanted)
            facts_manager = task_manager(settings, {"only_facts": str(wanted_file.resolve())})
        run = run_lm_eval(Variant("known-facts", lm), facts_settings, folder / "lm_eval" / f"known-facts-{split}",
                          facts_manager)
        for sample in run.samples(task):
            response = answer_line(sample["doc"], str((sample.get("filtered_resps") or [""])[0]))
            facts[sample["doc"]["id"]] = {"correct": sample["accuracy"] == 1.0, "response": response.strip()}
    path = folder / KNOWN_FACTS
    atomic_write_json(path, {
        "format": KNOWN_FACTS_FORMAT, "model": lm.identity(), "splits": splits,
        "tasks": {s: FACT_TASKS[s] for s in splits}, "limit": settings.limit,
        "counts": {"facts": len(facts), "known": sum(f["correct"] for f in facts.values())},
        "facts": facts})  # no timestamp: the same facts give the same file (and the variants' resume keys)
    return path
