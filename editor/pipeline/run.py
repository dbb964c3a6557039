"""`hneurons run RECIPE`: every stage in order, resuming whatever is already done.

Stages: collect -> locate -> dose (only when the recipe has a ``dose`` section) -> sweep (only when
``edit.alpha`` is ``auto``) -> edit -> abstain (only with an ``abstain`` section: the trained abstention edit of
the H-Neurons on the collect answers, editor/edit/abstain.py) -> abstention (only with an ``abstention``
section: that edit against its random-set, LoRA and prompt baselines, editor/pipeline/abstention.py) -> eval -> card -> push (only when ``publish.push``
is true). Each
stage writes its artifacts into a sub-folder of the recipe's output folder and is identified by a *stage
key*: the hash of its own settings and of the keys of the stages it reads from. ``run_state.json`` records the key of every finished stage; a stage whose
key is unchanged and whose artifact exists is resumed (skipped), a changed setting re-runs that stage
and every later one, and the run says which setting changed.

Output folder::

    OUT/collect/      responses.jsonl, collect.json
    OUT/locate/       neurons.json, probe.safetensors, locate.json, features/, plots
    OUT/dose/         dose_response.json, dose_<task>.png, dose_slopes.png   (a dose section)
    OUT/sweep/        sweep.json, sweep.png                      (alpha: auto)
    OUT/model/        the fixed checkpoint (edit mode "weights") + model card README.md
    OUT/adapter-ia3/  the IA3 adapter (mode "ia3") + card;  OUT/adapter-lora/ likewise
    OUT/gguf/         one GGUF file for llama.cpp / Ollama / LM Studio (mode "gguf") + card
    OUT/abstain/      the abstention edit: model/, adapter-lora/, abstain_delta.safetensors, training/ (an
                      abstain section)
    OUT/abstention/   the abstention edit vs matched random sets, LoRA, prompt: edits/, eval/, report/
                      (an abstention section; editor/pipeline/abstention.py)
    OUT/eval/         eval_results.json, lm-eval logs, eval_deltas.png
    OUT/report.md     every stage's tables and plots (relative image paths)
    OUT/run_state.json

The eval stage measures the edit as run-time scaling of the H-Neurons on the loaded base model: the
edit stage has verified that every written form (checkpoint, adapters, merged adapters) reproduces that
scaling's logits within its tolerance, and one loaded model serves base, edit and random controls.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..artifacts import (
    atomic_write_json,
    atomic_write_text,
    provenance,
    read_json,
    sha256_json,
)
from ..errors import InputError
from ..evaluate.bars import eval_progress
from ..formats import (
    COLLECT_MANIFEST,
    DOSE_REPORT,
    EDIT_FOLDERS,
    EDIT_MANIFEST,
    EVAL_RESULTS,
    LOCATE_REPORT,
    NEURONS,
    NEURONS_PATH,
    PROBE,
    RUN_REPORT,
    RUN_STATE,
    SWEEP_REPORT,
)
from ..locking import output_lock
from ..text import fmt
from .recipe import Recipe, check_environment, load_recipe, output_dir

STAGES = ("collect", "locate", "dose", "sweep", "edit", "abstain", "abstention", "eval", "card", "push")


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" | "resumed" | "skipped"
    seconds: float = 0.0
    note: str = ""


@dataclass
class RunContext:
    recipe: Recipe
    recipe_path: Path
    out: Path
    progress: bool = True
    _lm: Any = None
    keys: dict[str, str] = field(default_factory=dict)
    settings: dict[str, dict] = field(default_factory=dict)
    alpha: float | None = None

    @property
    def lm(self):
        """The model, loaded on first use (a fully resumed run never loads it)."""
        if self._lm is None:
            from ..model.loading import load_model

            print(f"  loading {self.recipe.model.id} ...", flush=True)
            self._lm = load_model(self.recipe.model.id, self.recipe.model.load_options())
        return self._lm

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


# --------------------------------------------------------------------------------------------- settings
def stage_settings(recipe: Recipe, stage: str) -> dict[str, Any]:
    """What a stage's result depends on, directly (upstream stages enter through their keys): its recipe
    section, and for collect the model section too."""
    r = recipe
    if stage == "collect":
        collect = r.collect.model_dump(mode="json")
        if collect["backend"] == "hf":  # the default stays out of the key: older run folders keep resuming
            del collect["backend"]
        return {"model": r.model.model_dump(mode="json"), "collect": collect}
    if stage == "edit":  # alpha enters as the resolved number (a sweep's choice is part of the sweep's key)
        # The gguf settings matter only when a GGUF is written: kept out otherwise, so older run folders resume.
        unused = set() if "gguf" in r.edit.modes else {"gguf_type", "gguf_converter"}
        return {"edit": r.edit.model_dump(mode="json", exclude={"alpha", *unused}), "alpha": r.edit.alpha}
    if stage == "card":
        return {"repo": r.publish.repo}
    section = {"push": "publish"}.get(stage, stage)
    dumped = getattr(r, section).model_dump(mode="json")
    if stage in ("eval", "sweep", "dose"):  # settings added later stay out of the key while unset: older run
        for name in NEW_EVAL_SETTINGS:     # folders keep resuming
            if dumped.get(name) is None:
                dumped.pop(name, None)
    return {section: dumped}


# eval settings added after run folders existed (None = not used)
NEW_EVAL_SETTINGS = ("system_instruction", "edited_system_instruction", "detector")


UPSTREAM = {"collect": (), "locate": ("collect",), "dose": ("locate",), "sweep": ("locate",),
            "edit": ("locate", "sweep"), "abstain": ("collect", "locate"), "abstention": ("abstain",),
            "eval": ("edit",), "card": ("eval", "dose", "abstention"), "push": ("card",)}
ADDED_UPSTREAM = {"abstention"}  # in a key only when the recipe has the stage: older run folders keep resuming


def stage_key(ctx: RunContext, stage: str) -> str:
    return sha256_json({"stage": stage, "settings": ctx.settings[stage],
                        "upstream": {u: ctx.keys.get(u) for u in UPSTREAM[stage]
                                     if u not in ADDED_UPSTREAM or u in ctx.keys}})[:16]


def _changed(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two settings dicts."""
    if not isinstance(old, dict):
        return [prefix.rstrip(".") or "(new)"]
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


