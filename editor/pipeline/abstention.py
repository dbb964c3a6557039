"""The recipe's abstention stage: the trained abstention edit against its controls and baselines, in one report.

Runs after the ``abstain`` stage (OUT/abstain/, the H-Neuron edit) when the recipe has an ``abstention`` section
(:class:`~editor.evaluate.settings.AbstentionSettings`; docs/METHOD.md section 6, "Baselines"):

1. the same training (the recipe's ``abstain`` settings, the same collect answers) on ``random_sets`` matched
   random neuron sets (seeds 1..N: same per-layer counts, none of them H-Neurons) and, with ``lora_baseline``, a
   parameter-matched LoRA on every down projection (OUT/abstention/edits/<name>/);
2. ``hneurons eval`` of each trained edit through its exact LoRA adapter on the loaded base model, and of the
   prompt baseline (the base model told ``prompt_instruction`` in its system prompt), with the section's eval
   settings (OUT/abstention/eval/<name>/); the base model's results are computed once (the results cache) and
   the locate probe scores the base answers in the H-Neuron edit's eval (the probe as an abstention rule);
3. ``hneurons abstain-report`` over them (OUT/abstention/report/: abstention.json, abstention.md,
   abstention_rc.png), with the H-Neuron edit, the LoRA and the prompt baseline each minus the random sets' mean.

Resume: OUT/abstention/progress.json lists the finished steps under the stage's key; a step finished under the
same key is not redone (a killed training resumes from its own checkpoint); another key starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, read_json
from ..edit.settings import AbstainSettings
from ..evaluate.settings import AbstentionSettings, EvalSettings
from ..formats import EDIT_MANIFEST, EVAL_RESULTS
from ..model.loading import LoadedModel

STEPS_FILE = "progress.json"
H_EDIT = "h-neurons"
LORA = "lora"
PROMPT = "prompt"
SECTION_ONLY = {"random_sets", "lora_baseline", "prompt_instruction"}


def eval_settings(settings: AbstentionSettings, **update: Any) -> EvalSettings:
    """The section's eval settings as plain :class:`EvalSettings` (without its own fields)."""
    return EvalSettings(**(settings.model_dump(exclude=SECTION_ONLY) | update))


class Steps:
    """The finished steps of one stage key (OUT/abstention/progress.json)."""

    def __init__(self, out: Path, key: str):
        self.path, self.key = out / STEPS_FILE, key
        doc = read_json(self.path, "abstention progress") if self.path.is_file() else {}
        self.done: list[str] = list(doc.get("done", [])) if doc.get("key") == key else []

    def __contains__(self, step: str) -> bool:
        return step in self.done

    def mark(self, step: str) -> None:
        self.done.append(step)
        atomic_write_json(self.path, {"key": self.key, "done": self.done})

    def run_once(self, step: str, result: Path, action: Callable[[], Any]) -> None:
        """``action`` unless ``step`` finished under this key and its ``result`` file exists."""
        if step not in self.done or not result.is_file():
            action()
            self.mark(step)


def train_baselines(lm: LoadedModel, neurons: str | Path, responses: Path, train: AbstainSettings,
                    settings: AbstentionSettings, out: Path, steps: Steps, bars: bool = True
                    ) -> dict[str, Path]:
    """The random-set and LoRA edits, trained like the H-Neuron edit; name -> edit folder."""
    from ..edit.stage import edit_model

    plans = {f"random-seed{seed}": {"random_seed": seed, "forms": ["lora"]}
             for seed in range(1, settings.random_sets + 1)}
    if settings.lora_baseline:
        plans[LORA] = {"params": LORA}
    folders = {}
    for name, update in plans.items():
        folder = out / "edits" / name

        def train_one(name=name, update=update, folder=folder) -> None:
            print(f"  training the {name} abstention edit ...", flush=True)
            edit_model(lm, neurons, mode="abstain", out=folder, responses=responses,
                       abstain=AbstainSettings.of(train, **update), overwrite=True, progress=bars)

        steps.run_once(f"train:{name}", folder / EDIT_MANIFEST, train_one)
        folders[name] = folder
    return folders


def edit_form(folder: Path) -> dict[str, Any]:
    """How eval runs a trained edit: its exact LoRA adapter on the loaded base (no second model), else its
    checkpoint."""
    adapter = folder / "adapter-lora"
    if (adapter / EDIT_MANIFEST).is_file():
        return {"adapter": adapter}
    return {"edited": str(folder / "model")}


def abstention_comparison(lm: LoadedModel, *, abstain_dir: Path, neurons: str | Path, responses: Path,
                          train: AbstainSettings, settings: AbstentionSettings, probe: Path | None, out: Path,
                          key: str, progress: bool = True) -> dict[str, Any]:
    """Train the controls and baselines, evaluate every variant, write the report (module docstring); returns
    the report document."""
    from ..evaluate.abstention import compare_abstention
    from ..evaluate.stage import evaluate

    out.mkdir(parents=True, exist_ok=True)
    bars, steps = progress, Steps(out, key)
    edits = {H_EDIT: abstain_dir} | train_baselines(lm, neurons, responses, train, settings, out, steps, bars)
    runs: dict[str, dict[str, Any]] = {name: edit_form(folder) for name, folder in edits.items()}
    if settings.prompt_instruction:
        runs[PROMPT] = {"settings_update": {"edited_system_instruction": settings.prompt_instruction}}
    folders = {}
    for name, run in runs.items():
        folder = out / "eval" / name

        def evaluate_one(name=name, run=run, folder=folder) -> None:
            print(f"  evaluating {name} ...", flush=True)
            update = dict(run.get("settings_update", {}))
            if name == H_EDIT and probe is not None and probe.is_file():
                update["detector"] = str(probe)
            evaluate(lm, run.get("edited"), adapter=run.get("adapter"), settings=eval_settings(settings, **update),
                     out=folder, overwrite=True)

        steps.run_once(f"eval:{name}", folder / EVAL_RESULTS, evaluate_one)
        folders[name] = folder
    return compare_abstention(list(folders.values()), list(folders), out / "report")
