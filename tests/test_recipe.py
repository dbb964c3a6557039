"""Recipes: schema validation with clear errors (key, file, line), resolution, bundled recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from editor.errors import RecipeError
from editor.pipeline.recipe import check_recipe, load_recipe, resolved

REPO = Path(__file__).resolve().parent.parent
MINIMAL = "model:\n  id: smollm2-135m-instruct\noutput: runs/x\n"


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_recipe_gets_every_default(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    data = resolved(recipe)
    assert data["collect"]["samples"] == 10 and data["collect"]["top_p"] == 0.9  # the paper's defaults
    assert data["locate"]["labels"] == "3v1" and data["edit"]["alpha"] == 0.0
    assert data["publish"]["push"] is False


@pytest.mark.parametrize("text, key, line", [
    (MINIMAL + "colect:\n  samples: 3\n", "colect", 4),
    (MINIMAL + "collect:\n  samples: three\n", "collect.samples", 5),
    (MINIMAL + "edit:\n  alpha: -1\n", "edit.alpha", 5),
    (MINIMAL + "edit:\n  alpha: .nan\n", "edit.alpha", 5),
    ("output: runs/x\n", "model", None),
    (MINIMAL + "locate:\n  labels: 2v2\n", "locate.labels", 5),
    (MINIMAL + "collect:\n  limit: {train: 10, tset: 5}\n", "collect.limit", 5),
    (MINIMAL + "collect:\n  batch_size: 0\n", "collect.batch_size", 5),
    (MINIMAL + "collect:\n  batch_size: big\n", "collect.batch_size", 5),
    (MINIMAL + "locate:\n  batch_size: -2\n", "locate.batch_size", 5),
    (MINIMAL + "collect:\n  backend: tgi\n", "collect.backend", 5),
])
def test_bad_recipes_name_key_file_and_line(tmp_path, text, key, line):
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert key.split(".")[0] in message and str(path) in message
    if key.endswith(("batch_size", "backend")):  # one problem, named by its full key
        assert message.count(key) == 1 and "; " not in message, message
        assert "positive integer or 'auto'" in message or "'hf' or 'vllm'" in message
    if line:
        assert f"{path}:{line}" in message


def test_batch_sizes_take_positive_ints_or_auto_and_backend_hf_or_vllm(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL + "collect:\n  batch_size: auto\n  backend: vllm\n"
                                                   "locate:\n  batch_size: 16\n"))
    assert (recipe.collect.batch_size, recipe.collect.backend, recipe.locate.batch_size) == ("auto", "vllm", 16)
    recipe = load_recipe(write(tmp_path, MINIMAL + "locate:\n  batch_size: AUTO\n"))
    assert recipe.locate.batch_size == "auto"
    defaults = load_recipe(write(tmp_path, MINIMAL))
    assert (defaults.collect.batch_size, defaults.collect.backend, defaults.locate.batch_size) == (32, "hf", 8)


def _stage_keys(recipe) -> dict[str, str]:
    """Every stage key of a recipe, computed as `hneurons run` computes them."""
    from editor.pipeline.run import RunContext, active_stages, stage_key, stage_settings

    ctx = RunContext(recipe, Path("r.yaml"), Path("out"))
    for stage in active_stages(recipe):
        ctx.settings[stage] = stage_settings(recipe, stage)
        ctx.keys[stage] = stage_key(ctx, stage)
    return ctx.keys


def test_default_backend_and_batch_sizes_leave_the_stage_keys_unchanged(tmp_path):
    """Run folders made before collect.backend existed still resume: the default hf is not in the key."""
    from editor.artifacts import sha256_json

    default = load_recipe(write(tmp_path, MINIMAL))
    keys = _stage_keys(default)
    # the collect key as it was computed before the backend key existed
    before = {"model": default.model.model_dump(mode="json"),
              "collect": default.collect.model_dump(mode="json", exclude={"backend"})}
    assert "batch_size" in before["collect"]
    assert keys["collect"] == sha256_json({"stage": "collect", "settings": before, "upstream": {}})[:16]
    explicit = load_recipe(write(tmp_path, MINIMAL + "collect:\n  backend: hf\n  batch_size: 32\n"
                                                     "locate:\n  batch_size: 8\n", "explicit.yaml"))
    assert _stage_keys(explicit) == keys
    vllm = _stage_keys(load_recipe(write(tmp_path, MINIMAL + "collect:\n  backend: vllm\n", "vllm.yaml")))
    assert vllm["collect"] != keys["collect"] and vllm["locate"] != keys["locate"]  # another engine, other samples
    auto = _stage_keys(load_recipe(write(tmp_path, MINIMAL + "locate:\n  batch_size: auto\n", "auto.yaml")))
    assert auto["collect"] == keys["collect"] and auto["locate"] != keys["locate"]


def test_unset_instruction_and_detector_settings_leave_the_eval_key_unchanged(tmp_path):
    """Run folders made before eval's system_instruction / edited_system_instruction / detector existed still
    resume: unset, they are not in the eval stage's settings; set, they are and change its key."""
    from editor.pipeline.run import NEW_EVAL_SETTINGS, stage_settings

    default = load_recipe(write(tmp_path, MINIMAL))
    for stage in ("eval", "sweep"):
        section = stage_settings(default, stage)[stage]
        assert not set(NEW_EVAL_SETTINGS) & set(section) and "tasks" in section
    told = load_recipe(write(tmp_path, MINIMAL + "eval:\n  system_instruction: Be brief.\n", "told.yaml"))
    assert stage_settings(told, "eval")["eval"]["system_instruction"] == "Be brief."
    assert _stage_keys(told)["eval"] != _stage_keys(default)["eval"]


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_unknown_task_is_an_error(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL + "eval:\n  tasks: [hneurons_facts, not_a_task_anywhere]\n"))
    with pytest.raises(RecipeError, match="not_a_task_anywhere"):
        check_recipe(recipe)


