"""Recipes: one YAML file that says what to do with a model, validated by a typed schema.

A recipe names the model, the output folder and the settings of every stage::

    model: {id: smollm2-135m-instruct, device: cpu}
    output: runs/smollm2-135m-instruct
    collect: {data: [bundled:facts, bundled:nonexist], limit: {train: 600, validation: 200, test: 200}, samples: 4}
    locate: {labels: 3v1}
    sweep: {alphas: [0, 0.5, 1], limit: 100}      # used when edit.alpha is auto
    dose: {controls: 3}                           # optional: the dose-response (H-Neurons vs matched random sets)
    edit: {alpha: auto, modes: [weights, ia3, gguf]}   # gguf: also gguf_type (auto, source, Q8_0, F16, F32)
    abstain: {epochs: 4, train: [up, down]}      # optional: the trained abstention edit (OUT/abstain/)
    abstention: {random_sets: 3}                 # optional (needs abstain): vs random sets, LoRA, prompt
    eval: {tasks: [hneurons], limit: 100, controls: 2}
    publish: {repo: null}

Each section *is* the stage's settings model (declared once, in the stage's ``settings`` module: the
same names, types, defaults and checks as the Python API and the command-line flags); ``model`` is
:class:`~editor.model.loading.LoadOptions` plus the model's ``id`` and expected ``model_type``.
``hneurons recipe show`` prints every setting with its default.

Former spellings still load, each with one deprecation line naming the new key (see ``RENAMED`` below);
a recipe that gives both spellings of one setting is an error.

Unknown keys and wrong types are errors that name the key, the file and the line. Relative paths
inside a recipe (``output``, local data files) are relative to the working directory, as on the
command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from ..collect.settings import CollectSettings
from ..edit.settings import AbstainSettings, EditSettings
from ..errors import RecipeError, UnavailableError
from ..evaluate.settings import (
    AbstentionSettings,
    DoseSettings,
    EvalSettings,
    SweepSettings,
)
from ..locate.settings import LocateSettings
from ..model.loading import LoadOptions
from ..options import Settings
from ..report.publish import PublishSettings


class ModelSection(LoadOptions):
    id: str = Field(description="Hub repo id, local folder, .gguf file or embedded alias")
    # The architecture the recipe expects. `recipe check` verifies it against the registry offline (no
    # download); loading verifies it against the model's real config.
    model_type: str | None = Field(None, description="the architecture the recipe expects (checked offline)")

    def load_options(self) -> LoadOptions:
        return LoadOptions(**self.model_dump(include=set(LoadOptions.model_fields)))


class Recipe(Settings):
    model: ModelSection
    output: str
    collect: CollectSettings = Field(default_factory=CollectSettings)
    locate: LocateSettings = Field(default_factory=LocateSettings)
    sweep: SweepSettings = Field(default_factory=SweepSettings)
    dose: DoseSettings | None = Field(None, description="the dose-response stage (runs only when this section is "
                                                        "given; `dose: {}` for the defaults)")
    edit: EditSettings = Field(default_factory=EditSettings)
    abstain: AbstainSettings | None = Field(None, description="the trained abstention edit of the H-Neurons on the "
                                                              "collect answers (runs only when this section is given; "
                                                              "`abstain: {}` for the defaults)")
    abstention: AbstentionSettings | None = Field(
        None, description="the abstention edit against the same training on matched random neuron sets, a "
                          "parameter-matched LoRA and a prompt baseline, one report (OUT/abstention/; needs the "
                          "abstain section; `abstention: {}` for the defaults)")
    eval: EvalSettings = Field(default_factory=EvalSettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _abstain_is_its_own_section(self):
        if "abstain" in self.edit.modes:
            raise ValueError("edit.modes: abstain is trained by the recipe's own abstain section (give `abstain: {}`), "
                             "not as an edit mode")
        return self

    @model_validator(mode="after")
    def _abstention_needs_abstain(self):
        if self.abstention is not None and self.abstain is None:
            raise ValueError("the abstention section compares the trained abstention edit with its baselines: give "
                             "the abstain section too (`abstain: {}` for the defaults)")
        return self

    @model_validator(mode="after")
    def _publish_needs_repo(self):
        if self.publish.push and not self.publish.repo:
            raise ValueError("publish.push is true but publish.repo is not set")
        return self


# (section, old key) -> (section, new key): spellings of hneurons 0.1, moved where their stage's settings live.
RENAMED = {
    ("edit", "alpha_grid"): ("sweep", "alphas"),
    ("edit", "sweep_limit"): ("sweep", "limit"),
    ("edit", "sweep_controls"): ("sweep", "controls"),
    ("edit", "constraints.max_knowledge_drop"): ("sweep", "max_knowledge_drop"),
    ("edit", "constraints.max_kl"): ("sweep", "max_kl"),
    ("edit", "dtype"): ("model", "dtype"),
    ("eval", "bootstrap"): ("eval", "ci_iters"),
    ("eval", "kl_prompts:count"): ("eval", "kl_max_prompts"),
}


def migrate(data: dict, where: str) -> list[str]:
    """Move former spellings to their keys in place; returns one deprecation line per moved key."""
    notes: list[str] = []

    def move(section: str, old: str, new_section: str, new: str, value: Any) -> None:
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            return
        if new in target and target[new] != value:
            raise RecipeError(f"{where}: {section}.{old} (deprecated) and {new_section}.{new} are both given; keep "
                              f"{new_section}.{new}")
        target[new] = value
        notes.append(f"{where}: {section}.{old} is deprecated; use {new_section}.{new}")

    edit, evals = data.get("edit"), data.get("eval")
    if isinstance(edit, dict):
        for old in ("alpha_grid", "sweep_limit", "sweep_controls"):
            if old in edit:
                move("edit", old, *RENAMED[("edit", old)], edit.pop(old))
        constraints = edit.get("constraints")
        if isinstance(constraints, dict):
            for old in ("max_knowledge_drop", "max_kl"):
                if old in constraints:
                    move("edit", f"constraints.{old}", "sweep", old, constraints.pop(old))
            if not constraints:
                edit.pop("constraints")
        if "dtype" in edit:
            value = edit.pop("dtype")
            if value != "auto":
                move("edit", "dtype", "model", "dtype", value)
    if isinstance(evals, dict):
        if "bootstrap" in evals:
            move("eval", "bootstrap", "eval", "ci_iters", evals.pop("bootstrap"))
        if isinstance(evals.get("kl_prompts"), int) and not isinstance(evals.get("kl_prompts"), bool):
            move("eval", "kl_prompts (a count)", "eval", "kl_max_prompts", evals.pop("kl_prompts"))
        if "seed" in evals:
            value = evals.pop("seed")
            move("eval", "seed", "eval", "control_seed", value)
            evals.setdefault("ci_seed", value)
    return notes


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
    for note in migrate(data, str(path)):
        print(f"hneurons: {note}", file=sys.stderr)
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
            msg = f"{key}: {str(err['msg']).removeprefix('Value error, ')} (got {err.get('input')!r})"
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
    notes = []
    sections = [("eval", recipe.eval.tasks)] + ([("sweep", recipe.sweep.tasks)] if recipe.edit.alpha == "auto" else [])
    sections += [("dose", recipe.dose.tasks)] if recipe.dose is not None else []
    sections += [("abstention", recipe.abstention.tasks)] if recipe.abstention is not None else []
    for section, tasks in sections:
        unknown = unknown_tasks(tasks)
        if unknown:
            raise RecipeError(f"{section}.tasks: unknown lm-eval task(s) {', '.join(unknown)} (neither bundled in "
                              f"eval/ nor known to lm-eval)")
        notes.append(f"{section} tasks known: {', '.join(tasks)}")
    if recipe.model.model_type:
        from ..model.registry import get_arch

        get_arch(recipe.model.model_type)
        notes.append(f"model_type {recipe.model.model_type!r} is in the registry")
    if resolve_model:
        from ..model.info import inspect_model

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
    from ..evaluate.lm_eval_run import local_task_names
    from ..evaluate.preflight import is_builtin_task
    from ..paths import EVAL_DIR

    local = local_task_names([EVAL_DIR])
    rest = [t for t in tasks if t not in local and not is_builtin_task(t)]  # a YAML scan; lm-eval's index is slow
    if not rest:
        return []
    from lm_eval.tasks import TaskManager

    known = set(TaskManager().all_tasks)
    return [t for t in rest if t not in known]


def check_environment(recipe: Recipe, stages: list[str] | None = None) -> list[str]:
    """What the recipe's ``stages`` (default: all it has) need from this machine, checked before anything loads:
    the model (a Hub id cached, or reachable), the device, the datasets of built-in lm-eval tasks, vLLM for the
    vllm backend, llama.cpp's converter for a GGUF edit of a safetensors model. Returns notes; raises the first
    problem (:class:`~editor.errors.UnavailableError` and friends, one line naming the thing and what to do)."""
    from ..evaluate.preflight import apply_availability, check_task_data
    from ..model.loading import check_model

    if stages is None:
        stages = ["collect", "locate", "edit", "eval", "card"] + (["sweep"] if recipe.edit.alpha == "auto" else [])
        stages += ["dose"] if recipe.dose is not None else []
        stages += ["abstention"] if recipe.abstention is not None else []
    source = check_model(recipe.model.id, recipe.model.load_options())
    notes = [f"model {recipe.model.id}: available ({source.kind}); device {recipe.model.device or 'default'}: "
             f"available"]
    if "collect" in stages and recipe.collect.backend == "vllm":
        from ..collect.vllm_backend import require_vllm

        require_vllm()
        notes.append("vLLM and a CUDA GPU: available")
    for section in [s for s in ("sweep", "dose", "eval", "abstention") if s in stages]:
        try:
            settings, left_out = apply_availability(getattr(recipe, section))  # suites: one line per task
        except UnavailableError as err:  # name the recipe key the tasks come from
            raise UnavailableError(f"{section}.tasks: {err}") from None
        notes += [f"{section}: left out (available_only): {m.line()}" for m in left_out]
        check_task_data(settings.tasks, settings.task_paths, f"{section}.tasks: lm-eval task")
        notes.append(f"{section} task data: available")
    if "edit" in stages and "gguf" in recipe.edit.modes and source.kind not in ("alias", "gguf"):
        from ..edit.gguf import converter_or_error

        converter_or_error(recipe.edit.gguf_converter, recipe.model.id)
        notes.append("llama.cpp's GGUF converter: available")
    return notes
