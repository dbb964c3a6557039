"""Locate: end to end on a tiny model with a planted signal; outputs, splits, probe file, detector."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer

from editor.artifacts import atomic_write_json
from editor.errors import InputError, ModelMismatchError
from editor.locate.settings import LocateSettings
from editor.locate.stage import format_report, load_probe, locate
from editor.model.loading import LoadedModel, ModelSource
from editor.model.registry import get_arch

MARK = 7  # the planted signal: hallucinated answers contain this token


def tiny_lm(seed=0) -> LoadedModel:
    model = tiny_model("llama", seed=seed)
    return LoadedModel(model, tiny_tokenizer(), ModelSource("tiny", "folder", "tiny"), get_arch(model.config))


def synthetic_collect(folder, lm, n_per_split=(80, 30, 30), relations=("a", "b"), seed=0, fabricated=10, heldout=0,
                      heldout_relations=("h1", "h2"), heldout_label=lambda i: i % 2):
    """A collect folder whose hallucinated answers carry token MARK (a signal the FFN can see); ``heldout``
    records of the split heldout (families ``heldout_relations``) come last, as collect writes them, so that the
    records before them are the same with or without them."""
    g = np.random.default_rng(seed)
    records = []
    for split, n in zip(("train", "validation", "test"), n_per_split):
        for i in range(n):
            y = i % 2
            prompt = g.integers(10, 300, size=int(g.integers(5, 9))).tolist()
            answer = g.integers(10, 300, size=3).tolist()
            if y:
                answer[:2] = [MARK, MARK]
            records.append(_record(f"{split}{i}", split, relations[i // 2 % len(relations)], False, y, prompt, answer))
    for i in range(fabricated):
        prompt = g.integers(10, 300, size=6).tolist()
        answer = g.integers(10, 300, size=3).tolist()
        if i % 2:
            answer[0] = MARK
        records.append(_record(f"fab{i}", "test", "nonexist", True, i % 2, prompt, answer))
    for i in range(heldout):
        y = int(heldout_label(i))
        prompt = g.integers(10, 300, size=int(g.integers(5, 9))).tolist()
        answer = g.integers(10, 300, size=3).tolist()
        if y:
            answer[:2] = [MARK, MARK]
        records.append(_record(f"heldout{i}", "heldout", heldout_relations[i // 2 % len(heldout_relations)], False, y,
                               prompt, answer))
    folder.mkdir(parents=True)
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(folder / "collect.json", {"model": lm.identity(), "questions_sha256": "x", "data": {},
                                                "sampling": {}, "prompt": {}})
    return records


def _record(rid, split, relation, fabricated, y, prompt, answer):
    n = len(prompt)
    return {"id": rid, "split": split, "relation": relation, "fabricated": fabricated, "selected": True,
            "hallucinated": y, "consistency": "wrong" if y else "correct",
            "representative": {"input_ids": prompt + answer, "prompt_len": n, "response_start": n,
                               "response_end": n + 3, "answer_start": n, "answer_end": n + 3}}


@pytest.fixture(scope="module")
def located(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("locate")
    lm = tiny_lm()
    synthetic_collect(tmp / "collect", lm)
    result = locate(lm, tmp / "collect", tmp / "locate", LocateSettings(random_draws=5, bootstrap=200, n_C=12),
                    progress=False)
    return lm, tmp, result


def test_locate_finds_the_planted_signal_and_reports_honestly(located):
    lm, tmp, result = located
    report = result.report
    # one marked token in a random 135-parameter-per-layer FFN is a visible but not a perfect signal
    assert report["test"]["probe"]["auroc"] > 0.8
    # the baseline is matched per layer (random neurons of the H-Neurons' own layers): a harder baseline than
    # uniform draws, still clearly beaten
    assert report["test"]["probe"]["auroc"] > report["test"]["random"]["auroc_mean"] + 0.05
    lo, hi = report["test"]["probe"]["auroc_ci95"]
    assert lo <= report["test"]["probe"]["auroc"] <= hi
    assert report["test"]["random"]["draws"] == 5
    # a random refit that keeps no neuron scores every item alike: AUROC 0.5 with a CI of zero width
    constant = sum(d["auroc"] == 0.5 and d["auroc_ci95"] == [0.5, 0.5] for d in report["test"]["random"]["per_draw"])
    assert report["test"]["random"]["draws_without_neurons"] == constant
    assert report["counts"]["test"] == {"n": 30, "hallucinated": 15}
    # C is chosen on validation: the chosen point is the sparsest within tol of the best validation AUROC
    path = report["path"]
    best = max(p["val_auroc"] for p in path)
    chosen = report["chosen"]["index"]
    assert path[chosen]["val_auroc"] >= best - 0.01
    assert all(p["val_auroc"] < best - 0.01 for p in path[:chosen] if p["n_nonzero"] < path[chosen]["n_nonzero"])
    assert report["fabricated"]["probe"]["n"] == 10
    assert {"folds"} <= set(report["cross_relation"])
    for name in report["plots"]:
        assert (tmp / "locate" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_neurons_file_holds_exactly_the_positive_weights(located):
    lm, tmp, result = located
    probe, meta = load_probe(tmp / "locate" / "probe.safetensors")
    doc = json.loads((tmp / "locate" / "neurons.json").read_text())
    positive = set(torch.nonzero(probe.weight > 0).flatten().tolist())
    assert {n["flat_index"] for n in doc["neurons"]} == positive
    assert doc["count"] == len(positive) > 0
    for n in doc["neurons"]:
        assert n["flat_index"] == n["layer"] * lm.d_ff + n["index"] and n["weight"] > 0
    assert sum(doc["per_layer"].values()) == doc["count"]
    assert doc["model"]["weights_fingerprint"] == lm.fingerprint == meta["model"]["weights_fingerprint"]
    assert meta["labels"] == "3v1" and float(meta["C"]) == doc["probe"]["C"]


def test_detector_reproduces_the_locate_predictions(located):
    from editor.locate.detect import Detector

    lm, tmp, result = located
    preds = {}
    for line in (tmp / "locate" / "predictions.jsonl").read_text().splitlines():
        p = json.loads(line)
        preds[p["id"]] = p["hallucination_prob"]
    records = [json.loads(x) for x in (tmp / "collect" / "responses.jsonl").read_text().splitlines()]
    test = [r for r in records if r["split"] == "test" and not r["fabricated"]]
    detector = Detector(lm, str(tmp / "locate" / "probe.safetensors"))
    got = dict((rid, d.hallucination_prob) for rid, d in detector.score_records(test))
    assert set(got) <= set(preds)
    for rid, prob in got.items():
        assert prob == pytest.approx(preds[rid], abs=1e-5)


def test_detector_batch_size_auto_resolves_and_scores_the_same(located):
    """``batch_size="auto"`` (the CLI's ``--batch-size auto``) is resolved once (on the CPU: the default 8)
    and scores exactly as a fixed batch size; a bad value is refused with the expected values named."""
    from editor.errors import InputError
    from editor.locate.detect import Detector

    lm, tmp, _ = located
    probe = str(tmp / "locate" / "probe.safetensors")
    auto = Detector(lm, probe, batch_size="auto")
    assert auto.batch_size == 8
    items = [{"question": f"What is the capital of land {i}?", "answer": "Paris"} for i in range(11)]
    assert list(auto.score(items)) == list(Detector(lm, probe, batch_size=3).score(items))
    with pytest.raises(InputError, match="positive integer or 'auto'"):
        Detector(lm, probe, batch_size="big")


def test_probe_from_another_model_is_refused_unless_forced(located):
    from editor.locate.detect import Detector

    lm, tmp, result = located
    other = tiny_lm(seed=3)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Detector(other, str(tmp / "locate" / "probe.safetensors"))
    Detector(other, str(tmp / "locate" / "probe.safetensors"), force=True)


def test_one_class_collect_output_explains_it_cannot_train(tmp_path):
    lm = tiny_lm()
    records = synthetic_collect(tmp_path / "c", lm)
    lines = []
    for r in records:
        r["hallucinated"] = 0
        lines.append(json.dumps(r))
    (tmp_path / "c" / "responses.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="both classes"):
        locate(lm, tmp_path / "c", tmp_path / "l", LocateSettings(), progress=False)
    assert not (tmp_path / "l").exists()


def test_locate_report_has_the_trivial_baselines_on_the_same_test_items(located):
    from editor.locate.stage import format_report

    lm, tmp, result = located
    test = result.report["test"]
    block = test["baselines"]
    assert set(block["baselines"]) == {"length", "family", "length_family", "confidence"}
    assert block["n"] == test["probe"]["n"] == 30 and block["n_hallucinated"] == test["probe"]["n_hallucinated"]
    # the same items and resamples as the probe's own row: the same AUROC and CI
    assert block["classifiers"]["probe"]["auroc"] == test["probe"]["auroc"]
    assert block["classifiers"]["probe"]["auroc_ci95"] == pytest.approx(test["probe"]["auroc_ci95"])
    assert block["classifiers"]["h_neurons_only"]["auroc"] == test["h_neurons_only"]["auroc"]
    for clf in ("probe", "h_neurons_only"):
        for name, m in block["margins"][clf].items():
            assert m["margin"] == pytest.approx(block["classifiers"][clf]["auroc"] - block["baselines"][name]["auroc"])
            assert m["ci95"][0] <= m["margin"] <= m["ci95"][1]
            assert m["beats"] == (m["ci95"][0] > 0) and (name in block["fails_to_beat"][clf]) == (not m["beats"])
    # every answer of the synthetic set has 3 tokens: length carries nothing, and every pair is length-matched
    assert block["baselines"]["length"]["auroc"] == 0.5
    assert test["length_matched"]["n"] == 30 and test["length_matched"]["n_pairs"] == 15
    assert test["balanced_within_relation"]["n_per_class"] == {"hallucinated": 15, "faithful": 15}
    assert "too few to decide" in test["balanced_within_relation"]["note"]
    signals = json.loads((tmp / "locate" / "answer_signals.json").read_text())
    assert signals["format"] == "hneurons.answer_signals/1" and len(signals["records"]) == 80 + 30
    assert all(v["n_tokens"] == 3 and v["mean_logprob"] < 0 for v in signals["records"].values())
    text = format_report(result.report)
    assert "trivial baselines" in text and "length only" in text and "confidence only" in text
    assert block["statement"] in text and "length-matched (15 pairs" in text
    assert result.report["chosen"]["criterion"] == "pooled"
    assert result.report["chosen"]["val_auroc_within_family"] is not None


def test_neurons_path_sets_load_by_name_and_validate(located):
    from editor.model.neuron_set import NeuronSet, as_neuron_set

    lm, tmp, result = located
    doc = json.loads((tmp / "locate" / "neurons_path.json").read_text())
    assert doc["format"] == "hneurons.neurons_path/1" and doc["names"] == ["x2", "x5", "x10"]
    chosen = result.neurons["count"]
    assert doc["chosen"]["count"] == chosen
    counts = [doc["sets"][n]["count"] for n in doc["names"]]
    assert counts == sorted(counts) and counts[0] > chosen
    path_counts = {p["C"]: p["n_positive"] for p in result.report["path"]}
    for name in doc["names"]:
        entry = doc["sets"][name]
        assert entry["format"] == "hneurons.neurons/1" and path_counts[entry["probe"]["C"]] == entry["count"]
        assert sum(entry["per_layer"].values()) == entry["count"] == len(entry["neurons"])
        # 96 FFN neurons: no set can stay under 1 per mille, and the report says so
        assert entry["path_set"]["within_cap"] is False and "per mille" in entry["path_set"]["note"]
        for ref in (f"{tmp}/locate/neurons_path.json#{name}", f"{tmp}/locate#{name}"):
            nset = as_neuron_set(ref)
            assert len(nset) == entry["count"] and nset.path is None and nset.source.endswith(f"#{name}")
            assert nset.validate(lm) is None
        assert NeuronSet.load(tmp / "locate" / "neurons_path.json", name=name).neurons == nset.neurons
    assert result.report["neuron_path_sets"]["sets"]["x2"]["count"] == counts[0]
    with pytest.raises(InputError, match=r"no neuron set named 'x7'.*available sets: x2, x5, x10") as err:
        as_neuron_set(f"{tmp}/locate/neurons_path.json#x7")
    assert "neurons_path.json" in str(err.value)
    with pytest.raises(InputError, match="name one"):
        as_neuron_set(tmp / "locate" / "neurons_path.json")
    with pytest.raises(InputError, match="not a neurons_path file"):
        as_neuron_set(f"{tmp}/locate/neurons.json#x2")
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        as_neuron_set(f"{tmp}/locate/neurons_path.json#x5").validate(tiny_lm(seed=3))


def test_path_points_are_chosen_near_the_multiples_under_the_cap():
    from editor.locate.stage import choose_path_points

    counts = [0, 3, 10, 18, 31, 52, 90, 160, 400]
    picks = {p["name"]: p for p in choose_path_points(counts, chosen=2, total=100_000)}  # cap: 100 neurons
    assert [picks[n]["index"] for n in ("x2", "x5", "x10")] == [3, 5, 6]  # 18 ~ 20, 52 ~ 50, 90 (160 is over)
    assert picks["x5"]["reached"] and picks["x5"]["within_cap"] and picks["x5"]["note"] is None
    assert not picks["x10"]["reached"] and "short of 10 x 10 = 100" in picks["x10"]["note"]
    short = {p["name"]: p for p in choose_path_points([0, 4, 6], chosen=1, total=100_000)}
    assert short["x2"]["index"] == 2 and short["x5"]["same_as"] == "x2" and not short["x5"]["reached"]
    none = choose_path_points([0, 4], chosen=1, total=100_000)
    assert all(p["index"] is None and "no point" in p["note"] for p in none)
    empty = choose_path_points([0, 0, 5], chosen=0, total=100_000)
    assert all(p["index"] is None and "no H-Neuron" in p["note"] for p in empty)


def test_detect_evaluate_reports_the_baselines(located, monkeypatch):
    from types import SimpleNamespace

    import editor.data.judge as judge_module
    from editor.data.questions import Question
    from editor.locate import baselines
    from editor.locate.detect import format_heldout, heldout_report

    lm, tmp, _ = located
    verdicts = iter(["wrong", "correct"] * 50)
    monkeypatch.setattr(judge_module, "judge", lambda text, answers, **kw: SimpleNamespace(label=next(verdicts)))
    passes, forward = [], baselines.mean_logprobs
    monkeypatch.setattr(baselines, "mean_logprobs", lambda lm, rows, *a: passes.append(len(rows)) or forward(lm, rows, *a))
    questions = [Question(f"new{i}", f"What is the capital of land {i}?", ("Paris",), "test", ["a", "b", "c"][i % 3],
                          f"land{i}", "test") for i in range(16)]
    report = heldout_report(lm, str(tmp / "locate" / "probe.safetensors"), questions, bootstrap=100,
                            max_new_tokens=4)
    block = report["baselines"]
    assert block["n"] == report["n"] == 16 and set(block["margins"]) == {"probe", "h_neurons_only"}
    assert block["classifiers"]["probe"]["auroc"] == report["probe"]["auroc"]
    assert block["fit"]["n"] == 80
    assert passes == [16], "the training responses' log-probabilities come from locate's answer_signals.json"
    assert block["fit"]["models"]["family"]["family_rate"].keys() == {"a", "b"}  # "c" is an unseen family
    assert "length_matched" in report and "trivial baselines" in format_heldout(report)


SETTINGS = dict(random_draws=5, bootstrap=200, n_C=12)  # the `located` fixture's


def test_heldout_families_are_reported_like_test_and_never_trained_on(located, tmp_path):
    """Responses of the split heldout get the test split's blocks under `heldout`, and change nothing else: the
    probe, the H-Neurons, the path and the test report equal those of the same folder without them."""
    from editor.locate.stage import format_report

    lm, tmp, without = located
    synthetic_collect(tmp_path / "collect", lm, heldout=40)
    result = locate(lm, tmp_path / "collect", tmp_path / "locate", LocateSettings(**SETTINGS), progress=False)
    report, base = result.report, without.report
    # never trained on, never choosing C: the same probe file, neurons, path and choice
    for name in ("probe.safetensors", "neurons.json", "neurons_path.json"):
        assert (tmp_path / "locate" / name).read_bytes() == (tmp / "locate" / name).read_bytes(), name
    assert report["path"] == base["path"] and report["chosen"] == base["chosen"]
    for key in ("probe", "h_neurons_only", "random", "per_relation", "balanced_within_relation"):
        assert report["test"][key] == base["test"][key], key
    assert report["cross_relation"] == base["cross_relation"] and "heldout" not in base
    # the same blocks as test (plus the families), over the 40 held-out responses
    held = report["heldout"]
    assert set(held) == set(report["test"]) | {"families", "unseen_families"}
    assert held["families"] == held["unseen_families"] == ["h1", "h2"]
    assert report["counts"]["heldout"] == {"n": 40, "hallucinated": 20}
    for block in (held["probe"], held["h_neurons_only"], held["baselines"]):
        assert block["n"] == 40 and block["n_hallucinated"] == 20
    assert held["length_matched"]["n_items"] == 40 and held["random"]["draws"] == 5
    assert set(held["probe"]) == set(report["test"]["probe"]) and len(held["random"]["per_draw"]) == 5
    assert held["random"]["auroc_min"] <= held["random"]["auroc_mean"] <= held["random"]["auroc_max"]
    assert set(held["per_relation"]) == {"h1", "h2"}
    assert held["balanced_within_relation"]["n_per_class"] == {"hallucinated": 20, "faithful": 20}
    # the same planted signal: the probe carries to the unseen families, random neurons do not match it
    assert held["probe"]["auroc"] > 0.8 and held["probe"]["auroc"] > held["random"]["auroc_mean"] + 0.05
    lo, hi = held["probe"]["auroc_ci95"]
    assert lo <= held["probe"]["auroc"] <= hi
    # the baselines are fitted on train (as for test) and scored on the held-out items; unseen families get the
    # overall training rate, which the report says
    blk = held["baselines"]
    assert blk["fit"] == report["test"]["baselines"]["fit"]
    assert blk["classifiers"]["probe"]["auroc"] == held["probe"]["auroc"]
    assert blk["baselines"]["family"]["auroc"] == 0.5 and "never seen in training" in blk["note"]
    assert set(blk["margins"]) == {"probe", "h_neurons_only"}
    signals = json.loads((tmp_path / "locate" / "answer_signals.json").read_text())
    assert sum(v["split"] == "heldout" for v in signals["records"].values()) == 40
    preds = [json.loads(x) for x in (tmp_path / "locate" / "predictions.jsonl").read_text().splitlines()]
    assert sum(p["split"] == "heldout" for p in preds) == 40
    text = format_report(report)
    assert "held-out families (split heldout" in text and "the same 40 held-out items" in text
    assert "never seen in training" in text
    test_part = lambda t: t.split("test split:")[1].split("  trivial baselines")[0]  # noqa: E731
    assert test_part(text) == test_part(format_report(base))
    # the baselines of the test split see the same items (their log-probabilities may differ in the last bits:
    # the held-out responses share the last batch of the forward pass)
    for name, row in report["test"]["baselines"]["baselines"].items():
        assert row["auroc"] == pytest.approx(base["test"]["baselines"]["baselines"][name]["auroc"], abs=1e-6)


def test_heldout_with_one_class_gets_a_note_not_a_score(tmp_path):
    lm = tiny_lm()
    synthetic_collect(tmp_path / "collect", lm, n_per_split=(40, 16, 16), fabricated=0, heldout=6,
                      heldout_label=lambda i: 1)
    report = locate(lm, tmp_path / "collect", tmp_path / "locate", LocateSettings(**SETTINGS), progress=False).report
    assert report["heldout"]["n"] == 6 and report["heldout"]["n_hallucinated"] == 6
    assert "AUROC needs both" in report["heldout"]["note"] and "probe" not in report["heldout"]


def test_detect_evaluate_takes_the_heldout_split(located, tmp_path, monkeypatch, capsys):
    """`hneurons detect --evaluate bundled:diverse --split heldout` scores the held-out families; a source without
    them is one error naming it, before the model loads."""
    from types import SimpleNamespace

    import editor.data.judge as judge_module
    from editor.cli import main

    lm, tmp, _ = located
    ckpt = tmp_path / "tiny"
    lm.model.save_pretrained(ckpt)
    lm.tokenizer.save_pretrained(ckpt)
    verdicts = iter(["wrong", "correct"] * 50)
    monkeypatch.setattr(judge_module, "judge", lambda text, answers, **kw: SimpleNamespace(label=next(verdicts)))
    out = tmp_path / "heldout.json"
    probe = str(tmp / "locate" / "probe.safetensors")
    assert main(["detect", "--model", str(ckpt), "--device", "cpu", "--probe", probe, "--evaluate", "bundled:diverse",
                 "--split", "heldout", "--limit", "8", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["data"]["splits"] == ["heldout"] and doc["n_questions"] == 8
    assert {a["relation"] for a in doc["answers"]} <= {"element_discoverer", "star_constellation", "us_city_state",
                                                        "us_state_abbreviation", "us_state_capital",
                                                        "us_state_from_abbreviation", "us_statehood_year",
                                                        "weekday_name"}
    assert doc["baselines"]["n"] == doc["n"] and "h_neurons_only" in doc
    capsys.readouterr()
    assert main(["detect", "--model", str(tmp_path / "no-such-model"), "--probe", probe, "--evaluate", "bundled:facts",
                 "--split", "heldout"]) == 2
    err = capsys.readouterr().err
    assert "'bundled:facts'" in err and "heldout" in err and "no-such-model" not in err


def test_the_report_says_when_every_random_refit_kept_no_neuron(located):
    """With one H-Neuron at a strong penalty, every matched random refit can keep no weight: the printed report
    must say that the control's 0.5 is a constant by construction, and say nothing when no draw was empty."""
    _, _, result = located
    report = copy.deepcopy(result.report)
    report["test"]["random"]["draws_without_neurons"] = 0
    assert "kept no neuron" not in format_report(report)
    report["test"]["random"]["draws_without_neurons"] = 5
    assert "5 of the 5 random refits kept no neuron" in format_report(report)
