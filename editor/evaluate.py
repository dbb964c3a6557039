"""The eval stage: lm-eval benchmarks for a base model, its edit and random-neuron controls, side by side.

What is evaluated ("variants")
------------------------------
Every variant comes down to one loaded model plus, optionally, a run-time edit:

* ``model``: a checkpoint folder, Hub id, ``.gguf`` file or embedded alias (:func:`editor.loading.load_model`),
  or an in-memory :class:`~editor.loading.LoadedModel`;
* ``adapter``: the base model with a PEFT adapter folder (IA3 / LoRA written by ``hneurons edit``), applied with
  ``peft.PeftModel.from_pretrained`` on the already loaded base and removed again (``unload``) afterwards;
* ``hooks``: the base model with a neuron set scaled at run time (forward pre-hooks,
  :func:`editor.neurons.scaled_neurons`): no weights are written. Random controls and sweep points are hook
  variants, so the base model is loaded once and every hook variant runs on it.

Each variant is run through lm-eval's Python API: ``HFLM(pretrained=<model object>, tokenizer=<tokenizer>,
batch_size=N)`` and ``simple_evaluate`` with a ``TaskManager`` that includes the bundled task folder
``<repo>/eval`` (and any ``include_paths``). Built-in lm-eval task names pass through (built-in tasks are
indexed only when a requested name is not found in the include paths, which saves ~7 s). When every task is
local, ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are set before lm-eval is imported. The chat template is
applied (with ``fewshot_as_multiturn``, as lm-eval's CLI does) when the tokenizer has one, unless told otherwise.

Comparison and statistics (hneurons' choices)
----------------------------------------------
For each task and metric that lm-eval reports, ``higher_is_better`` is read from lm-eval's output. When a
metric is the mean of per-item values (checked: the mean of the logged per-sample values must equal lm-eval's
number), the delta edited - base gets a 95% CI from a paired percentile bootstrap over the same items
(:func:`editor.stats.paired_bootstrap_delta`, ``ci_iters`` resamples, seed ``ci_seed``) and a two-sided bootstrap
p-value
(2 x min(P*(delta <= 0), P*(delta >= 0)), with +1 smoothing). "significant" means the 95% CI excludes 0; no
correction for the number of metrics is applied (read many metrics with that in mind). Metrics that are not
item means (perplexities, corpus-level BLEU/F1) get the delta without a CI (``ci_method`` says which).

Random controls: the same number of neurons as the H-Neuron set, drawn uniformly from all FFN neurons except
the H-Neurons (or, with ``match_layers``, the same count in each layer), one set per seed (``controls`` seeds
starting at ``control_seed``), scaled with the same alphas (control neuron i takes H-Neuron i's alpha). Each
row reports the control's mean, std (ddof=1), min and max over seeds, ``edited_minus_control`` = edited - mean
control, and a paired-bootstrap CI of it against the per-item mean over control seeds.

KL divergence (needs two models, so hneurons computes it itself): neutral prompts
(``eval/data/neutral_prompts.jsonl``: instructions, everyday questions, short texts; no factual trivia) are
rendered with the chat template when there is one; the base model greedily continues each for ``kl_new_tokens``
tokens (stopping at end of turn); on prompt + continuation, KL(base || edited) of the next-token distributions
is computed at every position in float32 (log-softmax), averaged per prompt, then over prompts, with a
percentile bootstrap CI over prompts. The continuations are generated once and shared by every variant.

Output folder (``out``)
-----------------------
* ``eval_results.json`` (format ``hneurons.eval/1``)::

    {"format": "hneurons.eval/1",
     "models": {"base": VARIANT, "edited": VARIANT, "controls": [VARIANT, ...]},   # absent roles are null / []
     "settings": {"tasks", "limit", "batch_size", "apply_chat_template", "gen_kwargs", "seeds", "include_paths",
                  "lm_eval_bootstrap_iters", "ci_iters", "ci_seed", "controls", "control_seed", "match_layers",
                  "alpha", "kl": {...}},
     "tasks": {TASK: {"split", "n_samples", "version", "output_type"}},
     "metrics": [{"task", "metric", "filter", "higher_is_better", "n", "base", "edited", "delta", "delta_ci95",
                  "p_value", "significant", "ci_method",
                  "control": {"mean", "std", "min", "max", "seeds": {SEED: value}} | null,
                  "edited_minus_control", "edited_minus_control_ci95", "edited_minus_control_significant"}],
     "kl": {"mean", "ci95", "n_prompts", "n_positions", "direction": "KL(base || edited)", "prompts_file",
            "prompts_sha256", "new_tokens", "control": {"mean", "std", "min", "max", "seeds"} | null} | null,
     "lm_eval_commands": {"base": CMD | null, "edited": CMD | null, "controls": NOTE | null},
     "files": {...}, "provenance": {...}}

  VARIANT = {"name", "kind": "model"|"adapter"|"hooks", "model": identity, plus "adapter" {path, sha256 of its
  files, edit manifest summary} or "neurons" {sha256, count, per_layer, source_file, seed, match_layers} and
  "alpha" {default, min, max}}. Fields a comparison lacks (e.g. ``base`` in a single-model run) are null.
* ``lm_eval/<variant>/results.json`` (lm-eval's full results dict, without samples), ``samples_<task>.jsonl``
  (lm-eval's per-sample log), ``hneurons_run.json`` (the settings key used to resume: a variant whose results
  exist with the same key is not re-run).
* ``kl/continuations.jsonl`` (prompts and the base model's continuations) and ``kl/<variant>.json`` (per-prompt
  KL values).
* ``eval_deltas.png``: delta per metric with its CI, and the controls' deltas.

The equivalent ``lm_eval`` command is printed for every variant that has one (checkpoints and base + adapter);
hook variants have no plain-CLI equivalent until written out with ``hneurons edit``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .paths import EVAL_DIR
from . import stats
from .artifacts import (atomic_dir, atomic_write_json, atomic_writer, check_no_outside_links, files_sha256,
                        package_versions, provenance, read_json, sha256_file, sha256_json)
from .errors import InputError, ModelLoadError, ModelMismatchError, OutputExistsError
from .loading import LoadedModel, load_model
from .neurons import LayerScale, group_by_layer, scaled_neurons
from .neuronset import NeuronSet, as_neuron_set

log = logging.getLogger(__name__)

EVAL_FORMAT = "hneurons.eval/1"
RESULTS_NAME = "eval_results.json"
REPO_EVAL_DIR = EVAL_DIR
NEUTRAL_PROMPTS = REPO_EVAL_DIR / "data" / "neutral_prompts.jsonl"
DEFAULT_TASKS = ("hneurons",)
LM_EVAL_SEEDS = (0, 1234, 1234, 1234)  # lm-eval's defaults: python, numpy, torch, fewshot
RUN_NAME = "hneurons_run.json"
EDIT_MANIFEST = "hneurons_edit.json"
Pair = tuple[int, int]


# =========================================================================================== settings
@dataclass
class EvalSettings:
    """Everything that decides the numbers. ``lm_eval_key()`` is what resume compares."""

    tasks: Sequence[str] = DEFAULT_TASKS
    limit: int | float | None = None
    batch_size: int = 8
    apply_chat_template: bool | None = None  # None: when the tokenizer has a chat template
    include_paths: Sequence[str | Path] = (REPO_EVAL_DIR,)
    gen_kwargs: str | None = None
    seeds: Sequence[int] = LM_EVAL_SEEDS
    lm_eval_bootstrap_iters: int = 0  # lm-eval's own stderr bootstrap; hneurons' CIs are separate
    ci_iters: int = 10_000
    ci_seed: int = 0
    controls: int = 3
    control_seed: int = 0
    match_layers: bool = False
    kl: bool = True
    kl_prompts: str | Path = NEUTRAL_PROMPTS
    kl_max_prompts: int | None = None
    kl_new_tokens: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = [t for t in self.tasks.split(",") if t]
        self.tasks = [str(t).strip() for t in self.tasks if str(t).strip()]
        if not self.tasks:
            raise InputError("no tasks given; expected task names such as hneurons or truthfulqa_mc2")
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit <= 0):
            raise InputError(f"limit must be a positive number of items (or a fraction < 1), got {self.limit!r}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.controls < 0:
            raise InputError(f"the number of control seeds must be >= 0, got {self.controls}")
        if len(self.seeds) != 4:
            raise InputError(f"seeds must be 4 integers (python, numpy, torch, fewshot), got {list(self.seeds)}")
        if self.kl and not Path(self.kl_prompts).is_file():
            raise InputError(f"KL prompt file not found: {self.kl_prompts} (expected JSONL with a 'prompt' field)")
        self.include_paths = [str(Path(p).resolve()) for p in self.include_paths]
        for path in self.include_paths:
            if not Path(path).is_dir():
                raise InputError(f"task include path not found: {path} (expected a folder of lm-eval task YAMLs)")

    def chat_for(self, tokenizer: Any) -> bool:
        if self.apply_chat_template is not None:
            return bool(self.apply_chat_template)
        return bool(getattr(tokenizer, "chat_template", None))

    def lm_eval_key(self, chat: bool) -> dict[str, Any]:
        """The settings that change lm-eval's numbers, plus a hash of the task files and the package versions."""
        return {"tasks": list(self.tasks), "limit": self.limit, "batch_size": self.batch_size,
                "apply_chat_template": chat, "gen_kwargs": self.gen_kwargs, "seeds": list(self.seeds),
                "bootstrap_iters": self.lm_eval_bootstrap_iters, "task_files_sha256": task_files_hash(self.include_paths),
                "versions": package_versions(("hneurons", "lm-eval", "transformers", "torch", "peft"))}

    def describe(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "limit": self.limit, "batch_size": self.batch_size,
                "apply_chat_template": self.apply_chat_template, "gen_kwargs": self.gen_kwargs,
                "seeds": list(self.seeds), "include_paths": list(self.include_paths),
                "lm_eval_bootstrap_iters": self.lm_eval_bootstrap_iters, "ci_iters": self.ci_iters,
                "ci_seed": self.ci_seed, "controls": self.controls, "control_seed": self.control_seed,
                "match_layers": self.match_layers}


