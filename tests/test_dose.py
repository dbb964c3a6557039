"""The dose-response statistics on synthetic data (numpy only, fast): a planted H-Neuron slope is found with
power above 80%, a null (H's slope equal to the random sets' population mean) is rejected at most 5% of the time
over 200 seeds; and a reduced dose-response of a tiny model end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from editor.evaluate.dose import dose_statistics, render_summary, slope_weights

GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]


def synthetic(rng, h_slope: float, n: int = 200, sets: int = 3, tau: float = 0.02, noise: float = 0.5) -> dict:
    """Per-item values [alphas, items]: a shared item effect, each set's true slope (random sets: drawn around 0
    with sd tau), item-level noise."""
    items = rng.normal(0, 1, n)
    alphas = np.array(GRID)[:, None]
    slopes = {"H": h_slope} | {f"random_seed{s}": rng.normal(0, tau) for s in range(sets)}
    return {k: items[None, :] + s * (alphas - 1) + rng.normal(0, noise, (len(GRID), n)) for k, s in slopes.items()}


def test_least_squares_slope_and_the_per_item_slopes_agree():
    values = np.array([[1.0, 2.0], [2.0, 2.5], [3.0, 3.0], [4.0, 3.5], [5.0, 4.0], [7.0, 5.0]])
    w = slope_weights(GRID)
    assert w @ np.array(GRID) == pytest.approx(1.0) and w.sum() == pytest.approx(0.0)
    result = dose_statistics(GRID, {"H": values, "random_seed0": values * 0, "random_seed1": values * 0 + 1},
                             iters=200)
    assert result["sets"]["H"]["slope"] == pytest.approx(np.polyfit(GRID, values.mean(axis=1), 1)[0])
    assert result["sets"]["H"]["values"] == pytest.approx(values.mean(axis=1).tolist())
    assert result["random"]["slope_mean"] == pytest.approx(0.0, abs=1e-12) and result["h_rank"] == {
        "rank": 1, "of": 3, "meaning": "1 = H's slope is the largest; k + 1 = the smallest"}


def test_a_row_on_which_nothing_varies_says_it_measures_nothing():
    """Gemma 3 270M flips no known answer in any set at any alpha: the row's intervals are [0, 0], and the
    note (printed under the table) says why and what 0 in n items allows."""
    zeros = {name: np.zeros((len(GRID), 211)) for name in ("H", "random_seed0", "random_seed1")}
    result = dose_statistics(GRID, zeros, iters=50)
    note = result["h_minus_random"]["note"]
    assert result["h_minus_random"]["ci95"] == [0.0, 0.0]
    assert "nothing varies" in note and "below 0.017 (exact 95% bound for 211 items)" in note
    ones = {name: np.ones((len(GRID), 40)) for name in zeros}
    assert "above 0.912" in dose_statistics(GRID, ones, iters=50)["h_minus_random"]["note"]
    moving = dict(zeros, H=np.zeros((len(GRID), 211)))
    moving["H"][-1, 0] = 1.0  # one item of one set moves: an ordinary row
    assert dose_statistics(GRID, moving, iters=50)["h_minus_random"]["note"] is None
    row = {"task": "t", "metric": "flip_rate_known", "primary": True, "n": 211, **result}
    text = render_summary({"rows": [row], "grid": GRID, "sets": {"H": 0, "random_seed0": 0, "random_seed1": 0}})
    assert text.splitlines()[-1].startswith("note: t flip_rate_known: every item scores 0 in every set")


def test_a_planted_slope_is_found_and_a_null_is_rejected_at_most_5_percent():
    planted, found, rejected, covered = 0.15, 0, 0, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        alt = dose_statistics(GRID, synthetic(rng, planted), iters=200, seed=seed)
        diff = alt["h_minus_random"]
        found += diff["p_value"] <= 0.05 and diff["slope_difference"] > 0
        lo, hi = alt["sets"]["H"]["slope_ci95"]
        covered += lo <= planted <= hi
        null = dose_statistics(GRID, synthetic(rng, 0.0, tau=0.1), iters=200, seed=seed)  # sets differ a lot
        rejected += null["h_minus_random"]["p_value"] <= 0.05
    assert found / 200 > 0.8, found  # power at the planted size
    assert rejected / 200 <= 0.05, rejected  # size under the null
    assert covered / 200 >= 0.9  # the bootstrap slope CI covers the true slope (percentile: slightly liberal)
    # between-set variance counts: with few sets that disagree a lot, the same planted slope is not resolved
    wide = dose_statistics(GRID, synthetic(np.random.default_rng(0), planted, tau=0.3), iters=200)
    assert wide["h_minus_random"]["se_between_sets"] > 5 * wide["h_minus_random"]["se_items"]


def test_reduced_dose_response_of_a_tiny_model_end_to_end(tmp_path, capsys):
    from test_evaluate import NEURONS, write_task_folder
    from tinymodels import tiny_model, tiny_tokenizer

    from editor.cli import main

    ckpt = tmp_path / "ckpt"
    tiny_model("llama", seed=1).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    neurons = tmp_path / "neurons.json"
    neurons.write_text(json.dumps(NEURONS))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hi there\nWrite a poem\n")
    tasks = write_task_folder(tmp_path / "tasks", split="test")
    out = tmp_path / "dose"
    argv = ["dose-response", "--model", str(ckpt), "--neurons", str(neurons), "--tasks", "tiny_gen,tiny_mc",
            "--include-path", str(tasks), "--limit", "6", "--alphas", "0,2", "--controls", "2", "--batch-size", "4",
            "--kl-prompts", str(prompts), "--kl-new-tokens", "3", "--ci-iters", "200", "--device", "cpu",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "dose_response.json").read_text())
    assert doc["format"] == "hneurons.dose_response/1" and doc["grid"] == [0.0, 1.0, 2.0]
    assert doc["provenance"] and doc["model"]["weights_fingerprint"] and doc["settings"]["control_seeds"] == [0, 1]
    h_layers = doc["neurons"]["per_layer"]
    assert [s["name"] for s in doc["sets"]] == ["H", "random_seed0", "random_seed1"]
    assert all(s["per_layer"] == h_layers for s in doc["sets"])  # matched per layer
    assert len({s["sha256"] for s in doc["sets"]}) == 3
    # alpha 1 is scored once and shared: 2 alphas x 3 sets + 1 lm-eval runs
    assert sorted(d.name for d in (out / "lm_eval").iterdir() if not d.name.startswith("known")) == sorted(
        ["alpha_1"] + [f"{s}_alpha_{a}" for s in ("H", "random_seed0", "random_seed1") for a in ("0", "2")])
    rows = {(r["task"], r["metric"]): r for r in doc["rows"]}
    assert set(rows) == {("tiny_gen", "accuracy"), ("tiny_gen", "has_e"), ("tiny_mc", "acc")}
    for r in rows.values():
        assert r["n"] == 6 and r["per_item"] is True
        for name, s in r["sets"].items():
            assert s["slope"] == pytest.approx(np.polyfit(doc["grid"], s["values"], 1)[0], abs=1e-12)
            assert s["values"][1] == r["sets"]["H"]["values"][1]  # alpha 1: the same (base) run for every set
            lo, hi = s["slope_ci95"]
            assert lo <= s["slope"] + 1e-12 and s["slope"] <= hi + 1e-12
        diff = r["h_minus_random"]
        assert diff["slope_difference"] == pytest.approx(
            r["sets"]["H"]["slope"] - np.mean([r["sets"][k]["slope"] for k in ("random_seed0", "random_seed1")]))
        assert diff["ci95"][0] <= diff["slope_difference"] <= diff["ci95"][1] and diff["df"] == 1
        assert 1 <= r["h_rank"]["rank"] <= 3 and r["h_rank"]["of"] == 3
    assert doc["kl"]["mean_per_alpha"]["H"][1] == 0.0 and doc["kl"]["mean_per_alpha"]["H"][0] > 0
    for name in [*doc["files"]["tasks"].values(), doc["files"]["slopes"]]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(doc["files"]["tasks"]) == {"tiny_gen", "tiny_mc"}
    assert "H slope" in printed and "random_seed" not in printed.splitlines()[0]

    # Resume: nothing is re-run and the same numbers come back.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "lm_eval").rglob("results.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "lm_eval").rglob("results.json")} == stamps
    assert json.loads((out / "dose_response.json").read_text())["rows"] == doc["rows"]
    # ... and the KL of every variant is read back from kl/ (a marked value comes back), unless its key differs.
    marked = json.loads((out / "kl" / "H_alpha_0.json").read_text())
    assert marked["key"]["variant"]["name"] == "H_alpha_0" and len(marked["per_prompt"]) == 2
    (out / "kl" / "H_alpha_0.json").write_text(json.dumps(marked | {"per_prompt": [0.125, 0.125]}))
    assert main(argv) == 0
    again = json.loads((out / "dose_response.json").read_text())["kl"]["mean_per_alpha"]
    assert again["H"][0] == 0.125 and again["H"][2] == doc["kl"]["mean_per_alpha"]["H"][2]
    (out / "kl" / "H_alpha_0.json").write_text(json.dumps(marked | {"per_prompt": [0.125, 0.125], "key": {
        **marked["key"], "sequences_sha256": "other"}}))
    assert main(argv) == 0
    assert json.loads((out / "dose_response.json").read_text())["kl"]["mean_per_alpha"] == doc["kl"]["mean_per_alpha"]


def test_dose_settings_refuse_what_cannot_give_a_slope_before_any_model_loads(tmp_path, capsys):
    from editor.cli import main

    assert main(["dose-response", "--model", str(tmp_path / "nothing"), "--neurons", str(tmp_path / "n.json"),
                 "--alphas", "0", "--out", str(tmp_path / "o")]) == 2
    assert "at least 3 alphas" in capsys.readouterr().err
    assert main(["dose-response", "--model", str(tmp_path / "nothing"), "--neurons", str(tmp_path / "n.json"),
                 "--controls", "1", "--out", str(tmp_path / "o")]) == 2
    assert "controls" in capsys.readouterr().err


def test_a_recipe_dose_section_adds_the_stage(tmp_path):
    from editor.pipeline.recipe import load_recipe
    from editor.pipeline.run import active_stages

    path = tmp_path / "r.yaml"
    path.write_text("model: {id: smollm2-135m-instruct}\noutput: out\nedit: {alpha: 0}\n")
    assert "dose" not in active_stages(load_recipe(path))
    path.write_text("model: {id: smollm2-135m-instruct}\noutput: out\nedit: {alpha: 0}\ndose: {controls: 5}\n")
    recipe = load_recipe(path)
    assert recipe.dose.controls == 5 and recipe.dose.grid == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
    assert active_stages(recipe)[:3] == ["collect", "locate", "dose"]


def test_neuron_count_dimension_runs_each_path_set_with_its_own_matched_controls(tmp_path):
    """--neuron-sets x2 runs the same dose-response for a larger set of locate's path (neurons_path.json beside
    the neuron file): its random sets match its own per-layer counts, the unedited model's run is reused from the
    results cache, and dose_counts.json orders the slopes by neuron count."""
    from test_evaluate import NEURONS, write_task_folder
    from tinymodels import tiny_model, tiny_tokenizer

    from editor.evaluate.dose import dose_response
    from editor.formats import NEURONS_PATH, NEURONS_PATH_FORMAT

    ckpt = tmp_path / "ckpt"
    tiny_model("llama", seed=1).save_pretrained(ckpt)
    tiny_tokenizer().save_pretrained(ckpt)
    locate = tmp_path / "locate"
    locate.mkdir()
    (locate / "neurons.json").write_text(json.dumps(NEURONS))
    bigger = {"neurons": NEURONS["neurons"] + [{"layer": 0, "index": j} for j in range(20, 44, 2)]}
    (locate / NEURONS_PATH).write_text(json.dumps({"format": NEURONS_PATH_FORMAT, "sets": {"x2": bigger}}))
    tasks = write_task_folder(tmp_path / "tasks", split="test")
    out = tmp_path / "dose"
    report = dose_response(str(ckpt), locate / "neurons.json", out=out, tasks=["tiny_mc"],
                           include_paths=[str(tasks)], limit=6, alphas=[0, 2], controls=2, batch_size=4, kl=False,
                           ci_iters=200, neuron_sets=["x2"])
    sub = json.loads((out / "count_x2" / "dose_response.json").read_text())
    assert sub["neurons"]["count"] == len(bigger["neurons"]) and sub["neurons"]["source_file"].endswith("#x2")
    assert all(s["per_layer"] == sub["neurons"]["per_layer"] for s in sub["sets"])
    assert (out / "count_x2" / "lm_eval" / "alpha_1" / "results.json").read_bytes() == (
        out / "lm_eval" / "alpha_1" / "results.json").read_bytes()  # copied from the results cache
    counts = json.loads((out / "dose_counts.json").read_text())
    (row,) = counts["rows"]
    assert [c["count"] for c in row["counts"]] == [len(NEURONS["neurons"]), len(bigger["neurons"])]
    assert row["counts"][1]["h_slope"] == sub["rows"][0]["sets"]["H"]["slope"]
    assert report.results["neuron_count"]["sets"]["x2"]["folder"] == "count_x2"
    assert (out / "dose_counts.png").read_bytes()[:4] == b"\x89PNG"


def test_neuron_sets_without_a_path_file_are_refused_before_any_model_loads(tmp_path):
    from test_evaluate import NEURONS

    from editor.errors import InputError
    from editor.evaluate.dose import dose_response

    (tmp_path / "neurons.json").write_text(json.dumps(NEURONS))
    with pytest.raises(InputError, match="neurons_path.json not found"):
        dose_response(str(tmp_path / "no-model"), tmp_path / "neurons.json", out=tmp_path / "o", neuron_sets=["x5"])


def test_known_only_keeps_the_known_behaviour_documents_and_drops_the_repeated_metrics(tmp_path):
    import importlib.util

    from editor.paths import EVAL_DIR

    spec = importlib.util.spec_from_file_location("hneurons_task_utils", EVAL_DIR / "hneurons" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    rows = [json.loads(line) for line in (EVAL_DIR / "hneurons/data/false_premise.jsonl").read_text().splitlines()]
    known = {r["source_id"]: {"correct": i % 3 == 0, "response": "x"} for i, r in enumerate(rows)}
    facts = tmp_path / "known.json"
    facts.write_text(json.dumps({"format": "hneurons.known_facts/1", "facts": known}))
    kept = utils.load("false_premise.jsonl", known_facts=str(facts), known_only=True)["test"]
    assert len(kept) == sum(f["correct"] for f in known.values()) and all(kept["known"])
    mc = utils.load("knowledge_mc.jsonl", known_facts=str(facts), known_only=True)["test"]
    assert len(mc) == len((EVAL_DIR / "hneurons/data/knowledge_mc.jsonl").read_text().splitlines())  # not behaviour
    with pytest.raises(ValueError, match="known_facts"):
        utils.load("false_premise.jsonl", known_only=True)
