"""Recipes: one YAML file that says what to do with a model, validated by a typed schema.

A recipe names the model, the output folder and the settings of every stage::

    model: {id: smollm2-135m-instruct, device: cpu}
    output: runs/smollm2-135m-instruct
    collect: {data: [bundled:facts, bundled:nonexist], limit: {train: 600, validation: 200, test: 200}, samples: 4}
    locate: {labels: 3v1}
    edit: {alpha: auto, modes: [weights, ia3]}
    eval: {tasks: [hneurons], limit: 100, controls: 2}
    publish: {repo: null}

``collect.batch_size`` and ``locate.batch_size`` take a positive integer or ``auto`` (the largest batch that
fits the free GPU memory); ``collect.backend`` is ``hf`` (default) or ``vllm`` (optional, CUDA only).

Unknown keys and wrong types are errors that name the key, the file and the line. Relative paths
inside a recipe (``output``, local data files) are relative to the working directory, as on the
command line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from .errors import RecipeError

SPLIT = Literal["train", "validation", "test"]


def _batch_size(value: Any) -> Any:
    """A positive int or "auto" (editor.batching.parse_batch_size), as one schema error naming the key."""
    from .batching import parse_batch_size
    from .errors import InputError

    try:
        return parse_batch_size(value)
    except InputError:
        raise ValueError("must be a positive integer or 'auto'") from None


# "auto": the largest batch that fits the free GPU memory (the stage's default on the CPU); editor.batching
BatchSize = Annotated[int | Literal["auto"], BeforeValidator(_batch_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    id: str = Field(description="Hub repo id, local folder, .gguf file or embedded alias")
    # The architecture the recipe expects. `recipe check` verifies it against the registry offline (no
    # download); loading verifies it against the model's real config.
    model_type: str | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["cpu", "cuda", "auto"] | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def load_kwargs(self) -> dict[str, Any]:
        return dict(dtype=self.dtype, device=self.device, revision=self.revision,
                    trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle)


class CollectSection(_Section):
    data: list[str] = ["bundled:facts", "bundled:nonexist"]
    splits: list[SPLIT] = ["train", "validation", "test"]
    limit: int | dict[SPLIT, int] | None = None
    samples: int = Field(10, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    max_new_tokens: int = Field(50, ge=1)
    seed: int = 0
    early_stop: bool = True
    batch_size: BatchSize = 32
    # hf: transformers; vllm: vLLM's engine (optional; `pip install vllm` and a CUDA GPU). Not part of the
    # stage key while it is the default hf, so run folders made before this key existed still resume.
    backend: Literal["hf", "vllm"] = "hf"
    prompt_style: Literal["auto", "chat", "base"] = "auto"
    instruction: str | None = None
    question_column: str = "question"
    answers_column: str = "answers"


class LocateSection(_Section):
    labels: Literal["3v1", "1v1"] = "3v1"
    aggregate: Literal["mean", "max"] = "mean"
    span: Literal["response", "answer"] = "response"
    C: list[float] | None = None
    n_C: int = Field(24, ge=2)
    rule: Literal["sparsest_within", "best"] = "sparsest_within"
    tol: float = Field(0.01, ge=0)
    random_draws: int = Field(10, ge=1)
    bootstrap: int = Field(1000, ge=0)
    seed: int = 0
    batch_size: BatchSize = 8

    @field_validator("C")
    @classmethod
    def _positive(cls, value):
        if value is not None and (not value or any(not (c > 0 and math.isfinite(c)) for c in value)):
            raise ValueError("C values must be positive finite numbers")
        return value


class Constraints(_Section):
    max_knowledge_drop: float = Field(0.02, ge=0)
    max_kl: float = Field(0.1, ge=0)


class EditSection(_Section):
    alpha: float | Literal["auto"] = 0.0
    modes: list[Literal["weights", "ia3", "lora"]] = ["weights", "ia3"]
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    out_of_core: bool = False
    alpha_grid: list[float] = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
    constraints: Constraints = Constraints()
    sweep_limit: int | None = Field(None, ge=1)
    sweep_controls: int = Field(1, ge=0)

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value):
        if value != "auto" and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"alpha must be 'auto' or a finite number >= 0, got {value}")
        return value

    @field_validator("alpha_grid")
    @classmethod
    def _grid(cls, value):
        if not value or any(not (math.isfinite(a) and a >= 0) for a in value):
            raise ValueError("alpha_grid must list finite numbers >= 0")
        return value

    @field_validator("modes")
    @classmethod
    def _modes(cls, value):
        if not value or len(set(value)) != len(value):
            raise ValueError("modes must list weights / ia3 / lora, each at most once")
        return value


class EvalSection(_Section):
    tasks: list[str] = ["hneurons"]
    limit: int | None = Field(None, ge=1)
    controls: int = Field(3, ge=0)
    match_layers: bool = False
    batch_size: int = Field(8, ge=1)
    bootstrap: int = Field(1000, ge=0)
    kl_prompts: int | None = Field(None, ge=1)
    seed: int = 0


class PublishSection(_Section):
    repo: str | None = None
    push: bool = False  # `hneurons run` pushes only when this is true (and --to push reaches it)
    private: bool = True
    revision: str | None = None
    create_pr: bool = False
    commit_message: str | None = None


class Recipe(_Section):
    model: ModelSection
    output: str
    collect: CollectSection = CollectSection()
    locate: LocateSection = LocateSection()
    edit: EditSection = EditSection()
    eval: EvalSection = EvalSection()
    publish: PublishSection = PublishSection()
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _publish_needs_repo(self):
        if self.publish.push and not self.publish.repo:
            raise ValueError("publish.push is true but publish.repo is not set")
        return self


# ---------------------------------------------------------------------------------------------- loading
class _LineLoader(yaml.SafeLoader):
    """Safe YAML loader (no Python objects) that remembers the line of every mapping key."""


def _key_lines(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = path + (key.value,)
            out[here] = key.start_mark.line + 1
            _key_lines(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _key_lines(item, path + (i,), out)
    return out


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    for cut in range(len(loc), 0, -1):
        key = tuple(loc[:cut])
        if key in lines:
            return lines[key]
    return None


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe; every problem is one :class:`RecipeError` naming key, file and line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping with at least 'model' and 'output'")
    lines = _key_lines(node) if node is not None else {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, path, lines)) from None
    recipe._source = path.resolve()  # type: ignore[attr-defined]
    return recipe


def _format_errors(exc: ValidationError, path: Path, lines: dict[tuple, int]) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(lines, loc)
        where = f"{path}:{line}" if line else str(path)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key {key!r}"
        elif kind == "missing":
            msg = f"missing required key {key!r}"
        else:
            msg = f"{key}: {err['msg']} (got {err.get('input')!r})"
        problems.append(f"{where}: {msg}")
    return "invalid recipe: " + "; ".join(problems)


def output_dir(recipe: Recipe) -> Path:
    return Path(recipe.output).expanduser()


def resolved(recipe: Recipe) -> dict[str, Any]:
    """Every setting, defaults included (what `hneurons recipe show` prints)."""
    data = recipe.model_dump(mode="json")
    data["output"] = str(output_dir(recipe).resolve())
    return data


def check_recipe(recipe: Recipe, resolve_model: bool = False) -> list[str]:
    """Checks beyond the schema that need no weights: task names known to lm-eval or bundled, data
    sources recognised, and (``resolve_model``) the model's architecture in the registry.

    Returns notes on what was checked; raises RecipeError / UnsupportedArchitectureError on problems.
    """
    from .questions import BUNDLED_SETS

    notes = []
    for spec in recipe.collect.data:
        kind = spec.split(":", 1)[0]
        if kind == "bundled" and spec.split(":", 1)[1] not in BUNDLED_SETS:
            raise RecipeError(f"collect.data: unknown bundled set {spec!r}; bundled sets: "
                              f"{', '.join('bundled:' + s for s in BUNDLED_SETS)}")
        if kind not in ("bundled", "triviaqa", "nq_open") and not Path(spec).suffix:
            raise RecipeError(f"collect.data: {spec!r} is not a bundled set, triviaqa, nq_open or a data file")
    unknown = unknown_tasks(recipe.eval.tasks)
    if unknown:
        raise RecipeError(f"eval.tasks: unknown lm-eval task(s) {', '.join(unknown)} (neither bundled in eval/ "
                          f"nor known to lm-eval)")
    notes.append(f"eval tasks known: {', '.join(recipe.eval.tasks)}")
    if recipe.model.model_type:
        from .registry import get_arch

        get_arch(recipe.model.model_type)
        notes.append(f"model_type {recipe.model.model_type!r} is in the registry")
    if resolve_model:
        from .modelinfo import inspect_model

        info = inspect_model(recipe.model.id, revision=recipe.model.revision,
                             trust_remote_code=recipe.model.trust_remote_code)
        if recipe.model.model_type and info.model_type != recipe.model.model_type:
            raise RecipeError(f"model.model_type is {recipe.model.model_type!r} but {recipe.model.id} is a "
                              f"{info.model_type!r} model")
        notes.append(f"model {recipe.model.id}: {info.model_type}, {info.num_layers} layers x {info.d_ff} "
                     f"= {info.ffn_neurons} FFN neurons (supported)")
    return notes


def unknown_tasks(tasks: list[str]) -> list[str]:
    """Task names that are neither in the bundled eval/ folder nor in lm-eval's task index."""
    from .evaluate import REPO_EVAL_DIR, local_task_names

    local = local_task_names([REPO_EVAL_DIR])
    rest = [t for t in tasks if t not in local]
    if not rest:
        return []
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    return [t for t in rest if t not in known]