def task_files_hash(include_paths: Iterable[str | Path]) -> str:
    """sha256 over every task file (YAML, Python, data) in the include paths: changed tasks mean new numbers."""
    digests = {}
    for root in include_paths:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".py", ".json", ".jsonl", ".txt", ".csv"):
                digests[str(path)] = sha256_file(path)
    return sha256_json(digests)


# ============================================================================================ variants
@dataclass
class Variant:
    """One model to evaluate: a loaded model, optionally with an adapter or a run-time neuron scaling."""

    name: str
    lm: LoadedModel
    adapter: Path | None = None
    neurons: NeuronSet | None = None
    alphas: Mapping[Pair, float] | None = None
    seed: int | None = None  # control seed
    match_layers: bool = False

    @property
    def kind(self) -> str:
        return "hooks" if self.neurons is not None else "adapter" if self.adapter is not None else "model"

    def scales(self) -> dict[int, LayerScale]:
        assert self.neurons is not None and self.alphas is not None
        return group_by_layer(self.neurons.neurons, self.alphas)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "model": self.lm.identity()}
        if self.adapter is not None:
            info["adapter"] = describe_adapter(self.adapter)
        if self.neurons is not None:
            info["neurons"] = {"sha256": self.neurons.sha256, "count": len(self.neurons),
                               "per_layer": {str(k): v for k, v in self.neurons.per_layer().items()},
                               "source_file": str(self.neurons.path) if self.neurons.path else None,
                               "seed": self.seed, "match_layers": self.match_layers if self.seed is not None else None}
            values = list((self.alphas or {}).values())
            info["alpha"] = {"min": min(values), "max": max(values),
                             "default": values[0] if len(set(values)) == 1 else None}
        return info

    @contextlib.contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        """The module to evaluate, with the edit applied for the duration of the block."""
        if self.kind == "hooks":
            with scaled_neurons(self.lm.model, self.scales()):
                yield self.lm.model
        elif self.kind == "adapter":
            with peft_applied(self.lm.model, self.adapter) as wrapped:
                yield wrapped
        else:
            yield self.lm.model


