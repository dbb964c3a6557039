"""Settings of the eval stage and of the alpha sweep: the recipe's ``eval`` and ``sweep`` sections, the
arguments of :func:`editor.evaluate.stage.evaluate` and :func:`editor.evaluate.sweep.sweep`, and the flags of
``hneurons eval`` and ``hneurons sweep``."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..artifacts import package_versions, sha256_file, sha256_json
from ..options import Cli, Settings
from ..paths import EVAL_DIR, NEUTRAL_PROMPTS, bundled_file, portable_path

LM_EVAL_SEEDS = [0, 1234, 1234, 1234]  # lm-eval's defaults: python, numpy, torch, fewshot
DEFAULT_ALPHAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
DEFAULT_SWEEP_TASKS = ["hneurons_val"]  # the validation variants of the bundled tasks (eval/hneurons/*_val.yaml)
DEFAULT_TARGETS = [
    "hneurons_facts:hallucination_rate",
    "hneurons_nonexist:hallucination_rate",
    "hneurons_false_premise:premise_rejection_rate",
    "hneurons_false_premise_mc:acc",
    "hneurons_misleading_context:false_fact_adoption_rate",
    "hneurons_misleading_context_mc:acc",
    "hneurons_sycophancy:flip_rate",
    "hneurons_sycophancy_mc:acc",
]
DEFAULT_KNOWLEDGE = ["hneurons_knowledge_mc:acc", "hneurons_facts:accuracy"]
_METRIC_SPEC = re.compile(r"[^:\s]+:[^:\s]+")


def parse_limit(text: Any) -> int | float | None:
    """Items per task: a count, or a fraction < 1."""
    if text is None or isinstance(text, (int, float)):
        return text
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def parse_seeds(text: Any) -> list[int]:
    """``1234`` (all four) or ``0,1234,1234,1234`` (python, numpy, torch, fewshot)."""
    if isinstance(text, list):
        return text
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts *= 4
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError("--seed must be 1 or 4 integers separated by commas") from None


class EvalSettings(Settings):
    """Everything that decides the eval numbers. ``lm_eval_key()`` is what resume compares."""

    tasks: Annotated[list[str], Cli(many="comma", metavar="TASKS")] = Field(
        ["hneurons"], description="comma-separated lm-eval task or group names")
    limit: Annotated[int | float | None, Cli(parse=parse_limit, metavar="N")] = Field(
        None, description="items per task: a count, or a fraction < 1 (default: all)")
    batch_size: int = Field(8, ge=1, description="lm-eval batch size")
    lm_eval_model: Literal["hneurons", "hf"] = Field(
        "hneurons", description="lm-eval model class: hneurons = lm-eval's hf model with each prompt run once for all "
                                "its choices and greedy generation by the compacting decoder (the same numbers up to "
                                "float rounding, docs/METHOD.md section 8); hf = lm-eval's own")
    gen_batch_size: int = Field(
        64, ge=1, description="generation batch of the hneurons lm-eval model class: finished rows leave it and "
                              "the next prompts join it (so a large batch costs little: on a CPU a decoding step "
                              "reads every weight once whatever the batch); batch_size stays the log-likelihood "
                              "batch")
    results_cache: Annotated[bool, Cli(flag="--no-results-cache", negate=True)] = Field(
        True, description="do not reuse (or store) unedited models' lm-eval results across output folders (the "
                          "cache, under $HNEURONS_CACHE/lm_eval, is keyed by a hash of the weights, the tokenizer, "
                          "the task files and these settings)")
    apply_chat_template: Annotated[bool | None, Cli(flag="--chat-template", negative="--no-chat-template")] = Field(
        None, description="apply the chat template (default: when the tokenizer has one)")
    include_paths: Annotated[list[str], Cli(flag="--include-path", many="repeat", metavar="DIR")] = Field(
        [], description="extra folder of lm-eval task YAMLs (repeatable; the bundled eval/ is always included)")
    gen_kwargs: str | None = Field(None, description="generation overrides passed to lm-eval, e.g. max_gen_toks=64")
    suite: Annotated[list[str], Cli(many="comma", metavar="SUITES")] = Field(
        [], description="benchmark suites added to the tasks: paper (TriviaQA, NQ-Open, FaithEval, FalseQA, "
                        "SycophancyEval, TruthfulQA MC2), retention (MMLU, HellaSwag, ARC, PIQA, WinoGrande, GSM8K)")
    available_only: bool = Field(
        False, description="run the tasks whose data can be read here and list the others (default: refuse them)")
    data_dir: Annotated[str | None, Cli(metavar="DIR")] = Field(
        None, description="folder holding downloaded copies of the paper benchmarks' data (eval/README.md), "
                          "read instead of the Hub / GitHub")
    seeds: Annotated[list[int], Cli(flag="--seed", parse=parse_seeds, metavar="SEEDS")] = Field(
        list(LM_EVAL_SEEDS), description="lm-eval seeds python,numpy,torch,fewshot (default lm-eval's)")
    lm_eval_bootstrap_iters: Annotated[int, Cli(hidden=True)] = Field(
        0, ge=0, description="lm-eval's own stderr bootstrap (hneurons' CIs are separate)")
    paired_test: Literal["auto", "bootstrap"] = Field(
        "auto", description="paired test of every change: auto = exact McNemar mid-p for 0/1 metrics and paired t "
                            "for margins (docs/METHOD.md section 8); bootstrap = the percentile paired bootstrap of "
                            "hneurons 0.1")
    ci_iters: int = Field(10_000, ge=1, description="resamples of every bootstrap CI (KL; --paired-test bootstrap)")
    ci_seed: int = Field(0, description="seed of the bootstrap resamples")
    controls: int = Field(3, ge=0, description="random-neuron control sets (0 = none; needs a neuron set)")
    control_seed: int = Field(0, description="seed of the first control set (the others follow)")
    match_layers: Annotated[bool, Cli(negative="--uniform-controls")] = Field(
        True, description="random controls draw exactly the neuron set's count in each layer (the default; "
                          "--uniform-controls: uniform over all layers, as hneurons 0.1 did)")
    kl: Annotated[bool, Cli(flag="--no-kl", negate=True)] = Field(True, description="skip the KL measure")
    kl_prompts: Annotated[str, Cli(metavar="FILE")] = Field(
        str(NEUTRAL_PROMPTS), description="neutral prompts for the KL measure (JSONL with a 'prompt' field, or one "
                                          "per line; default: the bundled eval/data/neutral_prompts.jsonl)")
    kl_max_prompts: int | None = Field(None, ge=1, description="use only the first N KL prompts")
    kl_new_tokens: int = Field(32, ge=1, description="tokens of greedy base-model continuation scored after each "
                                                     "KL prompt")
    system_instruction: Annotated[str | None, Cli(metavar="TEXT")] = Field(
        None, description="system instruction lm-eval gives every variant (simple_evaluate(system_instruction=...): "
                          "a system message with the chat template, else text before the prompt); part of the run key")
    edited_system_instruction: Annotated[str | None, Cli(metavar="TEXT")] = Field(
        None, description="system instruction for the edited variant (and its controls) only, replacing "
                          "--system-instruction there. The prompt baseline: with --base alone the edited variant is "
                          "the base model itself told this, e.g. --edited-system-instruction \"If you are not sure of "
                          "the answer, say I don't know.\" (eval only)")
    detector: Annotated[str | None, Cli(metavar="PATH")] = Field(
        None, description="a locate folder or its probe.safetensors: the probe scores the base model's "
                          "hneurons_facts answers, and the abstention report adds it as an abstention rule (its "
                          "risk-coverage curve and AUROC against base wrongness, the ceiling; eval only)")

    @model_validator(mode="before")
    @classmethod
    def _suite_tasks(cls, data: Any) -> Any:
        """``suite`` adds its tasks (editor.evaluate.suites) after ``tasks`` (the default tasks when not given)."""
        if not isinstance(data, dict) or not data.get("suite"):
            return data
        from .suites import expand_suites

        suite = data["suite"]
        suite = [s.strip() for s in suite.split(",")] if isinstance(suite, str) else list(suite)
        tasks = data.get("tasks", cls.model_fields["tasks"].default)
        tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
        return {**data, "suite": suite, "tasks": expand_suites(suite, tasks)}

    @field_validator("system_instruction", "edited_system_instruction")
    @classmethod
    def _instruction_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("an empty system instruction: leave the setting out for none")
        return value

    @field_validator("detector", mode="before")
    @classmethod
    def _detector_path(cls, value: Any) -> Any:
        if value is None:
            return None
        from ..formats import PROBE

        path = Path(str(value)).expanduser()
        probe = path / PROBE if path.is_dir() else path
        if not probe.is_file():
            raise ValueError(f"detector {value}: no probe found (expected a locate folder holding {PROBE}, or the "
                             f"probe file)")
        return str(probe.resolve())

    @field_validator("data_dir")
    @classmethod
    def _data_folder(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_dir():
            raise ValueError(f"data folder not found: {value} (expected a folder of downloaded benchmark data)")
        return None if value is None else str(Path(value).expanduser().resolve())

    @field_validator("tasks")
    @classmethod
    def _some_task(cls, value: list[str]) -> list[str]:
        value = [t.strip() for t in value if t.strip()]
        if not value:
            raise ValueError("no tasks given; expected task names such as hneurons or truthfulqa_mc2")
        return value

    @field_validator("limit")
    @classmethod
    def _positive_limit(cls, value):
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise ValueError("must be a positive number of items (or a fraction < 1)")
        return value

    @field_validator("seeds")
    @classmethod
    def _four_seeds(cls, value: list[int]) -> list[int]:
        if len(value) != 4:
            raise ValueError("must be 4 integers (python, numpy, torch, fewshot)")
        return value

    @field_validator("kl_prompts", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return bundled_file(str(value)) if isinstance(value, (str, Path)) else value

    @field_validator("include_paths", mode="before")
    @classmethod
    def _paths_text(cls, value: Any) -> Any:
        return [bundled_file(str(v)) for v in value] if isinstance(value, (list, tuple)) else value

    @field_validator("include_paths")
    @classmethod
    def _folders(cls, value: list[str]) -> list[str]:
        for path in value:
            if not Path(path).is_dir():
                raise ValueError(f"task include path not found: {path} (expected a folder of lm-eval task YAMLs)")
        return value

    @model_validator(mode="after")
    def _kl_prompts_exist(self) -> "EvalSettings":
        if self.kl and not Path(self.kl_prompts).is_file():
            raise ValueError(f"KL prompt file not found: {self.kl_prompts} (expected JSONL with a 'prompt' field)")
        return self

    @property
    def task_paths(self) -> list[str]:
        """Every folder lm-eval reads task YAMLs from: the bundled eval/ first, then the extra ones."""
        paths = [str(EVAL_DIR.resolve())]
        for path in self.include_paths:
            resolved = str(Path(path).resolve())
            if resolved not in paths:
                paths.append(resolved)
        return paths

    def chat_for(self, tokenizer: Any) -> bool:
        if self.apply_chat_template is not None:
            return bool(self.apply_chat_template)
        return bool(getattr(tokenizer, "chat_template", None))

    def lm_eval_key(self, chat: bool) -> dict[str, Any]:
        """The settings that change lm-eval's numbers, plus a hash of the task files and the package versions."""
        return {"tasks": list(self.tasks), "limit": self.limit, "batch_size": self.batch_size,
                "apply_chat_template": chat, "gen_kwargs": self.gen_kwargs, "seeds": list(self.seeds),
                "lm_eval_model": self.lm_eval_model,
                "gen_batch_size": self.gen_batch_size if self.lm_eval_model == "hneurons" else None,
                "bootstrap_iters": self.lm_eval_bootstrap_iters,
                "task_files_sha256": task_files_hash(self.task_paths),
                "scoring_code_sha256": scoring_code_hash(),
                "versions": package_versions(("hneurons", "lm-eval", "transformers", "torch", "peft"))}

    def describe(self) -> dict[str, Any]:
        """What eval_results.json records under ``settings``."""
        return {"tasks": list(self.tasks), "limit": self.limit, "batch_size": self.batch_size,
                "lm_eval_model": self.lm_eval_model, "gen_batch_size": self.gen_batch_size,
                "apply_chat_template": self.apply_chat_template, "gen_kwargs": self.gen_kwargs,
                "seeds": list(self.seeds), "include_paths": [portable_path(p) for p in self.task_paths],
                "lm_eval_bootstrap_iters": self.lm_eval_bootstrap_iters, "paired_test": self.paired_test,
                "ci_iters": self.ci_iters,
                "ci_seed": self.ci_seed, "controls": self.controls, "control_seed": self.control_seed,
                "match_layers": self.match_layers, "system_instruction": self.system_instruction,
                "edited_system_instruction": self.edited_system_instruction, "detector": self.detector}

    @property
    def control_seeds(self) -> list[int]:
        return list(range(self.control_seed, self.control_seed + self.controls))


