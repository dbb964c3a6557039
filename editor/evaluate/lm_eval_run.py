"""Running lm-eval on one variant: the task manager (bundled tasks + built-in ones), offline flags, one
resumable run per variant folder (``hneurons_run.json`` holds its settings key), reading per-item values
back from lm-eval's sample logs, and the equivalent plain ``lm_eval`` command."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import (
    atomic_dir,
    atomic_write_json,
    atomic_writer,
    provenance,
    read_json,
    sha256_file,
    sha256_json,
)
from ..errors import InputError
from ..formats import EVAL_RUN
from ..model.loading import cache_dir
from .bars import quiet_lm_eval
from .settings import EvalSettings
from .variants import Variant

log = logging.getLogger(__name__)



def local_task_names(include_paths: Iterable[str | Path]) -> set[str]:
    """Task, group and tag names declared in the include paths' YAML files (a text scan, no lm-eval import)."""
    names: set[str] = set()
    pattern = re.compile(r"^(?:task|group|tag)[ \t]*:[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)
    for root in include_paths:
        for path in Path(root).rglob("*.y*ml"):
            for value in pattern.findall(path.read_text(encoding="utf-8", errors="replace")):
                value = value.strip().strip("'\"")
                if value.startswith("["):
                    names.update(v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip())
                elif value:
                    names.add(value)
    return names


def prepare_environment(settings: EvalSettings) -> bool:
    """Set the offline flags when every task is local; returns whether built-in tasks must be indexed.

    The flags must be set before ``datasets`` / ``huggingface_hub`` are imported to take full effect; the CLI
    calls this first thing. Already-set flags are kept.
    """
    from .suites import needs_network

    local = local_task_names(settings.task_paths)
    needs_builtin = any(t not in local for t in settings.tasks)
    # the eval/paper tasks are local YAMLs reading Hub / GitHub data unless --data-dir holds a copy
    if not needs_builtin and not needs_network(settings.tasks, getattr(settings, "data_dir", None)):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return needs_builtin


def task_manager(settings: EvalSettings, metadata: Mapping[str, Any] | None = None):
    """lm-eval's task manager over the bundled and extra task folders; ``metadata`` reaches every task (the
    bundled tasks read ``known_facts``: eval/hneurons/utils.py)."""
    needs_builtin = prepare_environment(settings)
    from lm_eval.tasks import TaskManager

    if getattr(settings, "data_dir", None):  # the eval/paper tasks read their data from here (eval/paper/utils.py)
        metadata = {**(metadata or {}), "data_dir": settings.data_dir}

    manager = TaskManager(include_path=list(settings.task_paths), include_defaults=needs_builtin,
                          metadata=dict(metadata) if metadata else None)
    unknown = [t for t in settings.tasks if t not in manager.all_tasks]
    if unknown:
        where = ", ".join(settings.task_paths)
        raise InputError(f"unknown lm-eval task {unknown[0]!r}: it is neither in the task folders ({where}) nor a "
                         f"built-in lm-eval task (list them with `lm-eval ls tasks`)")
    return manager


@dataclass
class LmEvalRun:
    """lm-eval's output for one variant, on disk: results.json + samples_<task>.jsonl."""

    name: str
    folder: Path
    results: dict[str, Any]

    @classmethod
    def load(cls, name: str, folder: Path) -> LmEvalRun:
        return cls(name, folder, read_json(folder / "results.json", "lm-eval results"))

    def leaf_tasks(self) -> list[str]:
        """Tasks with per-sample logs (groups are aggregates of these and have none)."""
        return sorted(t for t in self.results.get("configs", {}) if (self.folder / samples_name(t)).is_file())

    def metric_keys(self, task: str) -> list[tuple[str, str]]:
        """(metric, filter) pairs lm-eval reported for ``task``."""
        out = []
        for key, value in self.results["results"].get(task, {}).items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, filt = key.split(",", 1)
            out.append((metric, filt))
        return sorted(out)

    def value(self, task: str, metric: str, filt: str) -> float | None:
        value = self.results["results"].get(task, {}).get(f"{metric},{filt}")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def higher_is_better(self, task: str, metric: str) -> bool | None:
        value = self.results.get("higher_is_better", {}).get(task, {}).get(metric)
        return None if value is None else bool(value)

    def samples(self, task: str) -> Iterator[dict[str, Any]]:
        """lm-eval's logged samples of ``task`` (doc, responses and per-document metric values)."""
        with open(self.folder / samples_name(task), encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def per_item(self, task: str, metric: str, filt: str) -> dict[int, float] | None:
        """doc_id -> the sample's value of ``metric`` (None when values are not plain numbers). NaN values are
        left out: the ``_known`` metrics are NaN off the known facts, so their items are those facts."""
        values: dict[int, float] = {}
        for sample in self.samples(task):
            if sample.get("filter", "none") != filt or metric not in sample:
                continue
            value = sample[metric]
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)):
                return None
            if value == value:
                values[int(sample["doc_id"])] = float(value)
        return values

    def split_of(self, task: str) -> str | None:
        return task_split(self.results.get("configs", {}).get(task, {}))

    def primary_metric(self, task: str) -> str | None:
        """The one metric the task declares as its headline (``metadata.primary_metric`` in its YAML)."""
        value = (self.results.get("configs", {}).get(task, {}).get("metadata") or {}).get("primary_metric")
        return str(value) if value else None