def describe_adapter(folder: Path) -> dict[str, Any]:
    files = [n for n in ("adapter_config.json", "adapter_model.safetensors") if (folder / n).is_file()]
    info: dict[str, Any] = {"path": str(folder), "sha256": files_sha256(folder, files)}
    manifest = folder / EDIT_MANIFEST
    if manifest.is_file():
        doc = read_json(manifest, "edit manifest")
        info["edit"] = {k: doc.get(k) for k in ("format", "mode", "alpha")} | {
            "neurons_sha256": (doc.get("neurons") or {}).get("sha256")}
    return info


@contextlib.contextmanager
def peft_applied(model: torch.nn.Module, adapter: Path) -> Iterator[torch.nn.Module]:
    """Wrap ``model`` with the adapter in place; on exit remove the adapter layers again (no merge)."""
    from peft import PeftModel

    folder = Path(adapter).resolve()  # a relative path would be taken for a Hub id
    if not (folder / "adapter_config.json").is_file():
        raise InputError(f"adapter folder {adapter} has no adapter_config.json; expected a PEFT adapter written by "
                         f"`hneurons edit --mode ia3|lora`")
    if not (folder / "adapter_model.safetensors").is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        what = f"only the pickled {pickled[0]}: unpickling can run arbitrary code, so hneurons refuses it; convert " \
               f"it to safetensors" if pickled else "no weights"
        raise ModelLoadError(f"adapter folder {adapter} has no adapter_model.safetensors ({what})")
    wrapped = PeftModel.from_pretrained(model, str(folder))
    wrapped.eval()
    try:
        yield wrapped
    finally:
        wrapped.unload()  # puts the original modules back into ``model``


def edit_folder_neurons(folder: str | Path) -> tuple[NeuronSet, dict[Pair, float]] | None:
    """The neuron set and alphas an ``hneurons edit`` folder records (for the random controls), if any."""
    folder = Path(folder)
    manifest, neurons = folder / EDIT_MANIFEST, folder / "neurons.json"
    if not (manifest.is_file() and neurons.is_file()):
        return None
    alpha = read_json(manifest, "edit manifest").get("alpha") or {}
    nset = NeuronSet.load(neurons)
    layer_alpha = {int(k): v for k, v in (alpha.get("per_layer") or {}).items()}
    return nset, nset.alphas(alpha.get("default", 0.0), layer_alpha)


