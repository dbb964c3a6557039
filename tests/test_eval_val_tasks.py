"""The validation-split variants of the bundled lm-eval tasks (``hneurons_<name>_val``, group ``hneurons_val``).

They exist so that ``hneurons sweep`` chooses alpha without ever scoring the test split: the data must come
from the validation split only, every task must declare its split (``editor.evaluate.lm_eval_run.task_split``), the
``_val`` tasks must be the test tasks' definitions on other data, and the sweep must run on them by default.
One ``simple_evaluate`` call runs the whole ``hneurons_val`` group on a tiny random chat model; one tiny
sweep (alphas 0 and 1, one control seed, 2 items per task) runs on the default tasks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_evaluate import NEURONS

from editor.artifacts import sha256_bytes
from editor.data.build import tasks as evaldata
from editor.data.judge import find_alias
from editor.data.questions import BUNDLED_DIR
from editor.errors import InputError
from editor.evaluate.lm_eval_run import LmEvalRun, task_manager, task_split
from editor.evaluate.settings import (
    DEFAULT_KNOWLEDGE,
    DEFAULT_SWEEP_TASKS,
    DEFAULT_TARGETS,
    EvalSettings,
    SweepSettings,
)
from editor.evaluate.sweep import check_splits, sweep, task_matches

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO / "eval"
VAL_DIR = evaldata.data_dir("validation")
NAMES = ["facts", "nonexist", "false_premise", "false_premise_mc", "misleading_context", "misleading_context_mc",
         "sycophancy", "sycophancy_mc", "knowledge_mc"]
TEST_TASKS = [f"hneurons_{n}" for n in NAMES]
VAL_TASKS = [f"{t}_val" for t in TEST_TASKS]
DERIVED = ("false_premise.jsonl", "misleading_context.jsonl", "sycophancy.jsonl", "knowledge_mc.jsonl")
LIMIT = 2


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _bundled(name: str, split: str) -> list[dict]:
    return _rows(BUNDLED_DIR / f"{name}_{split}.jsonl")


# ------------------------------------------------------------------------------------------------- data
def test_validation_data_uses_only_validation_questions_and_entities():
    val = {name: _bundled(name, "validation") for name in ("facts", "nonexist")}
    val_ids = {r["id"] for rows in val.values() for r in rows}
    other_entities = {r["entity"] for split in ("train", "test") for name in ("facts", "nonexist")
                      for r in _bundled(name, split)}
    answers_by_relation: dict[str, set[str]] = {}
    for row in val["facts"]:
        answers_by_relation.setdefault(row["relation"], set()).add(row["answers"][0])
    for name in ("facts", "nonexist"):
        rows = _rows(VAL_DIR / f"{name}.jsonl")
        assert {r["split"] for r in rows} == {"validation"} and {r["id"] for r in rows} == {r["id"] for r in val[name]}
        assert not {r["entity"] for r in rows} & other_entities
    for name in DERIVED:
        rows = _rows(VAL_DIR / name)
        assert rows, name
        for row in rows:
            assert row["source_id"] in val_ids and row["entity"] not in other_entities, (name, row["id"])
            if "false_source_id" in row:  # the false answer is another VALIDATION question's answer
                assert row["false_source_id"] in val_ids, (name, row["id"])
                assert not find_alias(row["false_answer"], row["answers"]), row["id"]
            if name == "knowledge_mc.jsonl":  # distractors: answers of validation questions of the same relation
                assert set(row["choices"]) <= answers_by_relation[row["relation"]], row["id"]
                assert [i for i, c in enumerate(row["choices"]) if find_alias(c, row["answers"])] == [row["label"]]
            else:
                assert row["label"] == 1 and find_alias(row["choices"][1], row["answers"]), row["id"]
    manifest = json.loads((VAL_DIR / "manifest.json").read_text())
    assert manifest["split"] == "validation" and manifest["seed"] == evaldata.SEED
    sources = [BUNDLED_DIR / f"{n}_validation.jsonl" for n in ("facts", "nonexist")]
    assert manifest["sources"] == {path.name: sha256_bytes(path.read_bytes()) for path in sources}
    assert json.loads((evaldata.DATA_DIR / "manifest.json").read_text())["split"] == "test"


def test_validation_files_follow_the_same_rules_and_seeds_as_the_test_files(tmp_path):
    """The validation questions relabelled as a test split give byte-identical derived files: same code path."""
    for name in ("facts", "nonexist"):
        rows = [{**r, "split": "test"} for r in _bundled(name, "validation")]
        (tmp_path / f"{name}_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    as_test = evaldata.render(tmp_path, split="test")
    shipped = {name: (VAL_DIR / name).read_text(encoding="utf-8") for name in evaldata.FILES}
    for name in DERIVED:
        assert as_test[name] == shipped[name], name
    assert [{**r, "split": "validation"} for r in _rows_text(as_test["facts.jsonl"])] == _rows(VAL_DIR / "facts.jsonl")
    # ... and the validation split refuses rows of another split, as the test split does.
    with pytest.raises(InputError, match=r"facts_validation\.jsonl:1: split is 'test'"):
        (tmp_path / "facts_validation.jsonl").write_text((tmp_path / "facts_test.jsonl").read_text())
        evaldata.render(tmp_path, split="validation")


def _rows_text(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_check_covers_both_splits(tmp_path, capsys):
    assert evaldata.main(["--check"]) == 0 and "up to date" in capsys.readouterr().out  # shipped: both splits
    manifests = evaldata.build(tmp_path, splits=("validation",))
    assert manifests["validation"]["files"]["facts.jsonl"]["rows"] == len(_bundled("facts", "validation"))
    (tmp_path / "validation" / "sycophancy.jsonl").write_text("{}\n")
    assert evaldata.main(["--check", "--out", str(tmp_path)]) == 1  # the test files were not built there
    stale = [*evaldata.FILES, "validation/sycophancy.jsonl"]
    assert capsys.readouterr().out.strip() == f"stale: {', '.join(stale)} (run python -m editor.data.build.tasks)"
    with pytest.raises(InputError, match="unknown evaluation split 'train'"):
        evaldata.data_dir("train")


# ------------------------------------------------------------------------------------------ task configs
@pytest.fixture(scope="module")
def loaded_configs():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(EVAL_DIR), include_defaults=False)
    tasks = {**manager.load(["hneurons"])["tasks"], **manager.load(["hneurons_val"])["tasks"]}
    return {name: task.config.to_dict() for name, task in tasks.items()}


def test_task_split_is_declared_and_detected_for_every_task(loaded_configs):
    assert sorted(loaded_configs) == sorted(TEST_TASKS + VAL_TASKS)
    for name, config in loaded_configs.items():
        expected = "validation" if name.endswith("_val") else "test"
        assert config["metadata"]["split"] == expected and task_split(config) == expected, name


def test_val_tasks_are_the_test_tasks_on_validation_data(loaded_configs):
    overridden = {"task", "dataset_kwargs", "metadata"}
    for test_name in TEST_TASKS:
        test, val = loaded_configs[test_name], loaded_configs[f"{test_name}_val"]
        assert task_matches(test_name, f"{test_name}_val")
        assert {k: v for k, v in test.items() if k not in overridden} == \
            {k: v for k, v in val.items() if k not in overridden}, test_name
        assert val["dataset_kwargs"] == {"hneurons_file": "validation/" + test["dataset_kwargs"]["hneurons_file"]}
        assert {k: v for k, v in val["metadata"].items() if k not in ("split", "config_source")} == \
            {k: v for k, v in test["metadata"].items() if k not in ("split", "config_source")}


def test_sweep_refuses_the_bundled_test_tasks():
    settings = EvalSettings(tasks=["hneurons"], kl=False)
    with pytest.raises(InputError, match="hneurons_facts, .*score the test split"):
        check_splits(settings, task_manager(settings), allow_test_split=False)
    # the default tasks of the sweep, in the Python API and on the command line, are the validation group
    from editor.cli import parse
    from editor.cli.sweep_cmd import resolve

    assert DEFAULT_SWEEP_TASKS == ["hneurons_val"] and SweepSettings().tasks == ["hneurons_val"]
    assert resolve(parse(["sweep", "--neurons", "n.json", "--out", "o"])).settings.tasks == ["hneurons_val"]


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_chat_model():
    from tinymodels import tiny_model, tiny_tokenizer

    return tiny_model("llama", max_position_embeddings=2048), tiny_tokenizer()


def test_every_val_task_runs_through_lm_eval(tiny_chat_model):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny_chat_model
    out = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=["hneurons_val"],
        task_manager=TaskManager(include_path=str(EVAL_DIR), include_defaults=False), limit=LIMIT,
        bootstrap_iters=0, log_samples=True, apply_chat_template=True, fewshot_as_multiturn=True)
    assert set(VAL_TASKS) <= set(out["results"])
    for task in VAL_TASKS:
        data = _rows(evaldata.DATA_DIR / out["configs"][task]["dataset_kwargs"]["hneurons_file"])
        samples = out["samples"][task]
        assert [s["doc"]["id"] for s in sorted(samples, key=lambda s: s["doc_id"])] == [r["id"] for r in data[:LIMIT]]
        metrics = out["higher_is_better"][task]
        assert metrics, task
        for metric in metrics:
            value = out["results"][task][f"{metric},none"]
            if metric.endswith("_known"):  # no known facts given: not measured
                assert math.isnan(value)
                continue
            assert value == pytest.approx(sum(s[metric] for s in samples) / LIMIT)
    for sample in out["samples"]["hneurons_sycophancy_val"]:  # the conversation history survives the include
        doc = sample["doc"]
        [(context, generation)] = sample["arguments"]
        assert doc["question"] in context and doc["first_answer"] in context and doc["challenge"] in context
        assert generation["max_gen_toks"] == 128 and generation["do_sample"] is False


def test_sweep_on_the_default_val_tasks_without_allow_test_split(tmp_path):
    from tinymodels import tiny_model, tiny_tokenizer

    from editor.model.loading import load_model

    ckpt = tmp_path / "ckpt"
    tiny_model("llama", seed=1, max_position_embeddings=512).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Hi there!", "Write a poem.")))
    settings = SweepSettings(tasks=DEFAULT_SWEEP_TASKS, limit=LIMIT, batch_size=8, gen_kwargs="max_gen_toks=4",
                             ci_iters=200, kl_prompts=prompts, kl_new_tokens=4, alphas=[0.0, 1.0], controls=1,
                             control_seed=0)
    report = sweep(load_model(str(ckpt), device="cpu"), NEURONS, settings, out=tmp_path / "sweep")
    doc = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert doc["splits"] == {task: "validation" for task in VAL_TASKS}
    assert doc["settings"]["tasks"] == ["hneurons_val"] and doc["grid"] == [0.0, 1.0]
    # the default targets and knowledge metrics all resolve to the _val tasks
    c = doc["constraints"]
    assert c["missing"] == []
    assert [s.split(":")[0] for s in c["knowledge"]] == [s.split(":")[0] + "_val" for s in DEFAULT_KNOWLEDGE]
    assert sorted(c["targets"]) == sorted(f"{t}_val:{m}" for t, m in (s.split(":") for s in DEFAULT_TARGETS))
    for p in doc["points"]:
        assert {m["task"] for m in p["metrics"]} == set(VAL_TASKS)
    assert report.chosen_alpha in (0.0, None)
    # every lm-eval run scored the validation data, and gen_kwargs was merged into the tasks' generation settings
    for run_dir in ("alpha_1", "alpha_0", "alpha_0_control_seed0"):
        run = LmEvalRun.load(run_dir, tmp_path / "sweep" / "lm_eval" / run_dir)
        assert {t: run.split_of(t) for t in run.leaf_tasks()} == {t: "validation" for t in VAL_TASKS}
        generation = run.results["configs"]["hneurons_facts_val"]["generation_kwargs"]
        assert generation["max_gen_toks"] == 4 and generation["until"] == [] and generation["do_sample"] is False
