"""Before any model loads: can lm-eval read the datasets of the tasks asked for, here and now?

lm-eval's built-in tasks read Hugging Face datasets (``arc_easy`` reads ``allenai/ai2_arc``, config
``ARC-Easy``). Offline and not cached, ``datasets`` fails only when lm-eval builds the task, after the model
has loaded, with a ``ConnectionError`` traceback. :func:`check_task_data` finds each built-in task's dataset
from lm-eval's own task YAMLs (a text scan of ``lm_eval/tasks``, following ``include:`` files, groups and
tags; lm-eval itself is not imported, indexing all its tasks takes seconds) and checks the dataset is in the
local cache (the Hub cache, ``datasets--OWNER--NAME``, or the datasets cache, ``OWNER___NAME``); when it is
not, offline mode is an error at once, and online the Hub is asked once whether the dataset can be
downloaded. Task names it cannot resolve (Python-defined tasks, unknown names) are left to lm-eval, which
refuses unknown names itself; the bundled tasks and ``--include-path`` folders are local and not checked.

:func:`apply_availability` (what ``hneurons eval`` / ``sweep`` / ``recipe check`` run first) also checks the
``eval/paper`` tasks (a local copy under ``--data-dir``, the Hub cache, or reachable; editor.evaluate.suites) and
says, one line per task, which tasks cannot read their data; ``--available-only`` runs the others.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import UnavailableError
from ..model.preflight import (
    check_hub_dataset,
    datasets_offline,
    hub_cache,
    offline_flags,
)
from .lm_eval_run import local_task_names
from .suites import GROUPS, SOURCES, TASK_SOURCES, find_local, leaf_paper_tasks

log = logging.getLogger(__name__)

# datasets' packaged builders: dataset_path names a file format, not a Hub repository (data_files say where).
PACKAGED_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "imagefolder", "audiofolder",
                     "videofolder", "xml", "sql", "generator", "spark", "cache"}
_KEY = re.compile(r"""^["']?(task|group|tag|include|dataset_path|dataset_name)["']?[ \t]*:[ \t]*(.*?)[ \t]*$""",
                  re.MULTILINE)
_TAG_LIST = re.compile(r"""^["']?tag["']?[ \t]*:[ \t]*\n((?:[ \t]+-[ \t]*\S.*\n?)+)""", re.MULTILINE)


@dataclass(frozen=True)
class TaskData:
    """One dataset a task reads."""

    task: str
    path: str
    name: str | None

    def describe(self) -> str:
        return self.path + (f" (config {self.name})" if self.name else "")


def lm_eval_tasks_dir() -> Path | None:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "tasks"
    return folder if folder.is_dir() else None


def _scalar(value: str) -> str | None:
    value = value.split(" #", 1)[0].strip().strip("'\"")
    return None if value in ("", "null", "~", "None") else value


@lru_cache(maxsize=4096)
def _keys(path: Path) -> dict[str, Any]:
    """The top-level scalar keys of a task YAML that matter here (tags as a list), by a text scan."""
    text = path.read_text(encoding="utf-8", errors="replace")
    keys: dict[str, Any] = {}
    for key, value in _KEY.findall(text):
        keys.setdefault(key, value)
    tags = []
    if "tag" in keys:
        raw = keys["tag"].strip()
        if raw.startswith("["):
            tags = [t.strip().strip("'\"") for t in raw.strip("[]").split(",") if t.strip()]
        elif raw:
            tags = [_scalar(raw)]
    for block in _TAG_LIST.findall(text):
        tags += [_scalar(line.strip()[1:]) for line in block.splitlines() if line.strip().startswith("-")]
    out = {k: _scalar(v) for k, v in keys.items() if k != "tag" and not v.strip().startswith("[")}
    out["tags"] = [t for t in tags if t]
    if "task" in keys and not _scalar(keys["task"]):
        out["task_list"] = True  # a group's `task:` list on the following lines
    return out


class _Permissive(yaml.SafeLoader):
    """Plain data; lm-eval's ``!function`` tags become None (nothing is imported or run)."""


_Permissive.add_multi_constructor("!", lambda loader, suffix, node: None)


@lru_cache(maxsize=1)
def _index(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, list[Path]], dict[str, list[Path]]]:
    """Every task YAML of lm-eval: task name -> file, group -> file, tag -> files, file stem -> files."""
    tasks: dict[str, Path] = {}
    groups: dict[str, Path] = {}
    tags: dict[str, list[Path]] = {}
    stems: dict[str, list[Path]] = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            if filename.endswith((".yaml", ".yml")) or filename.endswith("_yaml"):
                path = Path(dirpath) / filename
                stems.setdefault(path.stem.lstrip("_"), []).append(path)
    return tasks, groups, tags, stems


def _full_index(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, list[Path]]]:
    tasks, groups, tags, stems = _index(root)
    if not tasks and not groups:
        for paths in stems.values():
            for path in paths:
                keys = _keys(path)
                if keys.get("task"):
                    tasks.setdefault(keys["task"], path)
                if keys.get("group"):
                    groups.setdefault(keys["group"], path)
                for tag in keys["tags"]:
                    tags.setdefault(tag, []).append(path)
    return tasks, groups, tags


