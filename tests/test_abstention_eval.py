"""Evaluation of abstention (editor/evaluate/abstention.py): the measures on hand-built items, the eval stage's
abstention block on a tiny model (prompt baseline through lm-eval's system instruction, the probe rule), and
`hneurons abstain-report` across eval folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from editor import stats
from editor.cli import main
from editor.errors import InputError
from editor.evaluate import abstention as ab
from editor.evaluate.settings import EvalSettings

# base accurate on 0, 1, 5 (wrong on 2, 3, 4); the edit abstains on 1, 2, 3 and hallucinates on 4
BASE = dict(accuracy=[1, 1, 0, 0, 0, 1], refusal_rate=[0, 0, 0, 0, 0, 0], hallucination_rate=[0, 0, 1, 1, 1, 0])
EDITED = dict(accuracy=[1, 0, 0, 0, 0, 1], refusal_rate=[0, 1, 1, 1, 0, 0], hallucination_rate=[0, 0, 0, 0, 1, 0])


def records(values: dict[str, list[int]], ids=None) -> list[dict]:
    n = len(values["accuracy"])
    ids = ids or [f"q{i}" for i in range(n)]
    return [{"doc_id": i, "doc": {"id": ids[i], "question": f"Question {i}?"}, "filter": "none",
             "filtered_resps": [f"answer {i}"], **{m: float(v[i]) for m, v in values.items()}} for i in range(n)]


def items(values, ids=None) -> ab.FactsItems:
    return ab.facts_items(records(values, ids), "test")


# ================================================================================ measures by hand
def test_selectivity_auroc_and_risk_coverage_by_hand():
    block = ab.abstention_measures(items(BASE), items(EDITED), n_boot=500)
    assert block["n"] == 6 and block["n_base_wrong"] == 3
    sel = block["selectivity"]  # abstained on 1, 2, 3; the base was wrong on 2 and 3
    assert (sel["k"], sel["n"]) == (2, 3) and sel["value"] == pytest.approx(2 / 3)
    assert sel["ci95"] == pytest.approx([0.2077, 0.9385], abs=1e-3)  # Wilson 95% for 2 / 3
    # abstains on 2 of 3 base-wrong and 1 of 3 base-right items: 0.5 + (2/3 - 1/3) / 2
    auc = block["abstention_auroc"]
    assert auc["value"] == pytest.approx(2 / 3)
    assert auc["ci95"][0] <= 2 / 3 <= auc["ci95"][1]
    assert block["abstention_on_base_wrong"]["value"] == pytest.approx(2 / 3)
    assert block["abstention_on_base_right"]["value"] == pytest.approx(1 / 3)
    # answered: 0, 4, 5; hallucinated among them: 4
    rc = block["edited"]["risk_coverage"]
    assert (rc["coverage"], rc["risk"], rc["answered"]) == (0.5, pytest.approx(1 / 3), 3)
    assert block["base"]["risk_coverage"] == {"coverage": 1.0, "risk": 0.5, "answered": 6, "n": 6}
    d = block["delta"]
    assert d["abstention_rate"]["delta"] == pytest.approx(0.5)
    assert d["hallucination_rate"]["delta"] == pytest.approx(-1 / 3)
    assert d["accuracy"]["discordant"] == {"better": 0, "worse": 1} and d["accuracy"]["test"] == "mcnemar_mid_p"
    assert d["abstention_rate"]["mde"] is None or d["abstention_rate"]["mde"] > 0


def test_auroc_of_a_binary_abstention_counts_ties_at_one_half():
    """Every abstained item ties with every other abstained one: Mann-Whitney with ties = the rate formula."""
    wrong = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    abst = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0], float)
    expected = 0.5 + (3 / 4 - 1 / 5) / 2
    assert stats.auroc(abst, wrong) == pytest.approx(expected)
    assert ab.abstention_auroc(abst, wrong, n_boot=200)["value"] == pytest.approx(expected)
    assert ab.auroc_terms(abst, wrong).mean() == pytest.approx(expected)
    # hand count: pairs (wrong, right) = 20; abstain-wrong vs not-abstain-right 3 x 4 = 12 wins; ties: abstained
    # wrong vs abstained right 3 x 1, not-abstained wrong vs not-abstained right 1 x 4: 7 ties at 1/2 -> 15.5 / 20
    assert expected == pytest.approx(15.5 / 20)
    undefined = ab.abstention_auroc(abst, np.ones(9, bool))
    assert undefined["value"] is None and "undefined" in undefined["note"]
    assert ab.selectivity(np.zeros(9), wrong)["value"] is None


def test_probe_rule_risk_coverage_curve_by_hand():
    probs = np.array([0.1, 0.2, 0.9, 0.8, 0.7, np.nan])
    base_abstain = np.zeros(6, bool)
    halluc = np.array([0, 0, 1, 1, 1, 0], bool)
    curve = ab.probe_curve(probs, base_abstain, halluc)
    got = [(c["threshold"], c["coverage"], c["risk"]) for c in curve]
    assert got == [(None, 1.0, 0.5), (0.9, pytest.approx(5 / 6), pytest.approx(2 / 5)),
                   (0.8, pytest.approx(4 / 6), pytest.approx(1 / 4)), (0.7, 0.5, 0.0),
                   (0.2, pytest.approx(2 / 6), 0.0), (0.1, pytest.approx(1 / 6), 0.0)]
    base = items(BASE)
    measures = ab.probe_measures(probs, base, 300, 0, {"probe": "p"})
    assert measures["n_unscored"] == 1 and measures["auroc_vs_base_wrong"]["n"] == 5
    assert measures["auroc_vs_base_wrong"]["value"] == pytest.approx(1.0)  # wrong 2, 3, 4 score above right 0, 1


def test_mismatched_items_are_one_clear_error():
    with pytest.raises(InputError, match="same items"):
        ab.abstention_measures(items(BASE), items(EDITED, ids=["q0", "q1", "q2", "q3", "q4", "other"]))
    short = {k: v[:5] for k, v in EDITED.items()}
    with pytest.raises(InputError, match="same items"):
        ab.abstention_measures(items(BASE), items(short))
    with pytest.raises(InputError, match="logged twice"):
        ab.facts_items(records(BASE) + records(BASE)[:1], "x")
    with pytest.raises(InputError, match="expected 0 or 1"):
        ab.facts_items([dict(records(BASE)[0], accuracy=0.5)], "x")


# ================================================================================ the eval stage
def write_probe(path: Path, n_features: int) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({"weight": torch.randn(n_features), "bias": torch.zeros(1), "mean": torch.zeros(n_features),
               "std": torch.ones(n_features)}, str(path),
              metadata={"format": "hneurons.probe/1", "C": "1.0", "labels": "3v1", "aggregate": "mean",
                        "model": json.dumps({})})
    return path


INSTRUCTION = "If you do not know, say I don't know."


@pytest.fixture(scope="module")
def prompt_eval(tmp_path_factory):
    """The prompt baseline on a tiny random model: base vs base told INSTRUCTION, with a probe as detector."""
    from tinymodels import tiny_model, tiny_tokenizer

    from editor.evaluate.stage import evaluate
    from editor.model.loading import LoadOptions

    root = tmp_path_factory.mktemp("abstention")
    ckpt = root / "ckpt"
    tiny_model("llama", max_position_embeddings=512).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    locate = root / "locate"
    locate.mkdir()
    write_probe(locate / "probe.safetensors", 2 * 48)
    settings = EvalSettings(tasks=["hneurons_facts", "hneurons_nonexist"], limit=6, batch_size=8, controls=3,
                            kl=True, gen_kwargs="max_gen_toks=4", results_cache=False, ci_iters=300,
                            edited_system_instruction=INSTRUCTION, detector=str(locate))
    report = evaluate(base=str(ckpt), settings=settings, out=root / "ev", load=LoadOptions(device="cpu"))
    return root, report


def test_eval_writes_the_abstention_block_and_plot(prompt_eval):
    root, report = prompt_eval
    out = root / "ev"
    block = report.results["abstention"]
    assert block["format"] == "hneurons.abstention/1" and block["n"] == 6
    assert set(block["delta"]) == {"accuracy", "hallucination_rate", "abstention_rate"}
    assert block["nonexist"]["n"] == 6
    assert (out / "abstention_rc.png").stat().st_size > 1000
    assert report.results["files"]["abstention_plot"] == "abstention_rc.png"
    probe = block["probe"]
    assert probe["file"] == "abstention_probe.json" and (out / "abstention_probe.json").is_file()
    assert probe["curve"][0]["threshold"] is None and len(probe["curve"]) >= 2
    scored = json.loads((out / "abstention_probe.json").read_text())["items"]
    assert len(scored) == 6 and all(s["hallucination_prob"] is None or 0 <= s["hallucination_prob"] <= 1
                                    for s in scored)
    # the prompt baseline: no controls, no KL (same weights), and said so
    assert report.results["models"]["controls"] == [] and "system instruction" in report.results["controls_note"]
    assert report.results["kl"] is None and "instruction" in report.results["kl_note"]
    assert json.loads((out / "eval_results.json").read_text())["abstention"]["n"] == 6


def test_system_instruction_reaches_lm_eval_for_the_edited_role_only(prompt_eval):
    root, report = prompt_eval
    runs = root / "ev" / "lm_eval"

    def prompts(variant):
        lines = (runs / variant / "samples_hneurons_facts.jsonl").read_text().splitlines()
        return [json.loads(line)["arguments"][0][0] for line in lines]

    assert all(INSTRUCTION in p for p in prompts("edited"))
    assert not any(INSTRUCTION in p for p in prompts("base"))
    assert report.results["models"]["edited"]["system_instruction"] == INSTRUCTION
    assert "system_instruction" not in report.results["models"]["base"]
    assert "--system_instruction" in report.results["lm_eval_commands"]["edited"]
    assert "--system_instruction" not in report.results["lm_eval_commands"]["base"]
    key = json.loads((runs / "edited" / "hneurons_run.json").read_text())["key"]
    assert key["system_instruction"] == INSTRUCTION
    assert "system_instruction" not in json.loads((runs / "base" / "hneurons_run.json").read_text())["key"]


def test_eval_only_settings_are_refused_by_the_sweep():
    from editor.evaluate.settings import SweepSettings

    with pytest.raises(InputError, match="eval"):
        SweepSettings.of(edited_system_instruction="x")


# ================================================================================ across eval folders
def rewrite_edited(folder: Path, abstain: list[int], source: Path) -> None:
    """A copy of the eval folder whose edited variant abstains on the given facts items (the others as base)."""
    shutil.copytree(source, folder)
    path = folder / "lm_eval" / "edited" / "samples_hneurons_facts.jsonl"
    base = [json.loads(line) for line in (folder / "lm_eval" / "base" / "samples_hneurons_facts.jsonl")
            .read_text().splitlines()]
    lines = []
    for sample in sorted(base, key=lambda s: s["doc_id"]):
        if abstain[sample["doc_id"]]:
            sample = dict(sample, accuracy=0.0, refusal_rate=1.0, hallucination_rate=0.0,
                          filtered_resps=["I don't know."])
        lines.append(json.dumps(sample))
    path.write_text("\n".join(lines) + "\n")


def test_abstain_report_compares_eval_folders(prompt_eval, tmp_path, capsys):
    root, _ = prompt_eval
    source = root / "ev"
    # give the base model right answers on items 0 and 1 so that both classes exist
    work = tmp_path / "src"
    shutil.copytree(source, work)
    base_file = work / "lm_eval" / "base" / "samples_hneurons_facts.jsonl"
    base = sorted((json.loads(line) for line in base_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    for s in base:
        right = s["doc_id"] in (0, 1)
        s.update(accuracy=float(right), refusal_rate=0.0, hallucination_rate=float(not right))
    base_file.write_text("".join(json.dumps(s) + "\n" for s in base))
    rewrite_edited(tmp_path / "h", [0, 0, 1, 1, 1, 0], work)        # abstains on 3 of 4 wrong, no right
    rewrite_edited(tmp_path / "r0", [1, 0, 1, 0, 0, 0], work)       # 1 of 4 wrong, 1 of 2 right
    rewrite_edited(tmp_path / "r1", [0, 1, 0, 0, 0, 1], work)       # 1 of 4 wrong, 1 of 2 right
    out = tmp_path / "report"
    assert main(["abstain-report", f"{tmp_path / 'h'}=H", f"{tmp_path / 'r0'}=random0", f"{tmp_path / 'r1'}=random1",
                 "--out", str(out), "--bootstrap", "300"]) == 0
    printed = capsys.readouterr().out
    assert "| H |" in printed and "Minus the mean of the random controls" in printed
    doc = json.loads((out / "abstention.json").read_text())
    assert doc["format"] == "hneurons.abstention_report/1" and doc["controls"] == ["random0", "random1"]
    h = doc["variants"]["H"]
    assert h["abstention_auroc"]["value"] == pytest.approx(0.5 + (3 / 4 - 0) / 2)
    assert h["selectivity"]["value"] == 1.0 and h["selectivity"]["n"] == 3
    r = doc["variants"]["random0"]["abstention_auroc"]["value"]
    assert r == pytest.approx(0.5 + (1 / 4 - 1 / 2) / 2)
    diff = doc["minus_random_mean"]["H"]
    assert diff["abstention_auroc"]["delta"] == pytest.approx(0.875 - 0.375)
    assert diff["abstention_auroc"]["sets"] == 2 and diff["abstention_auroc"]["se_between_sets"] is not None
    lo, hi = diff["abstention_auroc"]["ci95"]
    assert lo < 0.5 < hi
    assert diff["hallucination_rate"]["delta"] == pytest.approx(-3 / 6 - (-1 / 6))
    assert doc["probe"] is not None and doc["probe"]["curve"][0]["threshold"] is None
    assert (out / "abstention_rc.png").stat().st_size > 1000 and (out / "abstention.md").is_file()


def test_abstain_report_refuses_other_items_or_base(prompt_eval, tmp_path):
    root, _ = prompt_eval
    source = root / "ev"
    other = tmp_path / "other"
    shutil.copytree(source, other)
    for variant in ("base", "edited"):
        path = other / "lm_eval" / variant / "samples_hneurons_facts.jsonl"
        path.write_text("\n".join(path.read_text().splitlines()[:4]) + "\n")
    with pytest.raises(InputError, match="same items"):
        ab.compare_abstention([source, other], ["a", "b"], tmp_path / "out")
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    results = json.loads((changed / "eval_results.json").read_text())
    results["models"]["base"]["model"]["weights_fingerprint"] = "0000"
    (changed / "eval_results.json").write_text(json.dumps(results))
    with pytest.raises(InputError, match="another base model"):
        ab.compare_abstention([source, changed], ["a", "b"], tmp_path / "out2")


# ================================================================================ abstain edits: eval and card
def test_an_abstain_edit_is_evaluated_without_hook_controls_and_gets_a_card(tmp_path):
    from test_abstain import source, write_collect
    from tinymodels import tiny_model

    from editor.edit.abstain import abstain_edit
    from editor.edit.settings import AbstainSettings
    from editor.evaluate.stage import evaluate
    from editor.model.loading import LoadOptions
    from editor.report.card import write_card

    lm = source(tmp_path, "src", tiny_model("llama", max_position_embeddings=512))
    collect = write_collect(tmp_path / "collect", lm, sizes=(8, 4, 2))
    out, _ = abstain_edit(lm, [(0, 3), (1, 5), (1, 40)], tmp_path / "abstain", collect, progress=False,
                          settings=AbstainSettings(epochs=1, lr=5e-2, kl_max_prompts=4, strengths=[1.0]))
    manifest = json.loads((out / "model" / "hneurons_edit.json").read_text())
    assert manifest["mode"] == "abstain" and "alpha" not in manifest
    report = evaluate(base=str(tmp_path / "src-src"), edited=str(out / "model"),
                      settings=EvalSettings(tasks=["hneurons_facts"], limit=4, batch_size=8, controls=3, kl=False,
                                            gen_kwargs="max_gen_toks=4", ci_iters=200, results_cache=False),
                      out=tmp_path / "ev", load=LoadOptions(device="cpu"))
    assert report.results["models"]["controls"] == []
    assert "abstain" in report.results["controls_note"] and report.results["abstention"]["n"] == 4
    readme = write_card(out / "model", eval_results=tmp_path / "ev").read_text()
    assert "trained to abstain" in readme and "Abstention on the bundled facts questions" in readme
    assert "alpha =" not in readme.split("## The edit")[1].split("##")[0]
    with pytest.raises(InputError, match="adapter-lora"):
        write_card(out, eval_results=tmp_path / "ev")


def test_the_recipe_abstention_stage_trains_the_baselines_evaluates_all_and_resumes(tmp_path):
    """editor/pipeline/abstention.py on a tiny model: the matched random sets (same per-layer counts, none of the
    H-Neurons) and the LoRA are trained, every variant (H edit, random sets, LoRA, prompt) is evaluated, the
    report lists them with H - random rows; a second call under the same key redoes nothing, another key finds no
    finished step."""
    from test_abstain import source, write_collect
    from tinymodels import tiny_model

    from editor.edit.abstain import abstain_edit
    from editor.edit.settings import AbstainSettings
    from editor.evaluate.settings import AbstentionSettings
    from editor.model.neuron_set import NeuronSet
    from editor.pipeline.abstention import Steps, abstention_comparison

    lm = source(tmp_path, "src", tiny_model("llama", max_position_embeddings=512))
    collect = write_collect(tmp_path / "collect", lm, sizes=(8, 4, 2))
    h_pairs = [(0, 3), (1, 5), (1, 40)]
    neurons = tmp_path / "neurons.json"
    neurons.write_text(json.dumps({"neurons": [{"layer": l, "index": j} for l, j in h_pairs]}))
    train = AbstainSettings(epochs=1, lr=5e-2, kl_max_prompts=4, strengths=[1.0])
    abstain_dir, _ = abstain_edit(lm, neurons, tmp_path / "abstain", collect, progress=False, settings=train)
    settings = AbstentionSettings(tasks=["hneurons_facts"], limit=4, batch_size=8, kl=False,
                                  gen_kwargs="max_gen_toks=4", ci_iters=200, results_cache=False, random_sets=2)
    out = tmp_path / "abstention"
    run = dict(abstain_dir=abstain_dir, neurons=neurons, responses=collect, train=train, settings=settings,
               probe=None, out=out)
    doc = abstention_comparison(lm, key="k1", progress=False, **run)
    assert list(doc["variants"]) == ["h-neurons", "random-seed1", "random-seed2", "lora", "prompt"]
    assert doc["controls"] == ["random-seed1", "random-seed2"] and doc["n"] == 4
    assert set(doc["minus_random_mean"]) == {"h-neurons", "lora", "prompt"}
    for seed in (1, 2):
        drawn = NeuronSet.load(out / "edits" / f"random-seed{seed}" / "neurons.json")
        assert drawn.per_layer() == NeuronSet.from_pairs(h_pairs).per_layer()
        assert not set(drawn.neurons) & set(h_pairs)
    lora = json.loads((out / "edits" / "lora" / "hneurons_edit.json").read_text())
    assert lora["baseline"] == "lora"
    prompt = json.loads((out / "eval" / "prompt" / "eval_results.json").read_text())
    assert prompt["settings"]["edited_system_instruction"] == settings.prompt_instruction
    assert "Retention, behaviour and KL" not in (out / "report" / "abstention.md").read_text()  # facts only here
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.json") if p.name in ("hneurons_edit.json",
                                                                                    "eval_results.json")}
    assert len(stamps) == 3 + 5
    abstention_comparison(lm, key="k1", **run)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(Steps(out, "k1").done) == 3 + 5 and Steps(out, "k2").done == []  # another key: every step