class SweepSettings(EvalSettings):
    """The alpha sweep: an evaluation (on the validation tasks by default) at every alpha of a grid, and the
    rule that chooses alpha (editor.evaluate.sweep)."""

    tasks: Annotated[list[str], Cli(many="comma", metavar="TASKS")] = Field(
        list(DEFAULT_SWEEP_TASKS), description="comma-separated lm-eval task or group names (validation splits)")
    controls: int = Field(3, ge=0, description="matched random-neuron sets evaluated at every alpha (the chosen "
                                               "alpha must beat their mean; 0: no alpha can be chosen)")
    alphas: Annotated[list[float], Cli(many="comma", metavar="A,B,...")] = Field(
        list(DEFAULT_ALPHAS), description="the alpha grid (1, the unedited reference, is always added)")
    max_knowledge_drop: float = Field(
        0.02, ge=0, description="largest allowed drop of each knowledge metric vs alpha 1, judged by the 95% CI's "
                                "upper bound (0.02 = 2 points)")
    max_kl: float = Field(0.1, ge=0, description="largest allowed mean KL(base || edited) in nats")
    knowledge: Annotated[list[str], Cli(many="repeat", metavar="TASK:METRIC")] = Field(
        list(DEFAULT_KNOWLEDGE), description="knowledge metric to protect (repeatable)")
    targets: Annotated[list[str], Cli(flag="--target", many="repeat", metavar="TASK:METRIC")] = Field(
        list(DEFAULT_TARGETS), description="hallucination / over-compliance metric to improve (repeatable; default: "
                                           "the bundled tasks' rates)")
    allow_test_split: bool = Field(
        False, description="allow tasks that score the test split (biases any report on that split)")

    @model_validator(mode="after")
    def _eval_only(self) -> "SweepSettings":
        return refuse_eval_only(self, "the sweep")

    @field_validator("alphas")
    @classmethod
    def _grid(cls, value: list[float]) -> list[float]:
        if not value or any(not (math.isfinite(a) and a >= 0) for a in value):
            raise ValueError("alphas must list finite numbers >= 0")
        return value

    @field_validator("max_knowledge_drop", "max_kl")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number >= 0")
        return value

    @field_validator("knowledge", "targets")
    @classmethod
    def _metric_specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            if not _METRIC_SPEC.fullmatch(spec):
                raise ValueError(f"metric {spec!r} must be written TASK:METRIC, e.g. hneurons_facts:hallucination_rate")
        return value



