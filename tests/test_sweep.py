"""The alpha sweep: choosing alpha under constraints (constructed tables) and an end-to-end tiny sweep."""

from __future__ import annotations

import json

import pytest
from test_evaluate import NEURONS, write_task_folder

from editor.cli import main
from editor.errors import InputError
from editor.evaluate.settings import SweepSettings
from editor.evaluate.sweep import Point, assess, render_summary, resolve_specs

FACTS = ("hneurons_facts_val", "hallucination_rate", "none")
PREMISE = ("hneurons_false_premise_val", "premise_rejection_rate", "none")
KNOW = ("hneurons_knowledge_mc_val", "acc", "none")
HIB = {FACTS: False, PREMISE: True, KNOW: True}


def point(alpha: float, halluc: float, premise: float, know: float, kl: float | None,
          control: tuple[float, float, float] | None = (0.4, 0.5, 0.6)) -> Point:
    """A grid point; by default its random control scores like alpha 1 (control score 0)."""
    values = {FACTS: halluc, PREMISE: premise, KNOW: know}
    p = Point(alpha, values, dict(HIB), kl={"mean": kl, "ci95": None, "n_prompts": 50} if kl is not None else None)
    if control:
        p.control = {k: {"0": v} for k, v in zip((FACTS, PREMISE, KNOW), control)}
    return p


CONSTRAINTS = SweepSettings.of(max_knowledge_drop=0.02, max_kl=0.1, knowledge=["hneurons_knowledge_mc:acc"],
                          targets=["hneurons_facts:hallucination_rate", "hneurons_false_premise:premise_rejection_rate"])


def test_chooses_the_best_feasible_alpha():
    points = [point(0.0, 0.20, 0.70, 0.60, 0.30),   # best score but KL too high
              point(0.5, 0.30, 0.60, 0.59, 0.05),   # score ((0.4-0.3) + (0.6-0.5)) / 2 = 0.10, feasible
              point(0.75, 0.35, 0.55, 0.60, 0.02),  # score 0.05, feasible
              point(1.0, 0.40, 0.50, 0.60, None),   # the reference
              point(2.0, 0.50, 0.40, 0.61, 0.04, control=(0.4, 0.5, 0.6))]  # worse
    result = assess(points, CONSTRAINTS)
    assert result["chosen"]["alpha"] == 0.5
    assert result["chosen"]["score"] == pytest.approx(0.10)
    by_alpha = {p["alpha"]: p for p in result["points"]}
    assert by_alpha[0.0]["feasible"] is False and by_alpha[0.0]["violations"] == ["mean KL 0.3000 > 0.1 nats"]
    assert by_alpha[0.0]["score"] == pytest.approx(0.20)
    assert by_alpha[2.0]["score"] == pytest.approx(-0.10) and by_alpha[2.0]["control_score"] == pytest.approx(0.0)
    assert by_alpha[1.0]["score"] == 0 and by_alpha[1.0]["kl"] is None
    assert result["constraints"]["knowledge"] == ["hneurons_knowledge_mc_val:acc"]  # split suffix matched
    summary = render_summary({**result, "splits": {"hneurons_facts_val": "validation"}})
    assert "chosen alpha: 0.5" in summary and "hneurons_facts_val=validation" in summary


def test_knowledge_drop_is_a_constraint_and_ties_prefer_the_smaller_edit():
    points = [point(0.0, 0.10, 0.80, 0.50, 0.01),   # large gain, knowledge -0.10: infeasible
              point(0.25, 0.30, 0.60, 0.585, 0.01),  # drop 0.015 <= 0.02: feasible, score 0.10
              point(0.5, 0.30, 0.60, 0.60, 0.01),    # same score, closer to 1: preferred
              point(1.0, 0.40, 0.50, 0.60, None)]
    result = assess(points, CONSTRAINTS)
    assert result["chosen"]["alpha"] == 0.5
    zero = next(p for p in result["points"] if p["alpha"] == 0.0)
    assert zero["knowledge_drop"] == {"hneurons_knowledge_mc_val:acc": pytest.approx(0.10)}
    assert "drops by 0.100" in zero["violations"][0]


