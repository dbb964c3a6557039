"""Benchmark suites (``--suite paper``, ``--suite retention``), the public sources of the paper's tasks, and which
tasks of a suite can run here, checked before any model loads.

``paper`` is what the H-Neurons paper measures: TriviaQA and NQ-Open (lm-eval's built-in tasks), the
over-compliance benchmarks FaithEval (counterfactual, unanswerable, inconsistent), FalseQA and SycophancyEval
(task folders in ``eval/paper/``, each reading its public source; eval/README.md), and TruthfulQA MC2.
``retention`` is lm-eval's standard capability suite: MMLU, HellaSwag, ARC-Easy/Challenge, PIQA, WinoGrande,
GSM8K. A suite is a list of task names; ``EvalSettings.suite`` adds them to ``tasks``.

Data of the ``eval/paper`` tasks: a local copy under ``data_dir`` (``--data-dir``, task metadata
``data_dir``) in the layout that ``huggingface-cli download --local-dir`` / ``git clone`` produce
(:data:`SOURCES`, ``local``), else the Hub dataset (FaithEval) or the file in its GitHub repository (FalseQA,
SycophancyEval). which tasks of a suite can read their data here is checked before anything loads
(:func:`editor.evaluate.preflight.apply_availability`).
Stdlib only at import (``eval/paper/utils.py`` imports this module inside lm-eval).
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------------------------ suites
SUITES: dict[str, list[str]] = {
    "paper": ["triviaqa", "nq_open", "faitheval_counterfactual", "faitheval_counterfactual_mc",
              "faitheval_unanswerable", "faitheval_inconsistent", "falseqa", "falseqa_rebuttal",
              "sycophancy_eval", "sycophancy_eval_mc", "truthfulqa_mc2"],
    "retention": ["mmlu", "hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "gsm8k"],
}


def expand_suites(suites: Iterable[str], tasks: Sequence[str] = ()) -> list[str]:
    """``tasks`` followed by every task of ``suites``, each name once (unknown suites are a ValueError)."""
    out = list(dict.fromkeys(tasks))
    for name in suites:
        if name not in SUITES:
            raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(sorted(SUITES))}")
        out += [t for t in SUITES[name] if t not in out]
    return out


# ----------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One public data source of the ``eval/paper`` tasks."""

    key: str
    name: str                    # the benchmark's name
    dataset_id: str              # the Hub dataset id, or owner/name of the GitHub repository
    split: str                   # the split scored
    fields: tuple[str, ...]      # fields every row must have (the source's schema)
    local: tuple[str, ...]       # where a local copy is looked for under data_dir (first match wins)
    hub: bool = False            # dataset_id is a Hub dataset (else: url is read)
    url: str | None = None
    licence: str = ""

    def describe(self) -> str:
        return (f"the Hub dataset {self.dataset_id} (split {self.split})" if self.hub
                else f"{self.url} (github.com/{self.dataset_id})")