DEFAULT_DOSE_ALPHAS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
DEFAULT_DOSE_TASKS = ["hneurons"]  # the full test split of every bundled task (eval/README.md)


class DoseSettings(EvalSettings):
    """The dose-response (``hneurons dose-response``, recipe ``dose:``, :func:`editor.evaluate.dose.dose_response`):
    every metric at every alpha of a grid for the H-Neurons and for matched random sets, slopes per unit alpha
    and the H-minus-random slope difference (docs/METHOD.md section 8)."""

    tasks: Annotated[list[str], Cli(many="comma", metavar="TASKS")] = Field(
        list(DEFAULT_DOSE_TASKS), description="comma-separated lm-eval task or group names (default: every bundled "
                                              "task, full test split)")
    alphas: Annotated[list[float], Cli(many="comma", metavar="A,B,...")] = Field(
        list(DEFAULT_DOSE_ALPHAS), description="the alpha grid, suppression (< 1) and amplification (> 1); 1, the "
                                               "unedited model, is always added and scored once")
    controls: int = Field(3, ge=2, description="matched random-neuron sets run at every alpha (3 by default, 5 in "
                                               "the longer documented run; at least 2 for a between-set variance)")
    ci_iters: int = Field(2_000, ge=100, description="bootstrap resamples over items (value and slope CIs)")
    known_only: bool = Field(
        False, description="score the behaviour tasks only on the facts the base model knows (their _known "
                           "metrics, about a third of the items on SmolLM2, for a third of the forward passes); the "
                           "all-item metrics that would repeat them are left out of the report")
    neuron_sets: Annotated[list[str], Cli(many="comma", metavar="NAMES")] = Field(
        [], description="also run the dose-response for these sets of locate's regularisation path (names in "
                        "neurons_path.json beside the neuron file, e.g. x2,x5,x10): effect vs neuron count, each "
                        "with its own matched random sets")

    @model_validator(mode="after")
    def _eval_only(self) -> "DoseSettings":
        return refuse_eval_only(self, "the dose-response")

    @field_validator("alphas")
    @classmethod
    def _dose_grid(cls, value: list[float]) -> list[float]:
        if any(not (math.isfinite(a) and a >= 0) for a in value):
            raise ValueError("alphas must list finite numbers >= 0")
        if len({float(a) for a in value} | {1.0}) < 3:
            raise ValueError("a slope with a CI needs at least 3 alphas (1 included), e.g. 0,1,2")
        return value

    @property
    def grid(self) -> list[float]:
        return sorted({float(a) for a in self.alphas} | {1.0})

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"alphas": self.grid, "known_only": self.known_only,
                                     "neuron_sets": list(self.neuron_sets)}