# ===================================================================================== random controls
def random_control(nset: NeuronSet, num_layers: int, d_ff: int, seed: int, match_layers: bool = False) -> NeuronSet:
    """As many random FFN neurons as ``nset``, none of them in ``nset``.

    Uniform over all layers x d_ff neurons, or (``match_layers``) the same count in each layer as ``nset``.
    The draw is a function of the seed alone (numpy PCG64), so a control can be re-created exactly.
    """
    rng = np.random.default_rng(seed)
    taken = {layer * d_ff + index for layer, index in nset.neurons}
    if match_layers:
        pairs: list[Pair] = []
        for layer, count in nset.per_layer().items():
            free = np.setdiff1d(np.arange(d_ff), [j for l, j in nset.neurons if l == layer])
            if len(free) < count:
                raise InputError(f"layer {layer} has only {len(free)} neurons outside the set; cannot draw {count}")
            pairs += [(layer, int(j)) for j in rng.choice(free, size=count, replace=False)]
    else:
        free = np.setdiff1d(np.arange(num_layers * d_ff), sorted(taken))
        if len(free) < len(nset):
            raise InputError(f"the model has only {len(free)} FFN neurons outside the set; cannot draw {len(nset)}")
        pairs = [(int(f) // d_ff, int(f) % d_ff) for f in rng.choice(free, size=len(nset), replace=False)]
    return NeuronSet.from_pairs(pairs)


def control_alphas(nset: NeuronSet, alphas: Mapping[Pair, float], control: NeuronSet,
                   match_layers: bool) -> dict[Pair, float]:
    """Control neuron i takes H-Neuron i's alpha (within each layer when matched), so alpha mixes are kept."""
    if not match_layers:
        return {c: alphas[h] for c, h in zip(control.neurons, nset.neurons)}
    out: dict[Pair, float] = {}
    for layer in nset.per_layer():
        own = [p for p in nset.neurons if p[0] == layer]
        drawn = [p for p in control.neurons if p[0] == layer]
        out.update({c: alphas[h] for c, h in zip(drawn, own)})
    return out


def control_variants(base: LoadedModel, nset: NeuronSet, alphas: Mapping[Pair, float], seeds: Iterable[int],
                     match_layers: bool, prefix: str = "control") -> list[Variant]:
    variants = []
    for seed in seeds:
        control = random_control(nset, base.num_layers, base.d_ff, seed, match_layers)
        variants.append(Variant(f"{prefix}-seed{seed}", base, neurons=control,
                                alphas=control_alphas(nset, alphas, control, match_layers), seed=seed,
                                match_layers=match_layers))
    return variants


# ================================================================================== running lm-eval
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
    local = local_task_names(settings.include_paths)
    needs_builtin = any(t not in local for t in settings.tasks)
    if not needs_builtin:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return needs_builtin


def task_manager(settings: EvalSettings):
    needs_builtin = prepare_environment(settings)
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=list(settings.include_paths), include_defaults=needs_builtin)
    unknown = [t for t in settings.tasks if t not in manager.all_tasks]
    if unknown:
        where = ", ".join(settings.include_paths)
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

    def per_item(self, task: str, metric: str, filt: str) -> dict[int, float] | None:
        """doc_id -> the sample's value of ``metric`` (None when values are not plain numbers)."""
        values: dict[int, float] = {}
        with open(self.folder / samples_name(task), encoding="utf-8") as handle:
            for line in handle:
                sample = json.loads(line)
                if sample.get("filter", "none") != filt or metric not in sample:
                    continue
                value = sample[metric]
                if isinstance(value, bool):
                    value = float(value)
                if not isinstance(value, (int, float)):
                    return None
                values[int(sample["doc_id"])] = float(value)
        return values

    def split_of(self, task: str) -> str | None:
        return task_split(self.results.get("configs", {}).get(task, {}))


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
    key = {"settings": settings.lm_eval_key(chat), "variant": _variant_key(variant)}
    marker = folder / RUN_NAME
    if marker.is_file() and read_json(marker).get("key_sha256") == sha256_json(key):
        log.info("%s: lm-eval results found in %s (same settings): not re-run", variant.name, folder)
        return LmEvalRun.load(variant.name, folder)
    manager = manager or task_manager(settings)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    log.info("%s: running lm-eval on %s", variant.name, ", ".join(settings.tasks))
    with variant.active() as module:
        lm = HFLM(pretrained=module, tokenizer=variant.lm.tokenizer, batch_size=settings.batch_size)
        python_seed, numpy_seed, torch_seed, fewshot_seed = settings.seeds
        output = simple_evaluate(
            model=lm, tasks=list(settings.tasks), task_manager=manager, limit=settings.limit,
            bootstrap_iters=settings.lm_eval_bootstrap_iters, log_samples=True, apply_chat_template=chat,
            fewshot_as_multiturn=chat, gen_kwargs=settings.gen_kwargs, random_seed=python_seed,
            numpy_random_seed=numpy_seed, torch_random_seed=torch_seed, fewshot_random_seed=fewshot_seed)
    samples = output.pop("samples")
    with atomic_dir(folder, overwrite=True) as tmp:
        for task, items in samples.items():
            with atomic_writer(tmp / samples_name(task)) as handle:
                for sample in items:
                    handle.write(json.dumps(sample, default=handle_non_serializable, ensure_ascii=False) + "\n")
        (tmp / "results.json").write_text(json.dumps(output, indent=2, default=handle_non_serializable,
                                                     ensure_ascii=False) + "\n", encoding="utf-8")
        atomic_write_json(tmp / RUN_NAME, {"key": key, "key_sha256": sha256_json(key),
                                           "variant": variant.describe(), "provenance": provenance()})
    return LmEvalRun.load(variant.name, folder)


def _variant_key(variant: Variant) -> dict[str, Any]:
    info = variant.describe()
    info.pop("name")
    if variant.alphas is not None:
        info["alphas_sha256"] = sha256_json(sorted([list(p) + [a] for p, a in variant.alphas.items()]))
    return info


# ========================================================================= the equivalent lm_eval CLI
def lm_eval_command(variant: Variant, settings: EvalSettings, output_path: str | Path | None = None) -> str | None:
    """The ``lm_eval`` command line that reproduces ``variant``'s numbers without hneurons (None for hooks)."""
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
    device = str(lm.model.device)
    parts = ["lm_eval", "--model", "hf", "--model_args", model_args, "--tasks", ",".join(settings.tasks)]
    for path in settings.include_paths:
        parts += ["--include_path", str(path)]
    if settings.limit is not None:
        parts += ["--limit", str(settings.limit)]
    parts += ["--batch_size", str(settings.batch_size), "--device", device]
    if settings.chat_for(lm.tokenizer):
        parts += ["--apply_chat_template"]
    if settings.gen_kwargs:
        parts += ["--gen_kwargs", settings.gen_kwargs]
    parts += ["--seed", ",".join(str(s) for s in settings.seeds)]
    if output_path is not None:
        parts += ["--output_path", str(output_path), "--log_samples"]
    return shlex.join(parts)


HOOKS_NOTE = ("random-neuron controls (and sweep points) are run-time activation scalings: no plain lm_eval "
              "equivalent unless written out with `hneurons edit`")


# ===================================================================================== statistics
def paired_bootstrap(base: Sequence[float], edited: Sequence[float], iters: int, seed: int
                     ) -> tuple[list[float] | None, float | None]:
    """95% percentile CI of mean(edited - base) over resampled items and the two-sided bootstrap p-value
    (:func:`editor.stats.paired_bootstrap_delta`); (None, None) when there is nothing to resample."""
    if len(base) == 0 or iters <= 0:
        return None, None
    result = stats.paired_bootstrap_delta(base, edited, n_boot=iters, seed=seed)
    return list(result["ci"]), result["p_value"]


def mean_ci(values: Sequence[float], iters: int, seed: int) -> list[float] | None:
    """95% percentile bootstrap CI of the mean (:func:`editor.stats.bootstrap_ci`)."""
    if len(values) == 0 or iters <= 0:
        return None
    return list(stats.bootstrap_ci(lambda v: v.mean(axis=-1), np.asarray(values, dtype=np.float64), n_boot=iters,
                                   seed=seed))


def spread(values: Sequence[float]) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "min": float(arr.min()), "max": float(arr.max())}