# ---------------------------------------------------------------------------------------------- stages
def run_collect(ctx: RunContext) -> str:
    from ..collect.stage import collect, format_summary, questions_for

    settings = ctx.recipe.collect
    if settings.backend == "vllm":  # refuse before the model is loaded
        from ..collect.vllm_backend import require_vllm

        require_vllm()
    questions, data = questions_for(settings)
    result = collect(ctx.lm, questions, ctx.path("collect"), settings, data=data, overwrite=True,
                     progress=ctx.progress)
    print(format_summary(result.manifest))
    return f"{len(questions)} questions"


def run_locate(ctx: RunContext) -> str:
    from ..locate.stage import format_report, locate

    result = locate(ctx.lm, ctx.path("collect"), ctx.path("locate"), ctx.recipe.locate, progress=ctx.progress)
    print(format_report(result.report))
    return f"{result.neurons['count']} H-Neurons"


def run_sweep(ctx: RunContext) -> str:
    from ..evaluate.sweep import sweep

    report = sweep(ctx.lm, ctx.path("locate", NEURONS), ctx.recipe.sweep, out=ctx.path("sweep"), overwrite=True)
    print(report.summary())
    return f"alpha {report.chosen_alpha}" if report.chosen_alpha is not None else "no alpha meets the constraints"


def run_dose(ctx: RunContext) -> str:
    from ..evaluate.dose import dose_response

    report = dose_response(ctx.lm, ctx.path("locate", NEURONS), ctx.recipe.dose, out=ctx.path("dose"),
                           overwrite=True)
    print(report.summary())
    return f"{len(report.rows)} metrics x {len(report.results['grid'])} alphas"