ABSTENTION_TASKS = ["hneurons_facts", "hneurons_nonexist", "hneurons_knowledge_mc", "hneurons_false_premise_mc",
                    "hneurons_misleading_context_mc", "hneurons_sycophancy_mc"]
PROMPT_INSTRUCTION = "If you do not know the answer, say \"I don't know.\""


class AbstentionSettings(EvalSettings):
    """The abstention comparison of a recipe (its ``abstention`` section, after ``abstain``): the trained
    abstention edit of the H-Neurons against the same training on matched random neuron sets, a parameter-matched
    LoRA on every down projection, and the base model told to abstain in its system prompt, each evaluated as
    ``hneurons eval`` does (these settings: by default the full test splits of the facts, fabricated-entity,
    knowledge and behaviour MC tasks) and put side by side by ``hneurons abstain-report`` (docs/METHOD.md
    section 6, "Baselines")."""

    tasks: Annotated[list[str], Cli(many="comma", metavar="TASKS")] = Field(
        list(ABSTENTION_TASKS), description="lm-eval tasks of every variant (hneurons_facts is required: abstention "
                                            "is measured on it)")
    controls: int = Field(0, ge=0, description="hook controls: none (scaling random neurons is no control for a "
                                               "trained edit; random_sets are)")
    random_sets: int = Field(3, ge=0, description="matched random neuron sets trained like the H-Neuron edit "
                                                  "(seeds 1..N; each a variant named random-seedN)")
    lora_baseline: bool = Field(True, description="also train and evaluate the parameter-matched LoRA baseline")
    prompt_instruction: str | None = Field(
        PROMPT_INSTRUCTION, description="the prompt baseline's system instruction (the base model told to abstain, "
                                        "no training); null for none")

    @model_validator(mode="after")
    def _facts_task(self) -> "AbstentionSettings":
        if "hneurons_facts" not in self.tasks:
            raise ValueError("abstention.tasks must include hneurons_facts: abstention is measured on it")
        if self.edited_system_instruction is not None:
            raise ValueError("abstention: give the prompt baseline's instruction as prompt_instruction")
        return self