def test_recipe_cli_check_and_show(tmp_path):
    path = write(tmp_path, MINIMAL)
    out = subprocess.run([sys.executable, "-m", "editor", "recipe", "show", str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert "samples: 10" in out and "smollm2-135m-instruct" in out
    assert "  batch_size: 32\n" in out and "  backend: hf\n" in out and "  batch_size: 8\n" in out
    bad = write(tmp_path, MINIMAL + "edit:\n  alpah: 1\n", "bad.yaml")
    proc = subprocess.run([sys.executable, "-m", "editor", "recipe", "check", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2 and "alpah" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_recipe_is_valid_and_resolves_offline(path):
    """Every recipe in recipes/ validates; its model type is in the registry and its tasks are known to
    lm-eval or bundled (a dry run: no weights or datasets are downloaded)."""
    recipe = load_recipe(path)
    notes = check_recipe(recipe)
    assert any("eval tasks known" in n for n in notes)
    if not recipe.model.id.startswith(("smollm2", "gemma3-270m")):
        assert recipe.model.model_type, f"{path.name}: GPU recipes name the expected model_type"
        assert any("registry" in n for n in notes)


def _plan(argv):
    """What a stage command would run with: its settings (recipe + flags) and paths, resolved, nothing run."""
    import importlib

    from editor.cli import parse

    args = parse(argv)
    return importlib.import_module(f"editor.cli.{args.command}_cmd").resolve(args)


def test_stage_commands_take_settings_from_a_recipe_and_flags_override_it(tmp_path):
    path = write(tmp_path, MINIMAL + "collect:\n  samples: 3\n  limit: {train: 50, test: 20}\n  temperature: 0.5\n"
                           "locate:\n  labels: 1v1\n  C: [0.1, 0.2]\nedit:\n  alpha: 0.25\n  modes: [ia3]\n"
                           "eval:\n  tasks: [hneurons_facts]\n  limit: 5\n  controls: 1\n"
                           "publish:\n  repo: me/model\n  private: false\n")
    out = Path("runs/x").resolve()
    plan = _plan(["collect", "--recipe", str(path)])
    s = plan.settings
    assert (s.samples, s.temperature, s.limit) == (3, 0.5, {"train": 50, "test": 20})
    assert plan.model == "smollm2-135m-instruct" and Path(plan.out).resolve() == out / "collect"
    plan = _plan(["collect", "--recipe", str(path), "--samples", "7", "--out", str(tmp_path / "o")])
    assert plan.settings.samples == 7 and plan.out == str(tmp_path / "o") and plan.settings.temperature == 0.5
    plan = _plan(["locate", "--recipe", str(path)])
    assert plan.settings.labels == "1v1" and plan.settings.C == [0.1, 0.2]
    assert Path(plan.responses).resolve() == out / "collect" and plan.settings.batch_size == 8
    plan = _plan(["edit", "--recipe", str(path)])
    assert (plan.settings.alpha, plan.settings.modes) == (0.25, ["ia3"])
    assert {m: Path(o).resolve() for m, o in plan.outs.items()} == {"ia3": out / "adapter-ia3"}
    assert Path(plan.neurons).resolve() == out / "locate" / "neurons.json"
    plan = _plan(["eval", "--recipe", str(path)])
    assert (plan.base, plan.settings.tasks, plan.settings.limit, plan.settings.controls, plan.alpha) == (
        "smollm2-135m-instruct", ["hneurons_facts"], 5, 1, 0.25)
    plan = _plan(["push", "--recipe", str(path), "--dry-run"])
    assert plan.settings.repo == "me/model" and plan.settings.private is False
    assert Path(plan.folder).resolve() == out / "adapter-ia3"


def test_batch_size_and_backend_from_a_recipe_and_flags_override_them(tmp_path):
    path = write(tmp_path, MINIMAL + "collect:\n  batch_size: auto\n  backend: vllm\nlocate:\n  batch_size: auto\n")
    settings = _plan(["collect", "--recipe", str(path)]).settings
    assert (settings.batch_size, settings.backend) == ("auto", "vllm")
    settings = _plan(["collect", "--recipe", str(path), "--batch-size", "4", "--backend", "hf"]).settings
    assert (settings.batch_size, settings.backend) == (4, "hf")
    assert _plan(["locate", "--recipe", str(path)]).settings.batch_size == "auto"


def test_stage_command_without_recipe_or_required_flag_is_a_usage_error(capsys):
    from editor.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["locate", "--out", "x"])
    assert exit_.value.code == 2 and "--responses" in capsys.readouterr().err