def samples_name(task: str) -> str:
    return f"samples_{task}.jsonl"


def task_split(config: Mapping[str, Any]) -> str | None:
    """Which data split a task scores: ``metadata.split`` if the task declares it, else inferred from its data
    file names (``*_validation.jsonl`` / ``*_test.jsonl``), else lm-eval's split name."""
    declared = (config.get("metadata") or {}).get("split")
    if declared:
        return str(declared)
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    names = [str(v) for v in (files.values() if isinstance(files, dict) else [files] if files else [])]
    for split in ("validation", "test", "train"):
        if names and all(re.search(rf"[_\-./]{split}[_\-.]", Path(n).name + ".") for n in names):
            return split
    return config.get("test_split") or config.get("validation_split")


def run_lm_eval(variant: Variant, settings: EvalSettings, folder: str | Path, manager=None) -> LmEvalRun:
    """Evaluate one variant with lm-eval, or reuse its results when they exist with the same settings."""
    folder = Path(folder)
    chat = settings.chat_for(variant.lm.tokenizer)
    manager = with_prompt_style(manager or task_manager(settings), settings, chat)
    key = {"settings": settings.lm_eval_key(chat), "variant": _variant_key(variant)}
    instruction = system_instruction(variant, settings)
    if instruction is not None:  # only when given: the keys of runs without one stay as they were
        key["system_instruction"] = instruction
    if getattr(manager, "metadata", None):
        key["metadata"] = metadata_key(manager.metadata)
    marker = folder / EVAL_RUN
    if marker.is_file() and read_json(marker).get("key_sha256") == sha256_json(key):
        log.info("%s: lm-eval results found in %s (same settings): not re-run", variant.name, folder)
        return LmEvalRun.load(variant.name, folder)
    cached = results_cache_folder(variant, key) if settings.results_cache else None
    if cached is not None and (cached / EVAL_RUN).is_file():
        log.info("%s: the same model's lm-eval results found in the results cache (%s): copied, not re-run",
                 variant.name, cached)
        copy_run(cached, folder)
        return LmEvalRun.load(variant.name, folder)
    _run(variant, settings, folder, key, manager)
    if cached is not None:
        copy_run(folder, cached)
    return LmEvalRun.load(variant.name, folder)