# ====================================================================================== comparison
def _paired(a: Mapping[int, float], b: Mapping[int, float], what: str) -> list[int]:
    if set(a) != set(b):
        raise InputError(f"{what}: the runs scored different items ({len(a)} vs {len(b)} docs); were they run with "
                         f"the same tasks and limit?")
    return sorted(a)


def _is_item_mean(run: LmEvalRun, task: str, metric: str, filt: str, items: Mapping[int, float] | None) -> bool:
    value = run.value(task, metric, filt)
    return bool(items) and value is not None and math.isclose(float(np.mean(list(items.values()))), value,
                                                              rel_tol=1e-9, abs_tol=1e-9)


def compare_runs(base: LmEvalRun | None, edited: LmEvalRun | None, controls: Sequence[LmEvalRun] = (),
                 control_seeds: Sequence[int] = (), ci_iters: int = 10_000, ci_seed: int = 0) -> list[dict[str, Any]]:
    """One row per (task, metric, filter): base, edited, delta with a paired-bootstrap CI, and the controls."""
    ref = edited or base
    if ref is None:
        raise InputError("nothing to compare: neither a base nor an edited run")
    rows = []
    for task in ref.leaf_tasks():
        for metric, filt in ref.metric_keys(task):
            rows.append(_row(base, edited, controls, control_seeds, task, metric, filt, ci_iters, ci_seed))
    return rows


def _row(base, edited, controls, control_seeds, task, metric, filt, ci_iters, ci_seed) -> dict[str, Any]:
    ref = edited or base
    row: dict[str, Any] = {
        "task": task, "metric": metric, "filter": filt, "higher_is_better": ref.higher_is_better(task, metric),
        "n": ref.results.get("n-samples", {}).get(task, {}).get("effective"),
        "base": base.value(task, metric, filt) if base else None,
        "edited": edited.value(task, metric, filt) if edited else None,
        "delta": None, "delta_ci95": None, "p_value": None, "significant": None, "ci_method": None,
        "control": None, "edited_minus_control": None, "edited_minus_control_ci95": None,
        "edited_minus_control_significant": None,
    }
    if base is None or edited is None:
        return row
    row["delta"] = row["edited"] - row["base"]
    items_base, items_edit = base.per_item(task, metric, filt), edited.per_item(task, metric, filt)
    pairable = _is_item_mean(base, task, metric, filt, items_base) and _is_item_mean(edited, task, metric, filt,
                                                                                      items_edit)
    docs: list[int] = []
    if pairable:
        docs = _paired(items_base, items_edit, f"{task} {metric}")
        row["n"] = len(docs)
        ci, p = paired_bootstrap(np.array([items_base[d] for d in docs]), np.array([items_edit[d] for d in docs]),
                                 ci_iters, ci_seed)
        row.update(delta_ci95=ci, p_value=p, significant=None if ci is None else not (ci[0] <= 0 <= ci[1]),
                   ci_method="paired bootstrap over items" if ci else None)
    else:
        row["ci_method"] = "none: the metric is not a mean of per-item values"
    if controls:
        _control_columns(row, controls, control_seeds, task, metric, filt, items_edit if pairable else None, docs,
                         ci_iters, ci_seed)
    return row


def _control_columns(row, controls, seeds, task, metric, filt, items_edit, docs, ci_iters, ci_seed) -> None:
    values = [c.value(task, metric, filt) for c in controls]
    if any(v is None for v in values):
        return
    row["control"] = spread(values) | {"seeds": {str(s): v for s, v in zip(seeds, values)}}
    row["edited_minus_control"] = row["edited"] - row["control"]["mean"]
    if items_edit is None:
        return
    per_control = [c.per_item(task, metric, filt) for c in controls]
    if any(p is None for p in per_control):
        return
    for i, p in enumerate(per_control):
        _paired(items_edit, p, f"{task} {metric} control {seeds[i] if i < len(seeds) else i}")
    control_mean = np.array([np.mean([p[d] for p in per_control]) for d in docs])
    ci, _ = paired_bootstrap(control_mean, np.array([items_edit[d] for d in docs]), ci_iters, ci_seed + 1)
    row["edited_minus_control_ci95"] = ci
    row["edited_minus_control_significant"] = None if ci is None else not (ci[0] <= 0 <= ci[1])