def test_says_plainly_when_no_alpha_meets_the_constraints():
    points = [point(0.0, 0.10, 0.80, 0.40, 0.50),
              point(0.5, 0.20, 0.70, 0.55, 0.12),
              point(1.0, 0.40, 0.50, 0.60, None)]
    result = assess(points, CONSTRAINTS)
    assert result["chosen"]["alpha"] is None
    assert result["chosen"]["reason"].startswith("no alpha meets the constraints")
    assert [c["alpha"] for c in result["closest"]] == [0.5, 0.0]  # smallest violation first
    assert "no alpha chosen" in render_summary({**result, "splits": {}})


def test_says_so_when_feasible_alphas_do_not_help():
    points = [point(0.5, 0.45, 0.45, 0.60, 0.01), point(1.0, 0.40, 0.50, 0.60, None)]
    result = assess(points, CONSTRAINTS)
    assert result["chosen"]["alpha"] is None and "none reduces" in result["chosen"]["reason"]


def test_the_chosen_alpha_must_beat_its_matched_random_control():
    points = [point(0.5, 0.30, 0.60, 0.60, 0.01, control=(0.28, 0.62, 0.60)),  # random sets do better
              point(1.0, 0.40, 0.50, 0.60, None)]
    result = assess(points, CONSTRAINTS)
    assert result["chosen"]["alpha"] is None
    assert result["chosen"]["reason"].startswith("no alpha beats its matched random-neuron control")
    assert result["points"][0]["beats_control"] is False and result["points"][0]["score"] == pytest.approx(0.10)
    # the same point against a control that does nothing qualifies
    assert assess([point(0.5, 0.30, 0.60, 0.60, 0.01), point(1.0, 0.40, 0.50, 0.60, None)],
                  CONSTRAINTS)["chosen"]["alpha"] == 0.5
    # without any random control nothing can be shown to beat random neurons
    bare = assess([point(0.5, 0.30, 0.60, 0.60, 0.01, control=None), point(1.0, 0.40, 0.50, 0.60, None, control=None)],
                  CONSTRAINTS)
    assert bare["chosen"]["alpha"] is None and "no random control" in bare["chosen"]["reason"]


def test_knowledge_drop_is_judged_by_its_ci_upper_bound():
    p = point(0.5, 0.30, 0.60, 0.59, 0.01)  # point drop 0.01 <= 0.02 ...
    p.delta_ci95[KNOW] = [-0.05, 0.03]  # ... but the change's CI allows a drop of 0.05
    result = assess([p, point(1.0, 0.40, 0.50, 0.60, None)], CONSTRAINTS)
    assessed = result["points"][0]
    assert assessed["knowledge_drop"]["hneurons_knowledge_mc_val:acc"] == pytest.approx(0.01)
    assert assessed["knowledge_drop_upper"]["hneurons_knowledge_mc_val:acc"] == pytest.approx(0.05)
    assert not assessed["feasible"] and "95% upper bound" in assessed["violations"][0]
    assert result["chosen"]["alpha"] is None
    p.delta_ci95[KNOW] = [-0.015, 0.005]  # a tight CI: feasible
    assert assess([p, point(1.0, 0.40, 0.50, 0.60, None)], CONSTRAINTS)["chosen"]["alpha"] == 0.5


def test_a_generative_task_and_its_mc_twin_are_one_target():
    twin = ("hneurons_false_premise_mc_val", "acc", "none")
    hib = dict(HIB) | {twin: True}

    def pt(alpha, halluc, premise, twin_acc):
        values = {FACTS: halluc, PREMISE: premise, KNOW: 0.6, twin: twin_acc}
        p = Point(alpha, values, dict(hib), kl={"mean": 0.01, "ci95": None, "n_prompts": 5})
        p.control = {k: {"0": v} for k, v in {FACTS: 0.4, PREMISE: 0.5, KNOW: 0.6, twin: 0.5}.items()}
        return p

    settings = SweepSettings.of(knowledge=["hneurons_knowledge_mc:acc"], targets=[
        "hneurons_facts:hallucination_rate", "hneurons_false_premise:premise_rejection_rate",
        "hneurons_false_premise_mc:acc"])
    result = assess([pt(0.5, 0.40, 0.70, 0.60), pt(1.0, 0.40, 0.50, 0.50)], settings)
    # facts: 0; false premise (one target): mean(0.20, 0.10) = 0.15; score = mean(0, 0.15), not mean(0, 0.2, 0.1)
    assert result["points"][0]["score"] == pytest.approx(0.075)