def with_prompt_style(manager, settings: EvalSettings, chat: bool):
    """``manager``, or a copy whose tasks ask questions the base-model way (task metadata ``prompt_style: base``,
    eval/hneurons/utils.py) when the chat template is not applied: a model without one (a pre-trained model)
    is asked ``Question: ...\nAnswer:`` and answers up to its first newline, as ``collect`` asks it."""
    metadata = getattr(manager, "metadata", None) or {}
    if chat or metadata.get("prompt_style") == "base":
        return manager
    # one copy per manager and task folders: a dose-response runs 20 or more variants on one manager, and each
    # TaskManager indexes every task folder again (seconds; more with lm-eval's built-in tasks)
    folders = (tuple(settings.task_paths), getattr(settings, "data_dir", None))
    copies = _BASE_STYLE_COPIES.setdefault(manager, {})
    if folders not in copies:
        copies[folders] = task_manager(settings, {**metadata, "prompt_style": "base"})
    return copies[folders]


_BASE_STYLE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # manager -> {folders: its copy}


def results_cache_folder(variant: Variant, key: Mapping[str, Any]) -> Path | None:
    """Where an unedited model's results for ``key`` are kept for every later eval of the same weights (None for
    edited variants: adapters and run-time scalings are evaluated where they are asked for). The key adds a
    sha256 of every weight and of the tokenizer to the run's key, so another checkpoint at the same path, or
    an edit written over it, never hits."""
    if variant.kind != "model":
        return None
    full = {"run": dict(key), "weights_sha256": variant.lm.weights_sha256(),
            "tokenizer_sha256": tokenizer_sha256(variant.lm.tokenizer)}
    return results_cache_root() / sha256_json(full)


def results_cache_root() -> Path:
    """$HNEURONS_RESULTS_CACHE, else $HNEURONS_CACHE/lm_eval (~/.cache/hneurons/lm_eval)."""
    root = os.environ.get("HNEURONS_RESULTS_CACHE")
    return Path(root).expanduser() if root else cache_dir() / "lm_eval"


def tokenizer_sha256(tokenizer: Any) -> str:
    """The vocabulary, the special tokens and the chat template: what turns task text into the same ids."""
    return sha256_json({"vocab": sorted(tokenizer.get_vocab().items()),
                        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
                        "chat_template": getattr(tokenizer, "chat_template", None), "class": type(tokenizer).__name__})


def copy_run(source: Path, target: Path) -> None:
    """Copy one run folder (results, sample logs, marker) into ``target``, atomically."""
    with atomic_dir(target, overwrite=True) as tmp:
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)


def system_instruction(variant: Variant, settings: EvalSettings) -> str | None:
    """The system instruction lm-eval gives ``variant``: its own (the eval's edited role with
    ``edited_system_instruction``), else the settings' ``system_instruction`` (every variant), else None."""
    own = getattr(variant, "system_instruction", None)
    return own if own is not None else getattr(settings, "system_instruction", None)


def lm_eval_model_class(name: str):
    """The lm-eval model class behind ``EvalSettings.lm_eval_model``."""
    if name == "hneurons":
        from .lm_eval_model import HneuronsLM

        return HneuronsLM
    from lm_eval.models.huggingface import HFLM

    return HFLM


def _run(variant: Variant, settings: EvalSettings, folder: Path, key: Mapping[str, Any], manager) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.utils import handle_non_serializable

    log.info("%s: running lm-eval on %s", variant.name, ", ".join(settings.tasks))
    model_class = lm_eval_model_class(settings.lm_eval_model)
    chat = settings.chat_for(variant.lm.tokenizer)
    with variant.active() as module, quiet_lm_eval():
        extra = {"gen_batch_size": settings.gen_batch_size} if settings.lm_eval_model == "hneurons" else {}
        lm = model_class(pretrained=module, tokenizer=variant.lm.tokenizer, batch_size=settings.batch_size, **extra)
        python_seed, numpy_seed, torch_seed, fewshot_seed = settings.seeds
        output = simple_evaluate(
            model=lm, tasks=list(settings.tasks), task_manager=manager, limit=settings.limit,
            bootstrap_iters=settings.lm_eval_bootstrap_iters, log_samples=True, apply_chat_template=chat,
            fewshot_as_multiturn=chat, gen_kwargs=settings.gen_kwargs,
            system_instruction=system_instruction(variant, settings), random_seed=python_seed,
            numpy_random_seed=numpy_seed, torch_random_seed=torch_seed, fewshot_random_seed=fewshot_seed)
    samples = output.pop("samples")
    with atomic_dir(folder, overwrite=True) as tmp:
        for task, items in samples.items():
            with atomic_writer(tmp / samples_name(task)) as handle:
                for sample in items:
                    handle.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
        (tmp / "results.json").write_text(json.dumps(output, indent=2, default=handle_non_serializable,
                                                     ensure_ascii=False) + "\n", encoding="utf-8")
        atomic_write_json(tmp / EVAL_RUN, {"key": key, "key_sha256": sha256_json(key),
                                           "variant": variant.describe(), "provenance": provenance()})