# ================================================================================================ KL
def read_neutral_prompts(path: str | Path = NEUTRAL_PROMPTS, limit: int | None = None) -> list[str]:
    """The ``prompt`` field of each JSONL line (a plain-text file with one prompt per line also works)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"KL prompt file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
                raise InputError(f'{path}:{number}: expected an object with a non-empty "prompt" string')
            prompts.append(record["prompt"])
        else:
            prompts.append(line.strip())
    if not prompts:
        raise InputError(f"KL prompt file {path} holds no prompts")
    return prompts[:limit] if limit else prompts


def render_prompt_ids(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    out = []
    for prompt in prompts:
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            out.append(tokenizer(prompt)["input_ids"])
    return out


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    return {int(i) for i in ids + [lm.tokenizer.eos_token_id] if i is not None}


def _pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


@torch.no_grad()
def greedy_continuations(lm: LoadedModel, prompt_ids: Sequence[list[int]], new_tokens: int,
                         batch_size: int) -> list[list[int]]:
    """The base model's greedy continuation of each prompt (left-padded batches), cut after end of turn."""
    from tqdm.auto import tqdm

    pad, eos, device = _pad_id(lm.tokenizer), _eos_ids(lm), lm.model.device
    out: list[list[int]] = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="KL: base continuations", disable=None):
        batch = prompt_ids[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        generated = lm.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                                      do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        for row in generated[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            out.append(row[:cut])
    return out


@dataclass
class KLSequences:
    """Prompt + base continuation token ids, shared by every variant's KL."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]

    @property
    def sequences(self) -> list[list[int]]:
        return [p + c for p, c in zip(self.prompt_ids, self.continuation_ids)]


def kl_sequences(base: LoadedModel, settings: EvalSettings) -> KLSequences:
    prompts = read_neutral_prompts(settings.kl_prompts, settings.kl_max_prompts)
    prompt_ids = render_prompt_ids(base.tokenizer, prompts, settings.chat_for(base.tokenizer))
    continuations = greedy_continuations(base, prompt_ids, settings.kl_new_tokens, settings.batch_size)
    return KLSequences(prompts, prompt_ids, continuations)


Forward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _logits(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=mask).logits.float()


@contextlib.contextmanager
def paired_forward(base: Variant, edited: Variant) -> Iterator[Forward]:
    """A function batch -> (base logits, edited logits), each edit switched on only for its own pass."""
    if edited.kind == "hooks" and edited.lm is base.lm:
        scales = edited.scales()

        def hooks(ids, mask):
            reference = _logits(base.lm.model, ids, mask)
            with scaled_neurons(base.lm.model, scales):
                return reference, _logits(base.lm.model, ids, mask)

        yield hooks
    elif edited.kind == "adapter" and edited.lm is base.lm:
        with edited.active() as wrapped:
            def adapter(ids, mask):
                with wrapped.disable_adapter():
                    reference = _logits(wrapped, ids, mask)
                return reference, _logits(wrapped, ids, mask)

            yield adapter
    elif edited.kind == "model" and base.kind == "model":
        yield lambda ids, mask: (_logits(base.lm.model, ids, mask), _logits(edited.lm.model, ids, mask))
    else:
        raise InputError(f"KL of {edited.name} ({edited.kind}) against {base.name} ({base.kind}): an adapter or "
                         f"run-time edit must be on the base model itself")


@torch.no_grad()
def kl_per_sequence(forward: Forward, sequences: Sequence[list[int]], pad: int, device: torch.device,
                    batch_size: int) -> list[float]:
    """Mean over positions of KL(base || edited) of the next-token distributions, one value per sequence."""
    values: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start:start + batch_size]
        width = max(len(s) for s in batch)
        # Right padding keeps every real token at its natural position (no position ids needed).
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        base_logits, edited_logits = forward(ids, mask)
        log_p = torch.log_softmax(base_logits, dim=-1)
        log_q = torch.log_softmax(edited_logits, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)  # clamp: float rounding below 0
        kl = (kl * mask).sum(1) / mask.sum(1)
        values += kl.tolist()
    return values


def kl_divergence(base: Variant, edited: Variant, seqs: KLSequences, batch_size: int) -> list[float]:
    if edited.lm.architecture_hash != base.lm.architecture_hash:
        raise ModelMismatchError(f"KL needs the same vocabulary and layout: {edited.name} has architecture hash "
                                 f"{edited.lm.architecture_hash}, {base.name} {base.lm.architecture_hash}")
    with paired_forward(base, edited) as forward:
        return kl_per_sequence(forward, seqs.sequences, _pad_id(base.lm.tokenizer), base.lm.model.device,
                               batch_size)


def kl_summary(values: Sequence[float], ci_iters: int, ci_seed: int) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "ci95": mean_ci(values, ci_iters, ci_seed), "n_prompts": len(values)}


def write_kl_files(folder: Path, seqs: KLSequences, tokenizer: Any, per_variant: Mapping[str, list[float]]) -> None:
    with atomic_writer(folder / "continuations.jsonl") as handle:
        for prompt, p_ids, c_ids in zip(seqs.prompts, seqs.prompt_ids, seqs.continuation_ids):
            handle.write(json.dumps({"prompt": prompt, "prompt_tokens": len(p_ids),
                                     "continuation": tokenizer.decode(c_ids, skip_special_tokens=False),
                                     "continuation_tokens": len(c_ids)}, ensure_ascii=False) + "\n")
    for name, values in per_variant.items():
        atomic_write_json(folder / f"{name}.json", {"direction": "KL(base || variant), nats, mean over positions",
                                                    "per_prompt": values})


# ================================================================================ the whole comparison
@dataclass
class EvalReport:
    out: Path
    results: dict[str, Any]

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.results["metrics"]

    def table(self) -> str:
        return render_table(self.results)


def _load(spec: str | LoadedModel | None, load_kwargs: Mapping[str, Any]) -> LoadedModel | None:
    if spec is None or isinstance(spec, LoadedModel):
        return spec
    return load_model(str(spec), **load_kwargs)


def resolve_neurons(neurons: Any, alpha: float | None, lm: LoadedModel, force: bool = False,
                    layer_alpha: Mapping[int, float] | None = None) -> tuple[NeuronSet, dict[Pair, float]]:
    nset = as_neuron_set(neurons)
    nset.validate(lm, force=force)
    return nset, nset.alphas(0.0 if alpha is None else alpha, layer_alpha)


def check_edit_source(folder: str | Path | None, base: LoadedModel, force: bool) -> None:
    """An ``hneurons edit`` folder records the model it was made from: it must be the base compared with."""
    manifest = Path(folder) / EDIT_MANIFEST if folder else None
    if manifest is None or not manifest.is_file():
        return
    source = read_json(manifest, "edit manifest").get("model") or {}
    recorded = source.get("weights_fingerprint")
    if recorded and recorded != base.fingerprint and not force:
        raise ModelMismatchError(f"{folder} was made from {source.get('source', {}).get('spec', '?')} (fingerprint "
                                 f"{recorded}), but the base model given is {base.source.spec} (fingerprint "
                                 f"{base.fingerprint}); compare an edit with the model it was made from, or pass "
                                 f"--force")


def check_combination(base: Any, edited: Any, adapter: Any, neurons: Any, alpha: float | None) -> None:
    """The combinations :func:`evaluate` accepts, checked before anything is loaded."""
    if (adapter is not None or neurons is not None) and base is None:
        raise InputError("an adapter or a neuron set is applied to a base model: give --base")
    if base is None and edited is None:
        raise InputError("nothing to evaluate: give a model (--model) and/or a base model (--base)")
    if adapter is not None and edited is not None:
        raise InputError("give either an edited model (--model) or an adapter (--adapter), not both")
    if alpha is not None and neurons is None and adapter is None and edited is None:
        raise InputError("--alpha needs a neuron set (--neurons)")


def build_variants(base: LoadedModel | None, edited: LoadedModel | None, adapter: str | Path | None,
                   neurons: Any, alpha: float | None, settings: EvalSettings, force: bool = False
                   ) -> tuple[Variant | None, Variant | None, list[Variant], tuple[NeuronSet, dict] | None]:
    """Decide what is compared from what was given (see :func:`evaluate`)."""
    check_combination(base, edited, adapter, neurons, alpha)
    base_v = Variant("base", base) if base is not None else None
    edited_v = None
    recorded = None  # the neuron set an edit folder records, for the controls
    if edited is not None:
        edited_v = Variant("edited", edited)
        if edited.folder and edited.source.kind == "folder":
            recorded = edit_folder_neurons(edited.folder)
    elif adapter is not None:
        edited_v = Variant("edited", base, adapter=Path(adapter).resolve())
        recorded = edit_folder_neurons(adapter)
    neuron_info = None
    if neurons is not None:
        nset_alphas = resolve_neurons(neurons, alpha, base, force)
        if alpha is None and recorded is not None and recorded[0].sha256 == nset_alphas[0].sha256:
            nset_alphas = (nset_alphas[0], recorded[1])  # the same set as the edit's: its alphas too
        neuron_info = nset_alphas
        if edited_v is None:
            edited_v = Variant("edited", base, neurons=nset_alphas[0], alphas=nset_alphas[1])
    elif recorded is not None and base is not None:
        recorded[0].validate(base, force=force)  # located in the base model: same layout and weights
        neuron_info = recorded
    if base is not None and edited_v is not None and edited_v.kind != "hooks":
        check_edit_source(edited.folder if edited is not None else adapter, base, force)
    if alpha is not None and neurons is None and recorded is None:
        raise InputError("--alpha needs a neuron set (--neurons, or an `hneurons edit` folder that records one)")
    if base is not None and edited_v is not None and edited_v.lm.architecture_hash != base.architecture_hash:
        raise ModelMismatchError(f"the edited model ({edited_v.lm.source.spec}) and the base model "
                                 f"({base.source.spec}) have different architectures (hashes "
                                 f"{edited_v.lm.architecture_hash} vs {base.architecture_hash}); compare an edit "
                                 f"with the model it was made from")
    controls: list[Variant] = []
    if settings.controls and neuron_info is not None and base is not None and edited_v is not None:
        seeds = range(settings.control_seed, settings.control_seed + settings.controls)
        controls = control_variants(base, neuron_info[0], neuron_info[1], seeds, settings.match_layers)
    return base_v, edited_v, controls, neuron_info


def evaluate(
    base: str | LoadedModel | None = None,
    edited: str | LoadedModel | None = None,
    *,
    adapter: str | Path | None = None,
    neurons: Any = None,
    alpha: float | None = None,
    settings: EvalSettings | None = None,
    out: str | Path,
    overwrite: bool = False,
    force: bool = False,
    load_kwargs: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Evaluate base and edited models side by side and write ``out/eval_results.json``.

    What is compared:

    * ``edited`` (a checkpoint, e.g. written by ``hneurons edit``) against ``base``;
    * ``base`` + ``adapter`` (a PEFT folder) against ``base``;
    * ``base`` with ``neurons`` scaled by ``alpha`` at run time against ``base``;
    * one model alone (only ``base`` or only ``edited``): its numbers, no deltas.

    Random controls (``settings.controls`` seeds) need a neuron set: ``neurons`` (+ ``alpha``), or the
    ``neurons.json`` and alpha recorded in an ``hneurons edit`` folder given as ``edited`` or ``adapter``.
    Models are given as specs (loaded with ``load_kwargs``) or as loaded models (evaluated in memory).
    Re-running into the same ``out`` reuses every variant whose lm-eval results exist with the same settings;
    an ``out`` holding results of other settings is an error unless ``overwrite``.
    """
    settings = settings or EvalSettings()
    prepare_environment(settings)
    out = Path(out)
    check_out(out, settings, overwrite)
    check_combination(base, edited, adapter, neurons, alpha)
    load_kwargs = dict(load_kwargs or {})
    base_lm = _load(base, load_kwargs)
    edited_lm = _load(edited, load_kwargs)
    base_v, edited_v, controls, neuron_info = build_variants(base_lm, edited_lm, adapter, neurons, alpha, settings,
                                                             force)
    manager = task_manager(settings)
    runs = {v.name: run_lm_eval(v, settings, out / "lm_eval" / v.name, manager)
            for v in [base_v, edited_v, *controls] if v is not None}
    seeds = [c.seed for c in controls]
    rows = compare_runs(runs.get("base"), runs.get("edited"), [runs[c.name] for c in controls], seeds,
                        settings.ci_iters, settings.ci_seed)
    kl = _kl_block(base_v, edited_v, controls, settings, out / "kl") if base_v and edited_v and settings.kl else None
    results = _results_doc(base_v, edited_v, controls, settings, runs, rows, kl, alpha, neuron_info)
    results["files"] = {"plot": plot_deltas(out, rows) if base_v and edited_v else None}
    atomic_write_json(out / RESULTS_NAME, results)
    return EvalReport(out, results)


def check_out(out: Path, settings: EvalSettings, overwrite: bool, name: str = RESULTS_NAME,
              what: str = "results") -> None:
    """Refuse to mix results of other tasks / limit / seeds into ``out`` unless overwriting."""
    check_no_outside_links(out)
    existing = out / name
    if existing.is_file() and not overwrite:
        previous = read_json(existing, f"previous {what}").get("settings", {})
        if {k: previous.get(k) for k in ("tasks", "limit", "seeds")} != {
                "tasks": list(settings.tasks), "limit": settings.limit, "seeds": list(settings.seeds)}:
            raise OutputExistsError(f"{existing} holds {what} of other settings (tasks/limit/seeds); pass "
                                    f"--overwrite to replace them, or choose another --out")


def _kl_block(base_v: Variant, edited_v: Variant, controls: Sequence[Variant], settings: EvalSettings,
              folder: Path) -> dict[str, Any]:
    seqs = kl_sequences(base_v.lm, settings)
    per_variant = {edited_v.name: kl_divergence(base_v, edited_v, seqs, settings.batch_size)}
    for control in controls:
        per_variant[control.name] = kl_divergence(base_v, control, seqs, settings.batch_size)
    write_kl_files(folder, seqs, base_v.lm.tokenizer, per_variant)
    block = kl_summary(per_variant[edited_v.name], settings.ci_iters, settings.ci_seed)
    block.update(direction="KL(base || edited), nats per position, mean over positions then prompts",
                 n_positions=sum(len(s) for s in seqs.sequences), prompts_file=str(Path(settings.kl_prompts).resolve()),
                 prompts_sha256=sha256_file(settings.kl_prompts), new_tokens=settings.kl_new_tokens,
                 chat_template=settings.chat_for(base_v.lm.tokenizer), control=None)
    if controls:
        means = [float(np.mean(per_variant[c.name])) for c in controls]
        block["control"] = spread(means) | {"seeds": {str(c.seed): m for c, m in zip(controls, means)}}
    return block


def _results_doc(base_v, edited_v, controls, settings, runs, rows, kl, alpha, neuron_info) -> dict[str, Any]:
    ref = runs.get("edited") or runs.get("base")
    tasks = {t: {"split": ref.split_of(t), "n_samples": ref.results.get("n-samples", {}).get(t),
                 "version": ref.results.get("versions", {}).get(t),
                 "output_type": ref.results.get("configs", {}).get(t, {}).get("output_type")}
             for t in ref.leaf_tasks()}
    commands = {
        "base": lm_eval_command(base_v, settings, "lm_eval_cli/base") if base_v else None,
        "edited": (lm_eval_command(edited_v, settings, "lm_eval_cli/edited") if edited_v and edited_v.kind != "hooks"
                   else HOOKS_NOTE if edited_v else None),
        "controls": HOOKS_NOTE if controls else None,
    }
    described = settings.describe()
    described["apply_chat_template"] = settings.chat_for((edited_v or base_v).lm.tokenizer)
    described["alpha"] = alpha
    described["kl"] = {"enabled": settings.kl, "prompts": str(settings.kl_prompts), "max_prompts": settings.kl_max_prompts,
                       "new_tokens": settings.kl_new_tokens}
    return {
        "format": EVAL_FORMAT,
        "models": {"base": base_v.describe() if base_v else None, "edited": edited_v.describe() if edited_v else None,
                   "controls": [c.describe() for c in controls]},
        "settings": described,
        "tasks": tasks,
        "metrics": rows,
        "kl": kl,
        "lm_eval_commands": commands,
        "provenance": provenance(),
    }


# ========================================================================================== rendering
def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def render_table(results: Mapping[str, Any]) -> str:
    """The comparison as a plain-text table (what ``hneurons eval`` prints)."""
    header = ["task", "metric", "dir", "n", "base", "edited", "delta", "95% CI", "sig", "control d (sd)",
              "edit-ctrl"]
    lines = [header]
    for row in results["metrics"]:
        direction = {True: "up", False: "down", None: "?"}[row["higher_is_better"]]
        ci = row["delta_ci95"]
        ctrl = row.get("control")
        ctrl_text = "-"
        if ctrl and row["base"] is not None:
            sd = f" ({ctrl['std']:.3f})" if ctrl.get("std") is not None else ""
            ctrl_text = f"{ctrl['mean'] - row['base']:+.3f}{sd}"
        edit_ctrl = _fmt(row.get("edited_minus_control"), signed=True)
        if row.get("edited_minus_control_significant"):
            edit_ctrl += "*"
        lines.append([row["task"], row["metric"] + ("" if row["filter"] == "none" else f" [{row['filter']}]"),
                      direction, str(row["n"] if row["n"] is not None else "-"), _fmt(row["base"]),
                      _fmt(row["edited"]), _fmt(row["delta"], signed=True),
                      f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-",
                      {True: "yes", False: "no", None: "-"}[row["significant"]], ctrl_text, edit_ctrl])
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
    if any(r.get("control") for r in results["metrics"]):
        text.append("control d = mean control - base (sd over seeds); edit-ctrl = edited - mean control "
                    "(* = 95% CI excludes 0)")
    return "\n".join(text)


def plot_deltas(out: Path, rows: Sequence[Mapping[str, Any]], name: str = "eval_deltas.png") -> str | None:
    """Horizontal bars: edited - base per metric with its 95% CI; diamonds: each control's delta."""
    rows = [r for r in rows if r["delta"] is not None]
    if not rows:
        return None
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4), dpi=110)
    ys = np.arange(len(rows))[::-1]
    deltas = [r["delta"] for r in rows]
    errs = np.array([[r["delta"] - r["delta_ci95"][0], r["delta_ci95"][1] - r["delta"]] if r["delta_ci95"]
                     else [0.0, 0.0] for r in rows]).T
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
    ax.set_xlabel("delta (95% CI, paired bootstrap; red = significant)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = out / name
    tmp = path.with_name(".hneurons-tmp-" + name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return name