def recipe_alpha(recipe: Recipe, out: Path | None = None, *, required: bool = True) -> float | None:
    """The recipe's alpha: its number, or for ``auto`` the one its sweep chose (sweep/sweep.json). Without a
    sweep result: an error when ``required``, else None."""
    alpha = recipe.edit.alpha
    if alpha != "auto":
        return float(alpha)
    path = (out or output_dir(recipe)) / "sweep" / SWEEP_REPORT
    if not path.is_file():
        if not required:
            return None
        raise InputError(f"edit.alpha is auto but the sweep has not run ({path} is missing): run the recipe's sweep "
                         f"stage first (`hneurons run RECIPE --to sweep`)")
    doc = read_json(path, "sweep result")
    chosen = doc["chosen"]["alpha"]
    if chosen is None:
        raise InputError(f"the sweep chose no alpha ({doc['chosen']['reason']}), so the recipe stops before the edit; "
                         f"see {path}. To edit anyway, set edit.alpha to a number")
    return float(chosen)


def run_edit(ctx: RunContext) -> str:
    from ..edit.stage import edit_model

    notes = []
    for mode in ctx.recipe.edit.modes:
        result = edit_model(ctx.lm, ctx.path("locate", NEURONS), ctx.alpha, mode, ctx.path(EDIT_FOLDERS[mode]),
                            settings=ctx.recipe.edit, overwrite=True, probe=ctx.path("locate", PROBE))
        check = result.manifest.get("verification", {})
        notes.append(f"{mode} -> {result.out} (max logit diff {_max_diff(check):.2e})")
        print(f"  {notes[-1]}")
    return "; ".join(notes)


def abstain_neurons(ctx: RunContext) -> str:
    """The neuron set the abstain stages train: locate's chosen set, or ``abstain.neuron_set`` along its path."""
    name = ctx.recipe.abstain.neuron_set if ctx.recipe.abstain is not None else None
    return f"{ctx.path('locate', NEURONS_PATH)}#{name}" if name else str(ctx.path("locate", NEURONS))


def run_abstain(ctx: RunContext) -> str:
    from ..edit.stage import edit_model

    result = edit_model(ctx.lm, abstain_neurons(ctx), mode="abstain", out=ctx.path(EDIT_FOLDERS["abstain"]),
                        responses=ctx.path("collect"), abstain=ctx.recipe.abstain, overwrite=True,
                        progress=ctx.progress)
    training, strength = result.manifest["abstain"]["training"], result.manifest["abstain"]["strength"]
    return (f"{training['epochs_run']} epoch(s), best {training['best_epoch']}, strength {strength['chosen']} -> "
            f"{result.out}")


def run_abstention(ctx: RunContext) -> str:
    from .abstention import abstention_comparison

    doc = abstention_comparison(ctx.lm, abstain_dir=ctx.path(EDIT_FOLDERS["abstain"]),
                                neurons=abstain_neurons(ctx), responses=ctx.path("collect"),
                                train=ctx.recipe.abstain, settings=ctx.recipe.abstention,
                                probe=ctx.path("locate", PROBE), out=ctx.path("abstention"),
                                key=ctx.keys["abstention"], progress=ctx.progress)
    from ..evaluate.abstention import render_report

    print(render_report(doc))
    h = doc["variants"]["h-neurons"]
    return (f"{len(doc['variants'])} variants on {doc['n']} items; H-Neuron edit abstention AUROC "
            f"{h['abstention_auroc']['value']:.3f} -> {ctx.path('abstention', 'report')}")


def _max_diff(verification: dict) -> float:
    """Largest logit difference between a written form and run-time scaling (edit's verification)."""
    values = [v for v in (verification.get("max_abs_diff") or {}).values() if isinstance(v, (int, float))]
    return max(values) if values else float("nan")