def _dataset_of(path: Path, depth: int = 0) -> tuple[str | None, str | None]:
    """dataset_path and dataset_name of a task file, following its ``include:`` chain (the including file wins)."""
    keys = _keys(path)
    ds_path, ds_name = keys.get("dataset_path"), keys.get("dataset_name")
    include = keys.get("include")
    if include and depth < 10 and (ds_path is None or "dataset_name" not in keys):
        parent = (path.parent / include) if not os.path.isabs(include) else Path(include)
        if parent.is_file():
            up_path, up_name = _dataset_of(parent, depth + 1)
            ds_path = ds_path or up_path
            ds_name = ds_name if "dataset_name" in keys else up_name
    return ds_path, ds_name


def _group_members(path: Path) -> list[Any]:
    try:
        doc = yaml.load(path.read_text(encoding="utf-8", errors="replace"), Loader=_Permissive)  # noqa: S506
    except yaml.YAMLError:
        return []
    members = doc.get("task") if isinstance(doc, dict) else None
    return members if isinstance(members, list) else []


def _resolve(name: str, root: Path, seen: set[str], depth: int = 0) -> list[TaskData] | None:
    """The datasets behind a task, group or tag name (None: not resolvable from the YAMLs)."""
    if name in seen or depth > 8:
        return []
    seen.add(name)
    _, _, _, stems = _index(root)
    fast = [p for p in stems.get(name, []) if _keys(p).get("task") == name or _keys(p).get("group") == name]
    if fast:
        kind, path = ("task", fast[0]) if _keys(fast[0]).get("task") == name else ("group", fast[0])
        files: list[Path] = [path]
    else:
        tasks, groups, tags = _full_index(root)
        if name in tasks:
            kind, files = "task", [tasks[name]]
        elif name in groups:
            kind, files = "group", [groups[name]]
        elif name in tags:
            kind, files = "tag", tags[name]
        else:
            return None
    found: list[TaskData] = []
    if kind == "group":
        for member in _group_members(files[0]):
            if isinstance(member, str):
                found += _resolve(member, root, seen, depth + 1) or []
            elif isinstance(member, dict) and isinstance(member.get("dataset_path"), str):
                found.append(TaskData(str(member.get("task", name)), member["dataset_path"], member.get("dataset_name")))
            elif isinstance(member, dict) and isinstance(member.get("task"), str):
                found += _resolve(member["task"], root, seen, depth + 1) or []
        return found
    for path in files:
        ds_path, ds_name = _dataset_of(path)
        if ds_path:
            found.append(TaskData(_keys(path).get("task") or name, ds_path, ds_name))
    return found


def is_builtin_task(name: str) -> bool:
    """Whether lm-eval's task YAMLs define ``name`` (a task, group or tag), found by the same text scan."""
    root = lm_eval_tasks_dir()
    return root is not None and _resolve(name, root, set()) is not None


def builtin_task_data(tasks: Iterable[str], local: set[str] | None = None) -> list[TaskData]:
    """The Hub datasets lm-eval's built-in ``tasks`` read (local task names and unresolvable names left out)."""
    root = lm_eval_tasks_dir()
    if root is None:
        return []
    found: list[TaskData] = []
    for task in tasks:
        if local and task in local:
            continue
        for data in _resolve(task, root, set()) or []:
            if data.path not in PACKAGED_BUILDERS and not Path(data.path).exists():
                found.append(TaskData(task, data.path, data.name))
    return found


def datasets_cache() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")


def dataset_cached(repo_id: str) -> bool:
    """Whether a Hub dataset has files in the Hub cache or a prepared copy in the datasets cache."""
    snapshots = Path(hub_cache()) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in snapshots.iterdir()):
        return True
    prepared = datasets_cache() / repo_id.replace("/", "___")
    return prepared.is_dir() and any(prepared.iterdir())


def check_task_data(tasks: Sequence[str], task_paths: Sequence[str | Path], what: str = "lm-eval task") -> None:
    """Raise one :class:`UnavailableError` naming every built-in task whose dataset cannot be read now."""
    local = local_task_names(task_paths)
    missing = [d for d in builtin_task_data(tasks, local) if not dataset_cached(d.path)]
    if not missing:
        return
    by_repo: dict[str, list[TaskData]] = {}
    for data in missing:
        by_repo.setdefault(data.path, []).append(data)
    if datasets_offline():
        listed = "; ".join(_reads(items, what) for _, items in sorted(by_repo.items()))
        it = "it is" if len(by_repo) == 1 else "they are"
        raise UnavailableError(
            f"{listed}: offline mode is on ({offline_flags()}) and {it} not in the datasets cache ({datasets_cache()} "
            f"or {hub_cache()}); run once where the Hub is reachable (without HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
            f"to cache {'it' if len(by_repo) == 1 else 'them'}, or leave the task out (the bundled tasks, --tasks "
            f"hneurons, work offline)")
    reasons = {repo: check_hub_dataset(repo) for repo in by_repo}
    problems = [f"{_reads(by_repo[repo], what)}, which is not in the datasets cache, and {reason}"
                for repo, reason in sorted(reasons.items()) if reason]
    if problems:
        raise UnavailableError("; ".join(problems))