def refuse_eval_only(settings: EvalSettings, stage: str) -> Any:
    """edited_system_instruction and detector belong to the eval's base-vs-edited comparison."""
    for name in ("edited_system_instruction", "detector"):
        if getattr(settings, name) is not None:
            raise ValueError(f"{name} is a setting of `hneurons eval` only; {stage} does not use it")
    return settings


def scoring_code_hash() -> str:
    """sha256 over the source of hneurons' judges and prompt code that the task files import: a judge fixed
    in a checkout (same package version) makes the results scored by the old one stale, cached ones too."""
    from .. import data

    folder = Path(data.__file__).parent
    return sha256_json({name: sha256_file(folder / f"{name}.py") for name in data.SCORING_MODULES})


def task_files_hash(include_paths: Iterable[str | Path]) -> str:
    """sha256 over every task file (YAML, Python, data) in the include paths: changed tasks mean new numbers.

    Only folders that hold task YAMLs count, with everything below them (a task folder and its data/): files
    beside them that no task reads (eval/judge_validation/'s labels, eval/data/'s question sets) do not make
    every finished run stale when they change. Files are named relative to their include path (numbered in
    order), so the same tasks in another checkout or clone give the same hash."""
    digests = {}
    for number, root in enumerate(map(Path, include_paths)):
        task_dirs = {f.parent for f in root.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file()}
        for path in sorted(root.rglob("*")):
            if (path.is_file() and path.suffix in (".yaml", ".yml", ".py", ".json", ".jsonl", ".txt", ".csv")
                    and any(d in path.parents for d in task_dirs)):
                digests[f"{number}:{path.relative_to(root).as_posix()}"] = sha256_file(path)
    return sha256_json(digests)