def run_eval(ctx: RunContext) -> str:
    from ..evaluate.stage import evaluate

    report = evaluate(ctx.lm, neurons=ctx.path("locate", NEURONS), alpha=ctx.alpha, settings=ctx.recipe.eval,
                      out=ctx.path("eval"), overwrite=True)
    print(report.table())
    return f"{len(report.metrics)} metrics"


def run_card(ctx: RunContext) -> str:
    from ..report.card import write_card

    written = []
    for mode in ctx.recipe.edit.modes:
        folder = ctx.path(EDIT_FOLDERS[mode])
        sweep, dose = ctx.path("sweep", SWEEP_REPORT), ctx.path("dose", DOSE_REPORT)
        path = write_card(folder, locate_report=ctx.path("locate", LOCATE_REPORT),
                          eval_results=ctx.path("eval", EVAL_RESULTS),
                          sweep=sweep if sweep.is_file() and ctx.recipe.edit.alpha == "auto" else None,
                          dose=dose if dose.is_file() and ctx.recipe.dose is not None else None,
                          recipe=ctx.recipe_path, repo_id=ctx.recipe.publish.repo)
        written.append(str(path))
    abstain_eval = ctx.path("abstention", "eval", "h-neurons", EVAL_RESULTS)
    if ctx.recipe.abstention is not None and abstain_eval.is_file():  # the trained edit's forms, with its own eval
        for form in ("model", "adapter-lora"):
            folder = ctx.path(EDIT_FOLDERS["abstain"], form)
            if (folder / EDIT_MANIFEST).is_file():
                written.append(str(write_card(folder, locate_report=ctx.path("locate", LOCATE_REPORT),
                                              eval_results=abstain_eval, recipe=ctx.recipe_path,
                                              repo_id=ctx.recipe.publish.repo)))
    return ", ".join(written)


def push_folder_of(recipe: Recipe, out: Path) -> Path:
    """The folder a push publishes: the checkpoint when one is written, else the first adapter."""
    mode = "weights" if "weights" in recipe.edit.modes else recipe.edit.modes[0]
    return out / EDIT_FOLDERS[mode]


def run_push(ctx: RunContext) -> str:
    from ..report.publish import push_folder

    result = push_folder(push_folder_of(ctx.recipe, ctx.out), settings=ctx.recipe.publish)
    print(result.render())
    return result.repo_url


RUNNERS: dict[str, Callable[[RunContext], str]] = {
    "collect": run_collect, "locate": run_locate, "dose": run_dose, "sweep": run_sweep, "edit": run_edit,
    "abstain": run_abstain, "abstention": run_abstention, "eval": run_eval,
    "card": run_card, "push": run_push,
}


def artifact_exists(ctx: RunContext, stage: str) -> bool:
    checks = {
        "collect": [ctx.path("collect", COLLECT_MANIFEST)],
        "locate": [ctx.path("locate", NEURONS), ctx.path("locate", LOCATE_REPORT)],
        "dose": [ctx.path("dose", DOSE_REPORT)],
        "sweep": [ctx.path("sweep", SWEEP_REPORT)],
        "edit": [ctx.path(EDIT_FOLDERS[m], EDIT_MANIFEST) for m in ctx.recipe.edit.modes],
        "abstain": [ctx.path(EDIT_FOLDERS["abstain"], EDIT_MANIFEST)],
        "abstention": [ctx.path("abstention", "report", "abstention.json")],
        "eval": [ctx.path("eval", EVAL_RESULTS)],
        "card": [ctx.path(EDIT_FOLDERS[m], "README.md") for m in ctx.recipe.edit.modes],
        "push": [],
    }
    return all(p.is_file() for p in checks[stage])


