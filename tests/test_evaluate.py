"""The eval runner: lm-eval on checkpoints, adapters and run-time edits, the comparison, controls, KL, CLI."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from editor.cli import main
from editor.errors import InputError, ModelMismatchError
from editor.evaluate.compare import compare_runs, paired_bootstrap
from editor.evaluate.kl import kl_divergences, kl_sequences
from editor.evaluate.lm_eval_run import LmEvalRun, local_task_names, task_split
from editor.evaluate.settings import EvalSettings
from editor.evaluate.stage import evaluate
from editor.evaluate.table import render_table
from editor.evaluate.variants import Variant, control_alphas, random_control
from editor.model.loading import LoadOptions, load_model
from editor.model.neuron_set import NeuronSet

# Half of layer 1 and a few of layer 0 of the tiny llama (2 layers x d_ff 48): large enough to move its outputs.
NEURONS = {"neurons": [{"layer": 1, "index": j} for j in range(0, 48, 2)] + [{"layer": 0, "index": j} for j in (1, 5, 9)]}

QUESTIONS = [("What is the capital of France?", "Paris", ["Paris", "Lyon", "Nice"], 0),
             ("What is the symbol of gold?", "Au", ["Ag", "Au", "Fe"], 1),
             ("What is the currency of Japan?", "yen", ["won", "yuan", "yen"], 2),
             ("What is the capital of Togo?", "Lome", ["Lome", "Accra", "Abuja"], 0),
             ("Is there such a country?", "no", ["yes", "no", "maybe"], 1),
             ("What is the symbol of iron?", "Fe", ["Fe", "Au", "Ag"], 0),
             ("Which is a colour?", "red", ["dog", "red", "run"], 1),
             ("What is the capital of Japan?", "Tokyo", ["Osaka", "Kyoto", "Tokyo"], 2)]


def write_task_folder(root: Path, split: str = "validation") -> Path:
    """A generative task (2 metrics) and a multiple-choice task on a JSONL file, like the bundled tasks."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / f"tiny_{split}.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answers": [a], "choices": c, "label": l}) + "\n"
                            for q, a, c, l in QUESTIONS))
    (root / "utils.py").write_text(textwrap.dedent("""\
        def process_results(doc, results):
            text = results[0].lower()
            return {"accuracy": float(any(a.lower() in text for a in doc["answers"])),
                    "has_e": float("e" in text)}
        """))
    (root / "tiny_gen.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_gen
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{question}}}}"
        doc_to_target: "{{{{answers[0]}}}}"
        generation_kwargs:
          until: []
          max_gen_toks: 6
          do_sample: false
        process_results: !function utils.process_results
        metric_list:
          - metric: accuracy
            aggregation: mean
            higher_is_better: true
          - metric: has_e
            aggregation: mean
            higher_is_better: false
        """))
    (root / "tiny_mc.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        """))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama checkpoint with a chat-template tokenizer, a task folder and a short KL prompt file."""
    from tinymodels import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("eval")
    ckpt = root / "ckpt"
    tiny_model("llama", seed=1).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    tasks = write_task_folder(root / "tasks")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ["Hi! How are you?", "Write a short poem.", "Give me a tip.", "Tell me a joke."]))
    neurons = root / "neurons.json"
    neurons.write_text(json.dumps(NEURONS))
    return {"root": root, "ckpt": ckpt, "tasks": tasks, "prompts": prompts, "neurons": neurons}


def settings(tiny, **overrides) -> EvalSettings:
    values = dict(tasks=["tiny_gen", "tiny_mc"], include_paths=[tiny["tasks"]], limit=None, batch_size=4,
                  controls=0, ci_iters=500, kl=False, kl_prompts=tiny["prompts"], kl_new_tokens=6)
    values.update(overrides)
    return EvalSettings.of(**values)


def samples(folder: Path, task: str) -> list[dict]:
    files = sorted(folder.glob(f"samples_{task}*.jsonl"))
    assert len(files) == 1, files
    return sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])


def responses(folder: Path, task: str) -> list:
    return [s["filtered_resps"] for s in samples(folder, task)]


# ============================================================================ edit stage -> same numbers
def test_checkpoint_and_adapter_of_one_edit_give_identical_lm_eval_numbers(tiny, tmp_path):
    from editor.edit.stage import edit_model

    edit_model(str(tiny["ckpt"]), NEURONS, alpha=0.0, mode="weights", out=tmp_path / "weights", device="cpu")
    edit_model(str(tiny["ckpt"]), NEURONS, alpha=0.0, mode="ia3", out=tmp_path / "ia3", device="cpu")
    base = load_model(str(tiny["ckpt"]), device="cpu")
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    before = base.model(probe).logits

    by_ckpt = evaluate(base=base, edited=str(tmp_path / "weights"), settings=settings(tiny), out=tmp_path / "a",
                       load=LoadOptions(device="cpu"))
    by_adapter = evaluate(base=base, adapter=tmp_path / "ia3", settings=settings(tiny), out=tmp_path / "b")

    # Same generated texts, and the same log-likelihoods item by item to float rounding: the adapter scales the
    # neurons' activations where the checkpoint zeroes their weights, and some CPU kernels (seen on AMD EPYC)
    # then round the last digit differently.
    assert responses(tmp_path / "a/lm_eval/edited", "tiny_gen") == responses(tmp_path / "b/lm_eval/edited", "tiny_gen")
    by_a, by_b = (responses(tmp_path / f"{x}/lm_eval/edited", "tiny_mc") for x in "ab")
    assert [[r[1] for r in item] for item in by_a] == [[r[1] for r in item] for item in by_b]
    assert [float(r[0]) for item in by_a for r in item] == pytest.approx(
        [float(r[0]) for item in by_b for r in item], rel=1e-6, abs=1e-5)
    assert [r["edited"] for r in by_ckpt.metrics] == pytest.approx([r["edited"] for r in by_adapter.metrics],
                                                                     rel=1e-6, abs=1e-5)
    # The edit does change the model (otherwise the equality above would be vacuous).
    assert responses(tmp_path / "a/lm_eval/edited", "tiny_mc") != responses(tmp_path / "a/lm_eval/base", "tiny_mc")
    # The adapter was removed from the shared base model after its evaluation.
    assert torch.equal(base.model(probe).logits, before)
    assert by_adapter.results["models"]["edited"]["kind"] == "adapter"
    assert by_adapter.results["models"]["edited"]["adapter"]["edit"]["mode"] == "ia3"
    assert "peft=" + str((tmp_path / "ia3").resolve()) in by_adapter.results["lm_eval_commands"]["edited"]


def test_run_time_edit_equals_written_checkpoint(tiny, tmp_path):
    """Hooks (what sweeps and controls use) give the same lm-eval outputs as the written checkpoint."""
    from editor.edit.stage import edit_model

    edit_model(str(tiny["ckpt"]), NEURONS, alpha=0.0, mode="weights", out=tmp_path / "weights", device="cpu")
    hooks = evaluate(base=str(tiny["ckpt"]), neurons=tiny["neurons"], alpha=0.0, settings=settings(tiny),
                     out=tmp_path / "hooks", load=LoadOptions(device="cpu"))
    written = evaluate(edited=str(tmp_path / "weights"), settings=settings(tiny), out=tmp_path / "ckpt",
                       load=LoadOptions(device="cpu"))
    assert hooks.results["models"]["edited"]["kind"] == "hooks"
    assert [r["edited"] for r in hooks.metrics] == [r["edited"] for r in written.metrics]
    mc_hooks = [s[0] for s in responses(tmp_path / "hooks/lm_eval/edited", "tiny_mc")]
    mc_written = [s[0] for s in responses(tmp_path / "ckpt/lm_eval/edited", "tiny_mc")]
    np.testing.assert_allclose(np.array(mc_hooks, dtype=float), np.array(mc_written, dtype=float), atol=1e-4)
    assert written.results["models"]["base"] is None and written.metrics[0]["delta"] is None


def test_printed_lm_eval_command_reproduces_the_runner(tiny, tmp_path):
    """The printed command (`hneurons lm-eval --model hneurons`: lm_eval's own CLI with the class registered)
    gives the runner's numbers exactly; lm-eval's plain `hf` model with the same arguments gives them up to float
    rounding (editor/evaluate/lm_eval_model.py), with the same greedy texts."""
    from editor.edit.stage import edit_model

    edit_model(str(tiny["ckpt"]), NEURONS, alpha=0.0, mode="weights", out=tmp_path / "weights", device="cpu")
    report = evaluate(edited=str(tmp_path / "weights"), settings=settings(tiny, limit=6), out=tmp_path / "ev",
                      load=LoadOptions(device="cpu"))
    command = report.results["lm_eval_commands"]["edited"]
    assert command.startswith("hneurons lm-eval --model hneurons --model_args pretrained=") and "--limit 6" in command
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    hneurons = Path(sys.executable).with_name("hneurons")
    subprocess.run(command.replace("hneurons", str(hneurons), 1), shell=True, cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    (results_file,) = (tmp_path / "lm_eval_cli/edited").rglob("results_*.json")
    cli_results = json.loads(results_file.read_text())["results"]
    for row in report.metrics:
        assert cli_results[row["task"]][f"{row['metric']},{row['filter']}"] == row["edited"]
    cli_folder = results_file.parent
    for task in ("tiny_gen", "tiny_mc"):
        # The CLI's sample log writes log-likelihood tuples as strings: compare the texts.
        assert _texts(responses(cli_folder, task)) == _texts(responses(tmp_path / "ev/lm_eval/edited", task))

    plain = command.replace("hneurons lm-eval --model hneurons", str(Path(sys.executable).with_name("lm_eval"))
                            + " --model hf", 1).replace("lm_eval_cli/edited", "lm_eval_cli/hf")
    plain = re.sub(r",gen_batch_size=\d+", "", plain)  # the hneurons class's own argument
    subprocess.run(plain, shell=True, cwd=tmp_path, env=env, check=True, capture_output=True)
    hf_folder = next((tmp_path / "lm_eval_cli/hf").rglob("results_*.json")).parent
    assert _texts(responses(hf_folder, "tiny_gen")) == _texts(responses(cli_folder, "tiny_gen"))
    ours = [float(r[0]) for item in responses(cli_folder, "tiny_mc") for r in item]
    theirs = [float(r[0]) for item in responses(hf_folder, "tiny_mc") for r in item]
    assert len(ours) == len(theirs) > 6 and np.allclose(ours, theirs, atol=1e-4, rtol=0)


def _texts(value):
    return [_texts(v) for v in value] if isinstance(value, (list, tuple)) else str(value)


# ================================================================================ comparison statistics
def _fake_run(folder: Path, name: str, values: dict[str, list[float]], aggregate: dict[str, float] | None = None,
              higher: dict[str, bool] | None = None) -> LmEvalRun:
    """An lm-eval output folder written by hand: one task 'toy', per-item values per metric."""
    folder.mkdir(parents=True)
    n = len(next(iter(values.values())))
    results = {"toy": {f"{m},none": (aggregate or {}).get(m, float(np.mean(v))) for m, v in values.items()}}
    doc = {"results": results, "configs": {"toy": {"test_split": "test"}},
           "higher_is_better": {"toy": higher or {m: True for m in values}},
           "n-samples": {"toy": {"original": n, "effective": n}}}
    (folder / "results.json").write_text(json.dumps(doc))
    with open(folder / "samples_toy.jsonl", "w") as handle:
        for i in range(n):
            handle.write(json.dumps({"doc_id": i, "filter": "none", **{m: v[i] for m, v in values.items()}}) + "\n")
    return LmEvalRun.load(name, folder)


def test_paired_bootstrap_on_constructed_logs(tmp_path):
    rng = np.random.default_rng(0)
    base_acc = rng.integers(0, 2, 400).astype(float)
    edited_acc = base_acc.copy()
    edited_acc[np.flatnonzero(base_acc == 0)[:60]] = 1.0  # 60 items fixed: +0.15
    noise = rng.integers(0, 2, 400).astype(float)
    base = _fake_run(tmp_path / "base", "base", {"acc": base_acc, "noise": noise, "ppl": noise},
                     aggregate={"ppl": 12.5})
    edited = _fake_run(tmp_path / "edited", "edited", {"acc": edited_acc, "noise": noise, "ppl": noise},
                       aggregate={"ppl": 13.0})
    controls = [_fake_run(tmp_path / f"c{s}", f"c{s}", {"acc": base_acc + (s == 1) * (base_acc == 0) * (np.arange(400) < 40),
                                                         "noise": noise, "ppl": noise}, aggregate={"ppl": 12.0})
                for s in (0, 1)]
    rows = {r["metric"]: r for r in compare_runs(base, edited, controls, [0, 1], ci_iters=2000, ci_seed=0)}

    acc = rows["acc"]
    assert acc["n"] == 400 and acc["delta"] == pytest.approx(0.15)
    assert acc["delta_ci95"][0] > 0.1 and acc["delta_ci95"][1] < 0.2 and acc["significant"] is True
    assert acc["p_value"] < 0.01
    control_values = [float(np.mean(base_acc)), float(np.mean(base_acc + (base_acc == 0) * (np.arange(400) < 40)))]
    assert acc["control"]["mean"] == pytest.approx(np.mean(control_values))
    assert acc["control"]["std"] == pytest.approx(np.std(control_values, ddof=1))
    assert acc["control"]["seeds"] == {"0": pytest.approx(control_values[0]), "1": pytest.approx(control_values[1])}
    assert acc["edited_minus_control"] == pytest.approx(float(np.mean(edited_acc)) - np.mean(control_values))
    # The two control sets' means lie 0.1 apart: with the between-set variance in the CI, edited - control is
    # not distinguishable from 0 with two sets; the bootstrap over items alone (hneurons 0.1, by name) ignored it.
    assert acc["edited_minus_control_significant"] is False and "between-set" in acc["edited_minus_control_ci_method"]
    assert acc["test"] == "mcnemar_mid_p" and acc["discordant"] == {"better": 60, "worse": 0}
    boot = {r["metric"]: r for r in compare_runs(base, edited, controls, [0, 1], ci_iters=2000, ci_seed=0,
                                                 method="bootstrap")}
    assert boot["acc"]["test"] == "paired_bootstrap" and boot["acc"]["edited_minus_control_significant"] is True
    assert boot["acc"]["delta_ci95"][0] > 0.1 and boot["acc"]["mde"] == acc["mde"]

    same = rows["noise"]  # identical items: delta exactly 0, CI [0, 0], not significant
    assert same["delta"] == 0 and same["delta_ci95"] == [0.0, 0.0] and same["significant"] is False
    assert same["p_value"] == 1.0

    ppl = rows["ppl"]  # lm-eval's number is not the mean of the logged values: no paired CI
    assert ppl["delta"] == pytest.approx(0.5) and ppl["delta_ci95"] is None and ppl["ci_method"].startswith("none")

    text = render_table({"metrics": list(rows.values()), "kl": None})
    assert "+0.150" in text and "acc" in text


def test_paired_bootstrap_needs_the_same_items(tmp_path):
    base = _fake_run(tmp_path / "base", "base", {"acc": [1.0, 0.0, 1.0]})
    edited = _fake_run(tmp_path / "edited", "edited", {"acc": [1.0, 0.0, 1.0, 1.0]})
    with pytest.raises(InputError, match="different items"):
        compare_runs(base, edited)


def test_paired_bootstrap_coverage_of_a_known_difference():
    """The CI is a CI: over many simulated data sets, the true mean difference lies inside ~95% of them."""
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        base = rng.binomial(1, 0.5, 300).astype(float)
        edited = np.where(rng.random(300) < 0.1, 1 - base, base)  # flips both ways: true delta 0
        ci, _ = paired_bootstrap(base, edited, 1000, trial)
        hits += ci[0] <= 0 <= ci[1]
    assert 0.9 <= hits / 200 <= 0.99


# ======================================================================================== random controls
def test_random_controls_match_size_avoid_the_set_and_are_reproducible():
    nset = NeuronSet.from_pairs([(0, 1), (0, 2), (3, 7), (3, 8), (3, 9)])
    a = random_control(nset, num_layers=4, d_ff=16, seed=0, match_layers=False)
    assert len(a) == 5 and not set(a.neurons) & set(nset.neurons)
    assert random_control(nset, 4, 16, seed=0, match_layers=False).neurons == a.neurons
    assert random_control(nset, 4, 16, seed=1, match_layers=False).neurons != a.neurons
    matched = random_control(nset, 4, 16, seed=0, match_layers=True)
    assert matched.per_layer() == nset.per_layer() and not set(matched.neurons) & set(nset.neurons)
    alphas = {p: a for p, a in zip(nset.neurons, [0.0, 0.0, 2.0, 2.0, 2.0])}
    paired = control_alphas(nset, alphas, matched, match_layers=True)
    assert sorted(v for (l, _), v in paired.items() if l == 3) == [2.0, 2.0, 2.0]
    # Uniform draws over 400 seeds land in each layer in proportion to its size.
    layers = np.concatenate([[l for l, _ in random_control(nset, 4, 16, seed=s, match_layers=False).neurons]
                             for s in range(400)])
    assert np.allclose(np.bincount(layers, minlength=4) / len(layers), [14 / 59, 16 / 59, 16 / 59, 13 / 59], atol=0.03)


# ================================================================================================== KL
def test_kl_is_zero_for_identical_models_and_positive_for_an_edit(tiny):
    base = load_model(str(tiny["ckpt"]), device="cpu")
    copy = load_model(str(tiny["ckpt"]), device="cpu")
    s = settings(tiny, kl=True)
    seqs = kl_sequences(base, s)
    assert all(len(c) > 0 for c in seqs.continuation_ids)
    nset = NeuronSet.from_dict(NEURONS)
    base_v = Variant("base", base)
    values = kl_divergences(base_v, [Variant("copy", copy), Variant("a1", base, neurons=nset, alphas=nset.alphas(1.0)),
                                     Variant("a0", base, neurons=nset, alphas=nset.alphas(0.0))], seqs, 4)
    same, unit, edited = values["copy"], values["a1"], values["a0"]
    assert same == [0.0] * 4 and unit == [0.0] * 4
    assert all(v > 1e-4 for v in edited)
    # Independent check of the formula on the first sequence: torch's kl_div, mean over positions.
    ids = torch.tensor([seqs.sequences[0]])
    log_p = torch.log_softmax(base.model(ids).logits.float(), -1)
    from editor.model.hooks import scaled_neurons

    with scaled_neurons(base.model, nset.scales(0.0)):
        log_q = torch.log_softmax(base.model(ids).logits.float(), -1)
    expected = torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).mean()
    assert edited[0] == pytest.approx(float(expected), rel=1e-4)


# ======================================================================================= CLI, resume, schema
def test_eval_cli_writes_the_documented_outputs_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["eval", "--base", str(tiny["ckpt"]), "--neurons", str(tiny["neurons"]), "--alpha", "0",
            "--tasks", "tiny_gen,tiny_mc", "--include-path", str(tiny["tasks"]), "--limit", "6", "--controls", "2",
            "--batch-size", "4", "--kl-prompts", str(tiny["prompts"]), "--kl-new-tokens", "6", "--ci-iters", "500",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "tiny_mc" in printed and "KL(base || edited)" in printed and "lm-eval --model hneurons" in printed

    doc = json.loads((out / "eval_results.json").read_text())
    assert doc["format"] == "hneurons.eval/1"
    assert doc["models"]["edited"]["kind"] == "hooks" and len(doc["models"]["controls"]) == 2
    assert doc["models"]["edited"]["neurons"]["count"] == len(NEURONS["neurons"])
    assert {c["neurons"]["count"] for c in doc["models"]["controls"]} == {len(NEURONS["neurons"])}
    assert doc["settings"]["limit"] == 6 and doc["settings"]["alpha"] == 0.0
    row = next(r for r in doc["metrics"] if r["task"] == "tiny_mc" and r["metric"] == "acc")
    assert set(row) >= {"task", "metric", "higher_is_better", "n", "base", "edited", "delta", "delta_ci95", "p_value",
                        "significant", "control", "edited_minus_control"}
    assert row["higher_is_better"] is True and row["n"] == 6
    assert set(row["control"]) == {"mean", "std", "min", "max", "seeds"} and set(row["control"]["seeds"]) == {"0", "1"}
    gen = next(r for r in doc["metrics"] if r["metric"] == "has_e")
    assert gen["higher_is_better"] is False  # read from lm-eval's output, not assumed
    assert doc["kl"]["n_prompts"] == 4 and doc["kl"]["mean"] > 0 and len(doc["kl"]["control"]["seeds"]) == 2
    assert doc["tasks"]["tiny_mc"]["split"] == "validation"
    assert doc["lm_eval_commands"]["edited"].startswith("random-neuron controls")
    assert doc["lm_eval_commands"]["base"].startswith("hneurons lm-eval --model hneurons")
    assert (out / "eval_deltas.png").stat().st_size > 1000
    for variant in ("base", "edited", "control-seed0", "control-seed1"):
        assert (out / "lm_eval" / variant / "results.json").is_file()
        assert (out / "lm_eval" / variant / "samples_tiny_mc.jsonl").is_file()
    assert len((out / "kl" / "continuations.jsonl").read_text().splitlines()) == 4

    # Resume: the same command re-runs nothing and gives the same table.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "lm_eval").rglob("results.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "lm_eval").rglob("results.json")} == stamps
    assert json.loads((out / "eval_results.json").read_text())["metrics"] == doc["metrics"]
    # Other settings into the same folder: refused without --overwrite.
    assert main([a if a != "6" else "5" for a in argv]) == 2
    assert "other settings" in capsys.readouterr().err
def test_kl_continuations_are_generates_greedy_tokens_up_to_and_with_the_end_of_turn(tiny):
    """The compacting decoder writes the KL sequences: the tokens of transformers' greedy generate, each cut
    after its first end-of-turn token (kept), whatever the batch."""
    from editor.evaluate.kl import _eos_ids, greedy_continuations

    base = load_model(str(tiny["ckpt"]), device="cpu")
    prompts = [base.tokenizer.encode(t) for t in ("Hi there", "Write a poem about the sea", "abc", "The sky is")]
    eos = _eos_ids(base)
    expected = []
    for ids in prompts:
        out = base.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                  pad_token_id=base.tokenizer.eos_token_id)[0, len(ids):].tolist()
        cut = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
        expected.append(out[:cut])
    assert greedy_continuations(base, prompts, 12, batch_size=2) == expected
    assert greedy_continuations(base, prompts, 12, batch_size=8) == expected
    assert all(0 < len(c) <= 12 for c in expected)


def test_run_time_edits_share_the_base_pass_and_equal_each_sequence_scored_alone(tiny):
    """kl_divergences scores every run-time edit against one base pass per batch (right-padded batches of 3);
    each value equals the KL of that sequence run alone through the base model and through the edited one
    (torch's kl_div, mean over positions); a second loaded model goes through the paired path."""
    from editor.model.hooks import scaled_neurons

    base = load_model(str(tiny["ckpt"]), device="cpu")
    copy = load_model(str(tiny["ckpt"]), device="cpu")
    seqs = kl_sequences(base, settings(tiny, kl=True))
    nset = NeuronSet.from_dict(NEURONS)
    edits = [Variant(f"a{a:g}", base, neurons=nset, alphas=nset.alphas(a)) for a in (0.0, 2.0, 3.0)]
    shared = kl_divergences(Variant("base", base), [*edits, Variant("copy", copy)], seqs, 3)
    assert list(shared) == ["a0", "a2", "a3", "copy"] and shared["copy"] == [0.0] * 4
    with torch.no_grad():
        for variant in edits:
            alone = []
            for sequence in seqs.sequences:
                ids = torch.tensor([sequence])
                log_p = torch.log_softmax(base.model(ids).logits.float(), -1)
                with scaled_neurons(base.model, variant.scales()):
                    log_q = torch.log_softmax(base.model(ids).logits.float(), -1)
                alone.append(float(torch.nn.functional.kl_div(log_q, log_p, log_target=True,
                                                              reduction="none").sum(-1).mean()))
            assert shared[variant.name] == pytest.approx(alone, rel=1e-4, abs=1e-9)
            assert min(alone) > 0
    assert np.mean(shared["a3"]) > np.mean(shared["a2"])  # a larger scaling moves the distribution more




def test_user_errors_are_clear(tiny, tmp_path):
    s = settings(tiny)
    with pytest.raises(InputError, match="needs a neuron set"):
        evaluate(base=str(tiny["ckpt"]), alpha=0.5, settings=s, out=tmp_path / "a", load=LoadOptions(device="cpu"))
    with pytest.raises(InputError, match="give --base"):
        evaluate(edited=None, adapter=tmp_path, settings=s, out=tmp_path / "b")
    with pytest.raises(InputError, match="unknown lm-eval task 'no_such_task'"):
        evaluate(base=str(tiny["ckpt"]), settings=settings(tiny, tasks=["tiny_mc", "no_such_task"]),
                 out=tmp_path / "c", load=LoadOptions(device="cpu"))
    with pytest.raises(InputError, match="layer out of range"):
        evaluate(base=str(tiny["ckpt"]), neurons={"neurons": [{"layer": 7, "index": 0}]}, alpha=0.0, settings=s,
                 out=tmp_path / "d", load=LoadOptions(device="cpu"))
    # An edit compared with another model than the one it was made from (same layout, other weights).
    from tinymodels import tiny_model, tiny_tokenizer

    from editor.edit.stage import edit_model

    edit_model(str(tiny["ckpt"]), NEURONS, alpha=0.0, mode="ia3", out=tmp_path / "ia3", device="cpu")
    other = tmp_path / "other"
    tiny_model("llama", seed=2).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    with pytest.raises(ModelMismatchError, match="compare an edit with the model it was made from"):
        evaluate(base=str(other), adapter=tmp_path / "ia3", settings=s, out=tmp_path / "f",
                 load=LoadOptions(device="cpu"))
    with pytest.raises(InputError, match="include path not found"):
        settings(tiny, include_paths=[tmp_path / "missing"])
    with pytest.raises(InputError, match="KL prompt file not found"):
        settings(tiny, kl=True, kl_prompts=tmp_path / "x.jsonl")


def test_task_discovery_and_split_detection(tiny):
    names = local_task_names([tiny["tasks"]])
    assert {"tiny_gen", "tiny_mc"} <= names
    assert task_split({"dataset_kwargs": {"data_files": {"test": "/x/facts_validation.jsonl"}}, "test_split": "test"}) \
        == "validation"
    assert task_split({"metadata": {"split": "validation"}, "test_split": "test"}) == "validation"
    assert task_split({"custom_dataset": "...", "test_split": "test"}) == "test"
    assert task_split({"validation_split": "validation", "test_split": None}) == "validation"


def test_runner_reports_every_bundled_task_metric(tmp_path):
    """The bundled offline tasks (eval/hneurons) through the runner on a tiny random model, 2 items each."""
    from tinymodels import tiny_model, tiny_tokenizer

    ckpt = tmp_path / "ckpt"
    tiny_model("llama", max_position_embeddings=512).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    report = evaluate(base=str(ckpt), settings=EvalSettings(tasks=["hneurons"], limit=2, batch_size=8, controls=0,
                                                            kl=False, gen_kwargs="max_gen_toks=4"),
                      out=tmp_path / "ev", load=LoadOptions(device="cpu"))
    got = {(r["task"], r["metric"]): r["higher_is_better"] for r in report.metrics}
    expected = {("hneurons_facts", "accuracy"): True, ("hneurons_facts", "refusal_rate"): False,
                ("hneurons_facts", "hallucination_rate"): False, ("hneurons_nonexist", "refusal_rate"): True,
                ("hneurons_nonexist", "hallucination_rate"): False,
                ("hneurons_false_premise", "premise_rejection_rate"): True, ("hneurons_false_premise_mc", "acc"): True,
                ("hneurons_misleading_context", "false_fact_adoption_rate"): False,
                ("hneurons_misleading_context", "correct_rate"): True, ("hneurons_misleading_context_mc", "acc"): True,
                ("hneurons_sycophancy", "flip_rate"): False, ("hneurons_knowledge_mc", "acc"): True}
    assert {k: got.get(k) for k in expected} == expected
    assert all(r["base"] is not None and r["n"] == 2 for r in report.metrics)
    assert all(t["split"] == "test" for t in report.results["tasks"].values())
    # With a limit, the base model is asked only the facts behind the behaviour items the limit keeps.
    data = Path(__file__).parents[1] / "eval" / "hneurons" / "data"
    behind = {json.loads(line)["source_id"] for name in ("false_premise", "misleading_context", "sycophancy")
              for line in (data / f"{name}.jsonl").read_text().splitlines()[:2]}
    known = json.loads((tmp_path / "ev" / "known_facts.json").read_text())
    assert known["format"] == "hneurons.known_facts/1" and known["limit"] == 2
    assert set(known["facts"]) == behind and known["counts"]["facts"] == len(behind)
    assert report.results["known_facts"]["counts"] == known["counts"]


# ============================================================================================ integration
def test_cli_drops_only_the_lm_eval_warnings_hneurons_causes_by_design(tmp_path, caplog):
    """Without -v, the two lm-eval warnings that every hneurons evaluation triggers (bundled tasks build their
    data in Python; the model is passed already loaded) are dropped; any other lm-eval warning still shows."""
    import logging

    main(["recipe", "show", str(tmp_path / "missing.yaml")])  # any command installs the CLI's logging
    with caplog.at_level(logging.WARNING):
        logging.getLogger("lm_eval.api.task").warning("hneurons_facts: Custom kwargs can be passed to `--metadata` ...")
        logging.getLogger("lm_eval.models.huggingface").warning("`pretrained` model kwarg is not of type `str`. ...")
        logging.getLogger("lm_eval.evaluator").warning("something the user must see")
        logging.getLogger("editor").warning("Custom kwargs can be passed to `--metadata` (not from lm-eval)")
    shown = [r.getMessage() for r in caplog.records]
    assert shown == ["something the user must see", "Custom kwargs can be passed to `--metadata` (not from lm-eval)"]


@pytest.mark.integration
def test_smollm2_base_vs_edited_on_every_bundled_task(smollm2, tmp_path):
    """Reduced comparison on the real model: every bundled task (2 items), 1 control seed, KL on 4 prompts.

    To fit the test budget on 2 CPU cores, answers are cut at 16 new tokens (``gen_kwargs``), so the generative
    judges see truncated answers: this checks the plumbing, not the numbers. The neuron set is made up (the
    real locate output is wired in by the pipeline): 40 neurons in layers 10-19.
    """
    neurons = {"neurons": [{"layer": 10 + i % 10, "index": 37 * i % 1536} for i in range(40)]}
    report = evaluate(base=smollm2, neurons=neurons, alpha=0.0,
                      settings=EvalSettings(tasks=["hneurons"], limit=2, batch_size=8, controls=1, ci_iters=1000,
                                            gen_kwargs="max_gen_toks=16", kl_max_prompts=4, kl_new_tokens=8),
                      out=tmp_path / "ev")
    tasks = {r["task"] for r in report.metrics}
    assert tasks >= {"hneurons_facts", "hneurons_nonexist", "hneurons_false_premise", "hneurons_false_premise_mc",
                     "hneurons_misleading_context", "hneurons_misleading_context_mc", "hneurons_sycophancy",
                     "hneurons_knowledge_mc"}
    assert all(r["n"] == 2 and r["control"] is not None for r in report.metrics)
    kl = report.results["kl"]
    assert kl["n_prompts"] == 4 and 0 < kl["mean"] < 5 and kl["control"]["mean"] > 0
    # SmolLM2 answers "What is the capital of France?"-style questions: some facts are right at baseline.
    facts = next(r for r in report.metrics if r["task"] == "hneurons_facts" and r["metric"] == "accuracy")
    assert 0 <= facts["base"] <= 1
    assert report.results["lm_eval_commands"]["base"].startswith(
        "hneurons lm-eval --model hneurons --model_args pretrained=")
    print(report.table())


def test_bundled_files_are_recorded_by_a_name_that_reads_the_same_on_every_machine(tmp_path):
    """Reports name the bundled KL prompts and task folder ``bundled:...`` (an absolute path would differ between
    a checkout, a CI clone and an installed wheel); the name is accepted back, and a card's reproduce command
    leaves the default prompts out however the report named them."""
    from editor.paths import EVAL_DIR, NEUTRAL_PROMPTS, portable_path
    from editor.report.card.commands import _eval_flags

    assert portable_path(NEUTRAL_PROMPTS) == "bundled:data/neutral_prompts.jsonl"
    assert portable_path(EVAL_DIR) == "bundled:."
    own = tmp_path / "prompts.jsonl"
    own.write_text('{"prompt": "Hello"}\n')
    assert portable_path(own) == str(own.resolve())

    settings = EvalSettings(tasks=["hneurons_facts"], kl_prompts="bundled:data/neutral_prompts.jsonl")
    assert Path(settings.kl_prompts).resolve() == NEUTRAL_PROMPTS.resolve()  # found, so its validator passed
    assert settings.describe()["include_paths"] == ["bundled:."]
    sub = EvalSettings(tasks=["hneurons_facts"], include_paths=["bundled:hneurons"])
    assert Path(EVAL_DIR / "hneurons").resolve() in {Path(p).resolve() for p in sub.task_paths}
    with pytest.raises(ValueError, match="bundled:data/nope.jsonl|nope.jsonl"):
        EvalSettings(tasks=["hneurons_facts"], kl_prompts="bundled:data/nope.jsonl")

    def kl_flags(prompts):
        flags = _eval_flags({"tasks": ["t"], "kl": {"prompts": prompts, "max_prompts": 8}})
        return [f for f in flags if f.startswith("--kl-prompts")]

    assert kl_flags("bundled:data/neutral_prompts.jsonl") == []
    assert kl_flags(str(NEUTRAL_PROMPTS)) == []  # a report written before the bundled names
    assert kl_flags(str(own)) == [f"--kl-prompts {own.resolve()}"]


def test_base_prompt_style_copy_is_built_once_per_manager():
    """A model without a chat template gets a copy of the task manager with ``prompt_style: base``; a
    dose-response runs 20 or more variants on one manager, so the copy is built once, not per run."""
    from editor.evaluate.lm_eval_run import task_manager, with_prompt_style

    settings = EvalSettings(tasks=["hneurons_knowledge_mc"])
    manager = task_manager(settings, {"known_only": True})
    assert with_prompt_style(manager, settings, chat=True) is manager
    base = with_prompt_style(manager, settings, chat=False)
    assert base is not manager and base.metadata == {"known_only": True, "prompt_style": "base"}
    assert with_prompt_style(manager, settings, chat=False) is base
    assert with_prompt_style(base, settings, chat=False) is base
    other = with_prompt_style(task_manager(settings), settings, chat=False)
    assert other is not base and other.metadata == {"prompt_style": "base"}


def test_no_progress_hides_every_lm_eval_bar_and_leaves_the_results_alone(tiny, tmp_path, capsys):
    """`hneurons eval --no-progress` (and `run --no-progress`, through the same switch) draws none of the
    evaluation's bars: neither lm-eval's own (building contexts, tokenising) nor those of hneurons' lm-eval
    model class nor transformers' and datasets' (loading the checkpoint, reading the task file); without it
    they are drawn. Both runs score the same numbers."""
    from editor.evaluate.bars import bars_enabled

    def eval_args(out, *extra):
        return ["eval", "--base", str(tiny["ckpt"]), "--neurons", str(tiny["neurons"]), "--alpha", "0",
                "--tasks", "tiny_gen,tiny_mc", "--include-path", str(tiny["tasks"]), "--limit", "3", "--controls",
                "0", "--batch-size", "4", "--no-kl", "--ci-iters", "100", "--no-results-cache", "--device", "cpu",
                "--out", str(out), *extra]

    assert main(eval_args(tmp_path / "bars")) == 0
    drawn = capsys.readouterr().err
    assert "Running loglikelihood requests (prompt shared)" in drawn and "it/s]" in drawn
    assert main(eval_args(tmp_path / "quiet", "--no-progress")) == 0
    quiet = capsys.readouterr().err
    assert "(prompt shared)" not in quiet and "(compacting decoder)" not in quiet
    # no bar at all: neither lm-eval's own (some without a name) nor transformers loading the checkpoint nor
    # datasets reading the task file
    bars = [b.strip() for b in re.split(r"[\r\n]", quiet) if "%|" in b or "it/s]" in b or "examples/s]" in b]
    assert bars == [], bars
    # the switches are put back after the command
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging
    assert bars_enabled() and hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    assert not hub.are_progress_bars_disabled()
    rows = [json.loads((tmp_path / f / "eval_results.json").read_text())["metrics"] for f in ("bars", "quiet")]
    assert [(r["task"], r["metric"], r["edited"]) for r in rows[0]] == [(r["task"], r["metric"], r["edited"])
                                                                          for r in rows[1]]