def metadata_key(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Task metadata as resume compares it: files by their sha256 (a new known-facts file means new numbers,
    a new list of the facts to ask means other documents)."""
    return {k: sha256_file(v) if k in ("known_facts", "only_facts") else v for k, v in sorted(metadata.items())}


def _variant_key(variant: Variant) -> dict[str, Any]:
    info = variant.describe()
    info.pop("name")
    if variant.alphas is not None:
        info["alphas_sha256"] = sha256_json(sorted([list(p) + [a] for p, a in variant.alphas.items()]))
    return info


def lm_eval_command(variant: Variant, settings: EvalSettings, output_path: str | Path | None = None,
                    metadata: Mapping[str, Any] | None = None) -> str | None:
    """The lm-eval command line that reproduces ``variant``'s numbers without hneurons' eval code (None for
    hooks): ``hneurons lm-eval --model hneurons ...`` (lm_eval's CLI with the class registered), or plain
    ``lm_eval --model hf ...`` with ``lm_eval_model: hf``."""
    if variant.kind == "hooks":
        return None
    lm = variant.lm
    source = lm.source
    if source.kind == "hub":
        pretrained = f"pretrained={source.path}" + (f",revision={source.revision}" if source.revision else "")
    else:
        # GGUF sources and aliases are read from the converted safetensors folder (bit-identical logits).
        pretrained = f"pretrained={Path(lm.folder or source.path).resolve()}"
    dtype = str(lm.model.dtype).removeprefix("torch.")
    model_args = f"{pretrained},dtype={dtype}"
    if variant.adapter is not None:
        model_args += f",peft={Path(variant.adapter).resolve()}"
    if settings.lm_eval_model == "hneurons":
        model_args += f",gen_batch_size={settings.gen_batch_size}"
    device = str(lm.model.device)
    # --model hneurons needs its class registered: `hneurons lm-eval` is lm_eval's CLI with it (lm_eval_cmd.py)
    program = ["hneurons", "lm-eval"] if settings.lm_eval_model == "hneurons" else ["lm_eval"]
    parts = [*program, "--model", settings.lm_eval_model, "--model_args", model_args, "--tasks", ",".join(settings.tasks)]
    for path in settings.task_paths:
        parts += ["--include_path", str(path)]
    if settings.limit is not None:
        parts += ["--limit", str(settings.limit)]
    parts += ["--batch_size", str(settings.batch_size), "--device", device]
    chat = settings.chat_for(lm.tokenizer)
    if chat:
        parts += ["--apply_chat_template"]
    else:  # the tasks' base-model prompting, as run_lm_eval sets it (with_prompt_style)
        metadata = {**(metadata or {}), "prompt_style": "base"}
    if settings.gen_kwargs:
        parts += ["--gen_kwargs", settings.gen_kwargs]
    instruction = system_instruction(variant, settings)
    if instruction is not None:
        parts += ["--system_instruction", instruction]
    parts += ["--seed", ",".join(str(s) for s in settings.seeds)]
    if metadata:
        parts += ["--metadata", json.dumps(dict(metadata))]
    if output_path is not None:
        parts += ["--output_path", str(output_path), "--log_samples"]
    return shlex.join(parts)


HOOKS_NOTE = ("random-neuron controls (and sweep points) are run-time activation scalings: no plain lm_eval "
              "equivalent unless written out with `hneurons edit`")