# ------------------------------------------------------------------------------------------------ run
def active_stages(recipe: Recipe) -> list[str]:
    stages = ["collect", "locate"]
    if recipe.dose is not None:
        stages.append("dose")
    if recipe.edit.alpha == "auto":
        stages.append("sweep")
    stages += ["edit"] + (["abstain"] if recipe.abstain is not None else [])
    stages += (["abstention"] if recipe.abstention is not None else []) + ["eval", "card"]
    if recipe.publish.push:
        stages.append("push")
    return stages


def run_recipe(recipe_path: str | Path, *, from_stage: str | None = None, to_stage: str | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a recipe; returns the final summary (also written into ``run_state.json``)."""
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    from .recipe import check_recipe

    check_recipe(recipe)
    stages = active_stages(recipe)
    for name, value in (("--from", from_stage), ("--to", to_stage)):
        if value is not None and value not in stages:
            raise InputError(f"{name} {value!r} is not a stage of this recipe; its stages: {', '.join(stages)}")
    start = stages.index(from_stage) if from_stage else 0
    stop = stages.index(to_stage) if to_stage else len(stages) - 1
    # a missing model, device, dataset or optional package fails before anything is created
    check_environment(recipe, stages[start:stop + 1])
    out = output_dir(recipe)
    with output_lock(out, "recipe output folder"), eval_progress(progress):
        return _run(recipe, recipe_path, stages, out, from_stage, to_stage, progress)


def _run(recipe: Recipe, recipe_path: Path, stages: list[str], out: Path, from_stage: str | None,
         to_stage: str | None, progress: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(recipe, recipe_path, out, progress=progress)
    state_path = out / RUN_STATE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"stages": {}}
    start = stages.index(from_stage) if from_stage else 0
    stop = stages.index(to_stage) if to_stage else len(stages) - 1
    outcomes: list[StageOutcome] = []
    invalidated = False
    for index, stage in enumerate(stages):
        header = f"[{index + 1}/{len(stages)}] {stage}"
        ctx.settings[stage] = stage_settings(recipe, stage)
        ctx.keys[stage] = key = stage_key(ctx, stage)
        if index > stop:
            outcomes.append(StageOutcome(stage, "skipped", note="after --to"))
            continue
        if stage == "edit":
            ctx.alpha = recipe_alpha(recipe, out)
        previous = state["stages"].get(stage, {})
        forced = from_stage is not None and index >= start
        if not (forced or invalidated) and previous.get("key") == key and artifact_exists(ctx, stage):
            outcomes.append(StageOutcome(stage, "resumed", note=previous.get("note", "")))
            print(f"{header}: up to date (resumed)")
            continue
        print(f"{header}: {_reason(previous, key, ctx.settings[stage], invalidated, forced)}", flush=True)
        began = time.time()
        note = RUNNERS[stage](ctx)
        seconds = time.time() - began
        outcomes.append(StageOutcome(stage, "ran", seconds, note))
        state["stages"][stage] = {"key": key, "settings": ctx.settings[stage], "seconds": round(seconds, 1),
                                  "note": note, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(state_path, state)
        invalidated = True
        print(f"{header}: done in {seconds:.0f} s: {note}", flush=True)
    summary = summarize(ctx, outcomes, state)
    state["summary"] = summary
    state["recipe"] = str(recipe_path.resolve())
    state["provenance"] = provenance()
    atomic_write_json(state_path, state)
    atomic_write_text(out / RUN_REPORT, render_report(ctx, state))
    print(render_summary(summary))
    return summary


def _reason(previous: dict, key: str, settings: dict, invalidated: bool, forced: bool) -> str:
    if forced:
        return "running (--from)"
    if invalidated:
        return "running (an earlier stage changed)"
    if not previous:
        return "running"
    changed = _changed(previous.get("settings"), settings)
    if changed:
        return f"settings changed ({', '.join(changed)}): running again"
    if previous.get("key") != key:
        return "settings of an earlier stage or of hneurons changed: running again"
    return "artifacts missing: running"


# ----------------------------------------------------------------------------------------------- summary
def _metric(results: dict | None, task: str, metric: str) -> dict | None:
    if not results:
        return None
    for row in results.get("metrics", []):
        if row["task"] == task and row["metric"] == metric:
            return row
    return None


def summarize(ctx: RunContext, outcomes: list[StageOutcome], state: dict) -> dict[str, Any]:
    out = ctx.out
    neurons = _read(out / "locate" / NEURONS)
    locate = _read(out / "locate" / LOCATE_REPORT)
    evals = _read(out / "eval" / EVAL_RESULTS)
    summary: dict[str, Any] = {"output": str(out.resolve()), "stages": [o.__dict__ for o in outcomes],
                               "stage_seconds": {k: v.get("seconds") for k, v in state["stages"].items()}}
    if neurons:
        summary["h_neurons"] = {"count": neurons["count"], "per_mille": round(neurons["per_mille"], 4)}
    if locate:
        test = locate["test"]
        summary["detection"] = {"probe_auroc": test["probe"]["auroc"], "probe_auroc_ci95": test["probe"]["auroc_ci95"],
                                "random_auroc_mean": test.get("random", {}).get("auroc_mean")}
    if evals:
        rows = {}
        for task, metric in [("hneurons_facts", "hallucination_rate"), ("hneurons_facts", "accuracy"),
                             ("hneurons_nonexist", "hallucination_rate"),
                             ("hneurons_false_premise", "premise_rejection_rate"),
                             ("hneurons_misleading_context", "false_fact_adoption_rate"),
                             ("hneurons_sycophancy", "flip_rate"), ("hneurons_knowledge_mc", "acc")]:
            row = _metric(evals, task, metric)
            if row:
                rows[f"{task}:{metric}"] = {k: row.get(k) for k in ("base", "edited", "delta", "delta_ci95",
                                                                    "significant")}
                rows[f"{task}:{metric}"]["control_mean"] = (row.get("control") or {}).get("mean")
        summary["eval"] = rows
        if evals.get("kl"):
            summary["kl_mean"] = evals["kl"]["mean"]
    if ctx.alpha is not None:
        summary["alpha"] = ctx.alpha
    modes = ctx.recipe.edit.modes
    summary["fixed_model"] = {m: str((out / EDIT_FOLDERS[m]).resolve()) for m in modes
                              if (out / EDIT_FOLDERS[m]).is_dir()}
    repo = ctx.recipe.publish.repo or "YOUR_NAME/" + Path(ctx.recipe.model.id).name + "-hneurons"
    if (push_folder_of(ctx.recipe, out) / "README.md").is_file():
        summary["next"] = f"hneurons push {push_folder_of(ctx.recipe, out)} --repo {repo}" + (
            "" if ctx.recipe.publish.private else " --public")
    else:
        summary["next"] = f"hneurons run {ctx.recipe_path} (the stages after the last one run here)"
    return summary


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def render_summary(summary: dict) -> str:
    lines = ["", "=" * 72, "hneurons run: summary", "=" * 72]
    for o in summary["stages"]:
        t = f"{o['seconds']:.0f} s" if o["status"] == "ran" else o["status"]
        lines.append(f"  {o['name']:<8} {t:>10}   {o['note']}")
    if "h_neurons" in summary:
        h = summary["h_neurons"]
        lines.append(f"H-Neurons: {h['count']} ({h['per_mille']:.3f} per mille of FFN neurons)")
    if "detection" in summary:
        d = summary["detection"]
        lo, hi = d["probe_auroc_ci95"]
        lines.append(f"detection (test): probe AUROC {d['probe_auroc']:.3f} [{lo:.3f}, {hi:.3f}] vs random neurons "
                     f"{fmt(d['random_auroc_mean'], missing='-')}")
    if "alpha" in summary:
        lines.append(f"edit: alpha {summary['alpha']}")
    for name, row in summary.get("eval", {}).items():
        ci = row.get("delta_ci95") or [None, None]
        lines.append(f"  {name:<48} {fmt(row['base'], missing='-')} -> {fmt(row['edited'], missing='-')} "
                     f"(delta {fmt(row['delta'], 3, missing='-')} [{fmt(ci[0], missing='-')}, {fmt(ci[1], missing='-')}]"
                     f"{', significant' if row.get('significant') else ''}; random control {fmt(row['control_mean'], missing='-')})")
    if "kl_mean" in summary:
        lines.append(f"  retention: mean KL(base || edited) on neutral prompts {summary['kl_mean']:.4f} nats")
    for mode, path in summary.get("fixed_model", {}).items():
        lines.append(f"fixed model ({mode}): {path}")
    lines.append(f"report: {summary['output']}/report.md")
    lines.append(f"next: {summary['next']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ report
def render_report(ctx: RunContext, state: dict) -> str:
    """report.md: every stage's numbers and plots, with image paths relative to the output folder."""
    from ..collect.stage import format_summary
    from ..locate.stage import format_report

    out, r = ctx.out, ctx.recipe
    parts = [f"# hneurons report: {r.model.id}", "",
             f"Recipe `{ctx.recipe_path}`; output `{out}`. Generated {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    collect = _read(out / "collect" / COLLECT_MANIFEST)
    if collect:
        parts += ["## Collect", "", "Consistently right (faithful) and wrong (hallucinated) questions per split:", "",
                  "```", format_summary(collect), "```", ""]
    locate = _read(out / "locate" / LOCATE_REPORT)
    if locate:
        parts += ["## Locate", "", "```", format_report(locate), "```", ""]
        parts += [f"![{p}](locate/{p})" for p in locate.get("plots", [])] + [""]
    dose = _read(out / "dose" / DOSE_REPORT)
    if dose and r.dose is not None:
        from ..evaluate.dose import render_summary as dose_summary

        parts += ["## Dose-response", "", "```", dose_summary(dose), "```", "", "![slopes](dose/dose_slopes.png)", ""]
        parts += [f"![{t}](dose/{name})" for t, name in (dose.get("files") or {}).get("tasks", {}).items()] + [""]
    sweep = _read(out / "sweep" / SWEEP_REPORT)
    if sweep and r.edit.alpha == "auto":
        from ..evaluate.sweep import render_summary as sweep_summary

        parts += ["## Sweep", "", "```", sweep_summary(sweep), "```", "", "![sweep](sweep/sweep.png)", ""]
    if ctx.alpha is not None or "edit" in state["stages"]:
        parts += ["## Edit", ""]
        for mode in r.edit.modes:
            manifest = _read(out / EDIT_FOLDERS[mode] / EDIT_MANIFEST)
            if manifest:
                parts.append(f"- `{EDIT_FOLDERS[mode]}/` ({mode}): alpha {manifest['alpha'].get('default')}, "
                             f"{manifest['neurons']['count']} neurons, max logit difference vs run-time scaling "
                             f"{_max_diff(manifest.get('verification', {})):.2e}")
        parts.append("")
    abstention = _read(out / "abstention" / "report" / "abstention.json")
    if abstention and r.abstention is not None:
        from ..evaluate.abstention import render_report as abstention_table

        text = abstention_table(abstention).split("\n", 1)[1]  # its own title becomes this section's
        parts += [f"## Abstention edit vs baselines ({abstention['n']} items)", text,
                  "![risk-coverage](abstention/report/abstention_rc.png)", ""]
    evals = _read(out / "eval" / EVAL_RESULTS)
    if evals:
        from ..evaluate.table import render_table

        parts += ["## Evaluation (base vs edited, random-neuron control)", "", "```", render_table(evals), "```", ""]
        plot = (evals.get("files") or {}).get("plot")
        if plot:
            parts += [f"![eval](eval/{plot})", ""]
    parts += ["## Stage timings", "", "| stage | seconds |", "|---|---|"]
    parts += [f"| {k} | {v.get('seconds')} |" for k, v in state["stages"].items()]
    return "\n".join(parts) + "\n"