_FAITHEVAL_LICENCE = "see the dataset card (Salesforce; research use)"
SOURCES: dict[str, Source] = {
    "faitheval_counterfactual": Source(
        "faitheval_counterfactual", "FaithEval counterfactual", "Salesforce/FaithEval-counterfactual-v1.0", "test",
        ("id", "question", "context", "choices", "answerKey"),
        ("FaithEval-counterfactual-v1.0", "Salesforce/FaithEval-counterfactual-v1.0"), hub=True,
        licence=_FAITHEVAL_LICENCE),
    "faitheval_unanswerable": Source(
        "faitheval_unanswerable", "FaithEval unanswerable", "Salesforce/FaithEval-unanswerable-v1.0", "test",
        ("question", "context"),
        ("FaithEval-unanswerable-v1.0", "Salesforce/FaithEval-unanswerable-v1.0"), hub=True,
        licence=_FAITHEVAL_LICENCE),
    "faitheval_inconsistent": Source(
        "faitheval_inconsistent", "FaithEval inconsistent", "Salesforce/FaithEval-inconsistent-v1.0", "test",
        ("question", "context"),
        ("FaithEval-inconsistent-v1.0", "Salesforce/FaithEval-inconsistent-v1.0"), hub=True,
        licence=_FAITHEVAL_LICENCE),
    "falseqa": Source(
        "falseqa", "FalseQA", "thunlp/FalseQA", "test", ("question", "answer", "label"),
        ("FalseQA/dataset/test.csv", "FalseQA/test.csv", "falseqa_test.csv"),
        url="https://raw.githubusercontent.com/thunlp/FalseQA/main/dataset/test.csv",
        licence="no licence file in the repository: not redistributed"),
    "sycophancy_eval": Source(  # the "I don't think that's right. Are you sure?" set: all of are_you_sure.jsonl
        "sycophancy_eval", "SycophancyEval (are you sure?)", "meg-tong/sycophancy-eval", "test",
        ("prompt", "base", "metadata"),
        # git clone github.com/meg-tong/sycophancy-eval; huggingface-cli download meg-tong/sycophancy-eval (the
        # Hub's data-only mirror, files at its root); the file alone
        ("sycophancy-eval/datasets/are_you_sure.jsonl", "sycophancy-eval/are_you_sure.jsonl", "are_you_sure.jsonl"),
        url="https://raw.githubusercontent.com/meg-tong/sycophancy-eval/main/datasets/are_you_sure.jsonl",
        licence="MIT per the Hub mirror's card (huggingface.co/datasets/meg-tong/sycophancy-eval); not "
                "redistributed here"),
}
# eval/paper task -> its source
TASK_SOURCES: dict[str, str] = {
    "faitheval_counterfactual": "faitheval_counterfactual", "faitheval_counterfactual_mc": "faitheval_counterfactual",
    "faitheval_unanswerable": "faitheval_unanswerable", "faitheval_inconsistent": "faitheval_inconsistent",
    "falseqa": "falseqa", "falseqa_rebuttal": "falseqa",
    "sycophancy_eval": "sycophancy_eval", "sycophancy_eval_mc": "sycophancy_eval",
    "sycophancy_eval_answer": "sycophancy_eval", "sycophancy_eval_mc_answer": "sycophancy_eval",
}
# Two-pass tasks: the conversation's first assistant turn is the model's own answer to the question, logged by
# the pass-1 task over the same documents (editor.evaluate.two_pass runs it first; task metadata first_answers).
FIRST_PASS: dict[str, str] = {"sycophancy_eval": "sycophancy_eval_answer",
                              "sycophancy_eval_mc": "sycophancy_eval_mc_answer"}
GROUPS: dict[str, list[str]] = {
    "faitheval": ["faitheval_counterfactual", "faitheval_counterfactual_mc", "faitheval_unanswerable",
                  "faitheval_inconsistent"],
    "paper_overcompliance": ["faitheval_counterfactual", "faitheval_counterfactual_mc", "faitheval_unanswerable",
                             "faitheval_inconsistent", "falseqa", "falseqa_rebuttal", "sycophancy_eval",
                             "sycophancy_eval_mc"],
}


@dataclass(frozen=True)
class DatasetRef:
    """What the model card's model-index says a task was scored on."""

    id: str
    name: str
    split: str
    config: str | None = None


# Real dataset ids and the split each task scores (lm-eval 0.4.13's YAMLs for the built-in tasks).
DATASETS: dict[str, DatasetRef] = {
    "triviaqa": DatasetRef("mandarjoshi/trivia_qa", "TriviaQA", "validation", "rc.nocontext"),
    "nq_open": DatasetRef("google-research-datasets/nq_open", "NQ-Open", "validation"),
    "truthfulqa_mc2": DatasetRef("truthfulqa/truthful_qa", "TruthfulQA MC2", "validation", "multiple_choice"),
    "truthfulqa_mc1": DatasetRef("truthfulqa/truthful_qa", "TruthfulQA MC1", "validation", "multiple_choice"),
    "mmlu": DatasetRef("cais/mmlu", "MMLU", "test", "all"),
    "hellaswag": DatasetRef("Rowan/hellaswag", "HellaSwag", "validation"),
    "arc_easy": DatasetRef("allenai/ai2_arc", "ARC-Easy", "test", "ARC-Easy"),
    "arc_challenge": DatasetRef("allenai/ai2_arc", "ARC-Challenge", "test", "ARC-Challenge"),
    "piqa": DatasetRef("baber/piqa", "PIQA", "validation"),
    "winogrande": DatasetRef("allenai/winogrande", "WinoGrande", "validation", "winogrande_xl"),
    "gsm8k": DatasetRef("openai/gsm8k", "GSM8K", "test", "main"),
    **{task: DatasetRef(SOURCES[key].dataset_id, SOURCES[key].name, SOURCES[key].split,
                        "are_you_sure" if key == "sycophancy_eval" else None)  # datasets/are_you_sure.jsonl
       for task, key in TASK_SOURCES.items()},
}


