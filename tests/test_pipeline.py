"""`hneurons run`: a reduced SmolLM2 recipe end to end, resume, invalidation, push, bad recipes.

The push goes to tests/hubserver.py, a test double of the Hugging Face Hub's HTTP API on 127.0.0.1
(the Hub itself is unreachable here), through the real huggingface_hub client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from editor.cli import main

REPO = Path(__file__).resolve().parent.parent

RECIPE = """\
model:
  id: smollm2-135m-instruct
  device: cpu
output: {out}
collect:
  data: [bundled:facts]
  limit: {{train: 160, validation: 64, test: 64}}
  samples: 3
  temperature: 0.5
locate:
  random_draws: 3
  bootstrap: 200
edit:
  alpha: {alpha}
  modes: [weights, ia3]
eval:
  tasks: [hneurons_facts, hneurons_knowledge_mc, hneurons_sycophancy_mc]
  limit: 6
  controls: 1
  kl_prompts: 4
  bootstrap: 200
{publish}"""


def write_recipe(path: Path, out: Path, alpha: float = 0.0, publish: str = "") -> Path:
    path.write_text(RECIPE.format(out=out, alpha=alpha, publish=publish))
    return path


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The reduced default recipe, run once for the module (collect -> locate -> edit -> eval -> card)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    out = tmp / "out"
    recipe = write_recipe(tmp / "recipe.yaml", out)
    assert main(["run", str(recipe), "--no-progress"]) == 0
    return tmp, recipe, out


@pytest.mark.integration
def test_run_produces_the_fixed_model_adapter_eval_report_and_card(finished_run):
    from editor.report.card import check_written_card

    tmp, recipe, out = finished_run
    for name in ("collect/responses.jsonl", "locate/neurons.json", "locate/probe.safetensors",
                 "model/config.json", "model/model.safetensors.index.json", "model/README.md",
                 "adapter-ia3/adapter_model.safetensors", "adapter-ia3/README.md", "eval/eval_results.json",
                 "report.md", "run_state.json"):
        assert (out / name).is_file(), name
    assert (out / "adapter-ia3" / "adapter_model.safetensors").stat().st_size < 1_000_000
    report = (out / "report.md").read_text()
    for image in [line.split("](", 1)[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        assert (out / image).is_file(), image
    assert "## Locate" in report and "## Evaluation" in report
    check_written_card(out / "model")
    check_written_card(out / "adapter-ia3")
    # the written checkpoint loads with plain transformers, no hneurons, in a fresh process
    code = ("import sys; sys.modules['editor'] = None\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out / 'model')!r})\n"
            f"t = AutoTokenizer.from_pretrained({str(out / 'model')!r})\n"
            "ids = t('The capital of France is', return_tensors='pt')\n"
            "print(t.decode(m.generate(**ids, max_new_tokens=4, do_sample=False)[0]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "The capital of France is" in proc.stdout
    summary = json.loads((out / "run_state.json").read_text())["summary"]
    assert summary["h_neurons"]["count"] > 0 and "detection" in summary and summary["eval"]
    assert summary["next"].startswith("hneurons push ")


@pytest.mark.integration
def test_rerun_resumes_everything_and_a_changed_alpha_reruns_only_edit_and_later(finished_run, capsys):
    tmp, recipe, out = finished_run
    neurons_before = (out / "locate" / "neurons.json").read_bytes()
    code, text = run_cli(["run", str(recipe), "--no-progress"], capsys)
    assert code == 0
    assert text.count("up to date (resumed)") == 5 and "loading smollm2" not in text
    assert "hneurons run: summary" in text and "next: hneurons push" in text

    write_recipe(recipe, out, alpha=0.5)
    code, text = run_cli(["run", str(recipe), "--no-progress"], capsys)
    assert code == 0
    assert "[1/5] collect: up to date" in text and "[2/5] locate: up to date" in text
    assert "[3/5] edit: settings changed (alpha)" in text
    assert "[4/5] eval: running" in text and "[5/5] card: running" in text
    assert (out / "locate" / "neurons.json").read_bytes() == neurons_before
    manifest = json.loads((out / "model" / "hneurons_edit.json").read_text())
    assert manifest["alpha"]["default"] == 0.5
    assert json.loads((out / "eval" / "eval_results.json").read_text())["settings"]["alpha"] in (0.5, {"default": 0.5},
                                                                                               {"min": 0.5, "max": 0.5, "default": 0.5})


@pytest.mark.integration
def test_push_runs_only_when_asked_and_only_the_push(finished_run, hub, capsys):
    tmp, recipe, out = finished_run
    state = json.loads((out / "run_state.json").read_text())
    alpha = state["stages"]["edit"]["settings"]["alpha"]
    write_recipe(recipe, out, alpha=alpha, publish="publish:\n  repo: someone/smollm2-fixed\n  push: true\n")
    code, text = run_cli(["run", str(recipe), "--no-progress"], capsys)
    assert code == 0, text
    assert "[6/6] push: running" in text and text.count("up to date (resumed)") == 4  # the card names the repo
    files = hub.repos["someone/smollm2-fixed"].files()
    assert "README.md" in files and "model.safetensors.index.json" in files and "hneurons_edit.json" in files
    assert hub.repos["someone/smollm2-fixed"].private is True


@pytest.mark.parametrize("edit, culprit", [
    ("model:\n  id: ./no/such/model\noutput: {out}\n", "no/such/model"),
    ("model:\n  id: smollm2-135m-instruct\noutput: {out}\neval:\n  tasks: [no_such_task_xyz]\n", "no_such_task_xyz"),
    ("model:\n  id: smollm2-135m-instruct\noutput: {out}\nedit:\n  alpha: -1\n", "edit.alpha"),
    ("model:\n  id: smollm2-135m-instruct\noutput: {out}\nedti:\n  alpha: 0\n", "edti"),
    ("output: {out}\n", "model"),
])
def test_bad_recipes_fail_clearly_and_create_nothing(tmp_path, capsys, edit, culprit):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(edit.format(out=tmp_path / "out"))
    code, text = run_cli(["run", str(recipe), "--no-progress"], capsys)
    assert code == 2
    assert culprit in text and "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_detect_evaluates_the_probe_on_questions_it_never_saw(finished_run, capsys):
    """`hneurons detect --evaluate`: SmolLM2 answers new test questions; the located probe is scored on
    separating its wrong answers from its right ones, next to locate's random-neuron baseline."""
    tmp, recipe, out = finished_run
    report_path = tmp / "heldout.json"
    code, text = run_cli(["detect", "--probe", str(out / "locate" / "probe.safetensors"), "--evaluate",
                          "bundled:facts", "--split", "test", "--limit", "110", "--batch-size", "16",
                          "--out", str(report_path)], capsys)
    assert code == 0, text
    report = json.loads(report_path.read_text())
    asked = {json.loads(line)["id"] for line in (out / "collect" / "responses.jsonl").read_text().splitlines()}
    assert 0 < report["n_questions"] < 110  # the test questions collect asked are left out
    assert not asked & {a["id"] for a in report["answers"]}, "held-out means never asked by collect"
    assert 0 < report["n_hallucinated"] < report["n"]
    lo, hi = report["probe"]["auroc_ci95"]
    assert lo <= report["probe"]["auroc"] <= hi
    assert report["random"]["draws"] == 3 and "random neurons" in text