def test_metric_names_must_be_found():
    points = [point(0.5, 0.45, 0.45, 0.60, 0.01), point(1.0, 0.40, 0.50, 0.60, None)]
    with pytest.raises(InputError, match="none of the target metrics"):
        assess(points, SweepSettings.of(knowledge=["hneurons_knowledge_mc:acc"], targets=["truthfulqa_mc2:acc"]))
    with pytest.raises(InputError, match="TASK:METRIC"):
        SweepSettings.of(targets=["hallucination_rate"])
    with pytest.raises(InputError, match="alpha = 1"):
        assess([point(0.5, 0.45, 0.45, 0.60, 0.01)], CONSTRAINTS)
    found, missing = resolve_specs(["hneurons_facts:hallucination_rate", "nope:acc"], list(HIB))
    assert found == [FACTS] and missing == ["nope:acc"]


def test_sweep_cli_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from tinymodels import tiny_model, tiny_tokenizer

    ckpt = tmp_path / "ckpt"
    tiny_model("llama", seed=1).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    neurons = tmp_path / "neurons.json"
    neurons.write_text(json.dumps(NEURONS))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi there\nWrite a poem\nGive me a tip\n")
    common = ["--base", str(ckpt), "--neurons", str(neurons), "--tasks", "tiny_gen,tiny_mc", "--limit", "6",
              "--batch-size", "4", "--kl-prompts", str(prompts), "--kl-new-tokens", "4", "--ci-iters", "300",
              "--knowledge", "tiny_mc:acc", "--target", "tiny_gen:has_e", "--target", "tiny_gen:accuracy",
              "--controls", "1", "--device", "cpu"]

    # Tasks that score the test split are refused: alpha must not be chosen on test data.
    write_task_folder(tmp_path / "test_tasks", split="test")
    assert main(["sweep", *common, "--alphas", "0,2", "--include-path", str(tmp_path / "test_tasks"),
                 "--out", str(tmp_path / "refused")]) == 2
    assert "test split" in capsys.readouterr().err

    write_task_folder(tmp_path / "val_tasks", split="validation")
    out = tmp_path / "sweep"
    argv = ["sweep", *common, "--alphas", "0,2", "--include-path", str(tmp_path / "val_tasks"),
            "--max-kl", "1000", "--max-knowledge-drop", "1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["format"] == "hneurons.sweep/1" and doc["grid"] == [0.0, 1.0, 2.0]
    assert doc["splits"] == {"tiny_gen": "validation", "tiny_mc": "validation"}
    assert doc["neurons"]["count"] == len(NEURONS["neurons"]) and doc["settings"]["control_seeds"] == [0]
    points = {p["alpha"]: p for p in doc["points"]}
    assert points[1.0]["kl"]["mean"] == 0.0 and points[0.0]["kl"]["mean"] > 0 and points[0.0]["control_kl"] > 0
    # At alpha 1 every metric equals the reference; elsewhere the control is reported next to the edit.
    assert all(m["delta"] == 0 for m in points[1.0]["metrics"])
    assert all(m["control"] is not None for m in points[0.0]["metrics"])
    # With loose limits every alpha is feasible; the choice follows the scores in the file.
    assert all(p["feasible"] for p in doc["points"])
    qualifying = [p for p in doc["points"] if p["alpha"] != 1.0 and p["score"] > 0 and p["beats_control"]]
    best = max(qualifying, key=lambda p: p["score"] - p["control_score"]) if qualifying else None
    assert doc["chosen"]["alpha"] == (best["alpha"] if best else None)
    assert (out / "sweep.png").stat().st_size > 1000
    assert {d.name for d in (out / "lm_eval").iterdir()} == {"alpha_0", "alpha_1", "alpha_2", "alpha_0_control_seed0",
                                                             "alpha_2_control_seed0"}
    assert "splits: tiny_gen=validation" in printed

    # Tight limits on the same (resumed) runs: nothing is re-evaluated and the verdict changes accordingly.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "lm_eval").rglob("results.json")}
    argv[argv.index("--max-kl") + 1] = "0"
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "lm_eval").rglob("results.json")} == stamps
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["chosen"]["alpha"] is None and doc["chosen"]["reason"].startswith("no alpha meets the constraints")
    assert "no alpha chosen" in capsys.readouterr().out