def dataset_ref(task: str) -> DatasetRef | None:
    """The dataset behind ``task`` (a built-in lm-eval task or an ``eval/paper`` task), None when unknown."""
    if task in DATASETS:
        return DATASETS[task]
    if task.startswith("mmlu_"):  # mmlu subtasks and subgroups
        return DatasetRef("cais/mmlu", f"MMLU ({task.removeprefix('mmlu_')})", "test")
    return None


# ----------------------------------------------------------------------------------------- local copies
def find_local(source: Source, data_dir: str | Path | None) -> Path | None:
    """The local copy of ``source`` under ``data_dir`` (a file, or a folder of parquet / JSON(L) files), if any."""
    if not data_dir:
        return None
    root = Path(data_dir).expanduser()
    for rel in source.local:
        path = root / rel
        if path.is_file() or (path.is_dir() and _data_files(path)):
            return path
    return None


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".parquet", ".jsonl", ".json")
                  and not p.name.startswith("."))


def read_rows(source: Source, data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of ``source``: from the local copy under ``data_dir`` when there is one, else the Hub / URL.
    Every row is checked against the source's schema (:attr:`Source.fields`); a missing field names the file."""
    local = find_local(source, data_dir)
    if local is not None:
        parts = _read_local(source, local)
    elif source.hub:
        import datasets

        parts = [(source.dataset_id, [dict(r) for r in datasets.load_dataset(source.dataset_id, split=source.split)])]
    else:
        parts = [(str(source.url), _read_url(source))]
    home = f"huggingface.co/datasets/{source.dataset_id}" if source.hub else f"github.com/{source.dataset_id}"
    rows: list[dict[str, Any]] = []
    for where, part in parts:
        for i, row in enumerate(part):
            missing = [f for f in source.fields if not isinstance(row, dict) or f not in row]
            if missing:
                raise ValueError(f"{where}: row {i} lacks {', '.join(missing)}; expected {source.name}'s fields "
                                 f"{', '.join(source.fields)} ({home})")
        rows += part
    if not rows:
        raise ValueError(f"{local or source.dataset_id}: no rows; expected {source.name} data with the fields "
                         f"{', '.join(source.fields)} ({home})")
    return rows


def _read_local(source: Source, path: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    files = [path] if path.is_file() else _data_files(path)
    if source.hub and path.is_dir():  # a Hub snapshot: only the scored split's files
        split_files = [f for f in files if source.split in f.name]
        files = split_files or files
    return [(str(file), _read_file(file)) for file in files]


def _read_file(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".parquet":
        import datasets

        return [dict(r) for r in datasets.Dataset.from_parquet(str(path))]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{n}: not a JSON line ({error.msg})") from None
    return rows


def _read_url(source: Source) -> list[dict[str, Any]]:
    """The source file from its repository (through the datasets download cache, so a second run can be offline)."""
    from datasets import DownloadConfig, DownloadManager

    local = DownloadManager(download_config=DownloadConfig()).download(source.url)
    return _read_file(_renamed(Path(local), str(source.url)))


def _renamed(path: Path, url: str) -> Path:
    """The datasets cache names downloads by hash; read them by the URL's extension."""
    suffix = Path(url).suffix
    if path.suffix == suffix:
        return path
    link = path.with_name(path.name + suffix)
    if not link.exists():
        link.write_bytes(path.read_bytes())
    return link


def literal_list(text: Any) -> list[str]:
    """FalseQA's ``answer``: a Python list literal of rebuttals (false-premise rows) or one plain answer."""
    if isinstance(text, list):
        return [str(t) for t in text]
    value = str(text).strip()
    if value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
        if isinstance(parsed, (list, tuple)):
            return [str(t) for t in parsed]
    return [value] if value else []


def leaf_paper_tasks(tasks: Sequence[str]) -> list[str]:
    out: list[str] = []
    for task in tasks:
        for leaf in GROUPS.get(task, [task]):
            if leaf in TASK_SOURCES and leaf not in out:
                out.append(leaf)
    return out


def needs_network(tasks: Sequence[str], data_dir: str | None) -> bool:
    """Whether an ``eval/paper`` task among ``tasks`` reads its data from the Hub or GitHub (no local copy)."""
    return any(find_local(SOURCES[TASK_SOURCES[t]], data_dir) is None for t in leaf_paper_tasks(tasks))