def _reads(items: list[TaskData], what: str) -> str:
    tasks = sorted({d.task for d in items})
    if len(tasks) > 4:
        tasks = tasks[:3] + [f"... ({len(tasks)} in all)"]
    many = len(tasks) > 1
    dataset = items[0].describe() if len({d.name for d in items}) == 1 else items[0].path
    return f"{what}{'s' if many else ''} {', '.join(tasks)} read{'' if many else 's'} the Hub dataset {dataset}"


# ----------------------------------------------------------------- suites: which tasks can run here
@dataclass(frozen=True)
class Unavailable:
    task: str
    reason: str

    def line(self) -> str:
        return f"{self.task}: {self.reason}"


def _paper_reason(task: str, data_dir: str | None, offline: bool) -> str | None:
    source = SOURCES[TASK_SOURCES[task]]
    if find_local(source, data_dir):
        return None
    where = f"no local copy under --data-dir {data_dir} (looked for {', '.join(source.local)})" if data_dir else \
        "no --data-dir given"
    if source.hub:
        if dataset_cached(source.dataset_id):
            return None
        if offline:
            return f"reads {source.describe()}, which is not in the datasets cache, offline mode is on, and {where}"
        problem = check_hub_dataset(source.dataset_id)
        return None if not problem else f"reads {source.describe()}, not cached, and {problem}; {where}"
    if offline:
        return f"reads {source.describe()}, offline mode is on, and {where}"
    return None  # downloaded from GitHub by the task (an unreachable URL fails at load time with its address)


def unavailable(tasks: Sequence[str], task_paths: Sequence[str | Path], data_dir: str | None = None) -> list[Unavailable]:
    """Every task of ``tasks`` whose data cannot be read here now, with the reason (no model, no lm-eval import)."""
    offline = datasets_offline()
    out: list[Unavailable] = []
    for task in leaf_paper_tasks(tasks):
        reason = _paper_reason(task, data_dir, offline)
        if reason:
            out.append(Unavailable(task, reason))
    local = local_task_names(task_paths)
    missing: dict[str, list[str]] = {}
    for data in builtin_task_data([t for t in tasks if t not in TASK_SOURCES and t not in GROUPS], local):
        if not dataset_cached(data.path):
            missing.setdefault(data.task, []).append(data.describe())
    for task, datasets_ in missing.items():
        shown = ", ".join(dict.fromkeys(datasets_))
        if offline:
            out.append(Unavailable(task, f"reads the Hub dataset {shown}, not in the datasets cache, and offline mode "
                                         f"is on ({offline_flags()})"))
        else:
            problem = next((p for p in (check_hub_dataset(d.split(" (")[0]) for d in dict.fromkeys(datasets_)) if p),
                           None)
            if problem:
                out.append(Unavailable(task, f"reads the Hub dataset {shown}, not cached, and {problem}"))
    return out


def apply_availability(settings: Any) -> tuple[Any, list[Unavailable]]:
    """Refuse the tasks of ``settings`` that cannot run here (one line each, naming ``--available-only``), or,
    with ``available_only``, leave them out (logged). Returns (the settings to run with, what was left out).
    Nothing is loaded."""
    missing = unavailable(settings.tasks, settings.task_paths, getattr(settings, "data_dir", None))
    if not missing:
        return settings, []
    names = {m.task for m in missing}
    lines = ";\n".join(f"  {m.line()}" for m in missing)  # the CLI prints one line: "; " between tasks
    if not getattr(settings, "available_only", False):
        # --data-dir serves the paper tasks; lm-eval's built-in tasks read the datasets cache
        local = ("give downloaded copies with --data-dir DIR (eval/README.md, \"Paper benchmarks\"), "
                 if names & set(TASK_SOURCES) else "copy in a datasets cache that holds the data (HF_DATASETS_CACHE), ")
        raise UnavailableError(
            f"{len(names)} task{'s' if len(names) > 1 else ''} cannot read {'their' if len(names) > 1 else 'its'} "
            f"data here:\n{lines}.\nTo run {'them' if len(names) > 1 else 'it'}: {local}"
            f"run where the Hub is reachable, or pass --available-only to run the other tasks")
    kept = [t for t in settings.tasks if t not in names]
    if not kept:
        raise UnavailableError(f"no task of {', '.join(settings.tasks)} can read its data here:\n{lines}")
    for m in missing:
        log.warning("left out (--available-only): %s", m.line())
    # the suite is already expanded into tasks: clearing it keeps a later re-validation from adding them back
    return settings.model_copy(update={"tasks": kept, "suite": []}), missing
