"""Trivial baselines of the detection reports (editor/locate/baselines.py): planted length and family signals,
paired margins on the same items, the length-matched subset, the confidence pass, the within-family C choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editor import stats
from editor.errors import InputError
from editor.locate import baselines
from editor.locate.baselines import Signals
from editor.locate.settings import LocateSettings
from editor.locate.stage import fit_probe_path


def _signals(n_tokens, families, logprob=None) -> Signals:
    n_tokens = np.asarray(n_tokens, dtype=np.float64)
    lp = np.zeros(len(n_tokens)) if logprob is None else np.asarray(logprob, dtype=np.float64)
    return Signals(n_tokens, lp, tuple(families))


def _split(n, seed):
    """Items whose label is planted in the answer length (long answers are wrong, 5% of labels flipped)."""
    g = np.random.default_rng(seed)
    length = g.integers(1, 31, size=n)
    y = (length > 15).astype(int)
    flip = g.random(n) < 0.05
    y[flip] = 1 - y[flip]
    families = [f"f{i}" for i in g.integers(0, 4, size=n)]
    return _signals(length, families, g.normal(-2, 0.5, size=n)), y


def test_length_baseline_finds_a_planted_length_signal_and_a_probe_without_it_does_not():
    train, y_tr = _split(600, 0)
    _, y_val = _split(300, 1)
    test, y_te = _split(300, 2)
    fitted = baselines.fit_baselines(train, y_tr)
    length_auroc = stats.auroc(fitted["length"].scores(test), y_te)
    assert length_auroc > 0.9
    assert stats.auroc(fitted["length_family"].scores(test), y_te) > 0.9
    assert abs(stats.auroc(fitted["family"].scores(test), y_te) - 0.5) < 0.12
    assert abs(stats.auroc(fitted["confidence"].scores(test), y_te) - 0.5) < 0.12
    # a probe on features that carry no length information (CETT-like noise) finds nothing
    g = np.random.default_rng(3)
    x = {k: torch.tensor(g.random((n, 40)), dtype=torch.float32) for k, n in (("tr", 600), ("val", 300), ("te", 300))}
    fit = fit_probe_path(x["tr"], torch.tensor(y_tr, dtype=torch.float32), x["val"], y_val, LocateSettings(n_C=8))
    point = fit.path[fit.chosen]
    probe = ((x["te"] - fit.standardiser.mean) / fit.standardiser.std @ point.weight + point.bias).numpy()
    if point.n_nonzero == 0:
        probe = np.zeros(len(y_te))
    assert abs(stats.auroc(probe, y_te) - 0.5) < 0.12
    block = baselines.compare({"probe": probe}, {n: b.scores(test) for n, b in fitted.items()}, y_te, 300, 0)
    assert "length" in block["fails_to_beat"]["probe"] and "length_family" in block["fails_to_beat"]["probe"]
    assert block["margins"]["probe"]["length"]["ci95"][1] < 0  # clearly below the length baseline
    assert "the probe FAILS to beat length only" in block["statement"]


def test_family_baseline_finds_a_planted_family_signal():
    g = np.random.default_rng(0)
    rate = {f"f{i}": (0.1 if i % 2 else 0.9) for i in range(6)}

    def split(n):
        fam = [f"f{i}" for i in g.integers(0, 6, size=n)]
        y = (g.random(n) < np.array([rate[f] for f in fam])).astype(int)
        return _signals(g.integers(1, 31, size=n), fam, g.normal(size=n)), y

    (train, y_tr), (test, y_te) = split(600), split(300)
    fitted = baselines.fit_baselines(train, y_tr)
    assert stats.auroc(fitted["family"].scores(test), y_te) > 0.75
    assert stats.auroc(fitted["length_family"].scores(test), y_te) > 0.75
    assert abs(stats.auroc(fitted["length"].scores(test), y_te) - 0.5) < 0.12
    described = fitted["family"].describe()
    assert described["family_rate"]["f0"] > 0.7 and described["family_rate"]["f1"] < 0.3
    # a family never seen in training gets the overall training rate
    unseen = _signals([3], ["new"])
    assert fitted["family"].columns(unseen)[0, 0] == pytest.approx(np.log(y_tr.mean() / (1 - y_tr.mean())))


def test_margins_and_their_cis_use_the_same_resampled_items():
    g = np.random.default_rng(1)
    y = np.array([0, 1] * 40)
    probe = y + g.normal(0, 0.8, size=len(y))
    length = y + g.normal(0, 1.5, size=len(y))
    block = baselines.compare({"probe": probe}, {"length": length, "same": probe.copy()}, y, 400, 7)
    # every AUROC's CI is the one editor.stats.bootstrap_ci draws for the same seed (the same resamples)
    for name, s in (("length", length), ("same", probe)):
        row = block["baselines"][name]
        assert row["auroc"] == stats.auroc(s, y)
        assert row["auroc_ci95"] == pytest.approx(list(stats.bootstrap_ci(stats.auroc, s, y, n_boot=400, seed=7,
                                                                          stratify=y)))
    assert block["classifiers"]["probe"]["auroc_ci95"] == block["baselines"]["same"]["auroc_ci95"]
    m = block["margins"]["probe"]["length"]
    assert m["margin"] == pytest.approx(stats.auroc(probe, y) - stats.auroc(length, y))
    index = baselines.stratified_resamples(y, 400, 7)
    diff = baselines.resampled_auroc(probe, y, index) - baselines.resampled_auroc(length, y, index)
    assert m["ci95"] == pytest.approx(list(np.quantile(diff, [0.025, 0.975])))
    # paired: a baseline equal to the probe has margin 0 with a CI of width 0 (not the width of two AUROC CIs)
    assert block["margins"]["probe"]["same"] == {"margin": 0.0, "ci95": [0.0, 0.0], "beats": False}
    assert block["fails_to_beat"]["probe"] == (["same"] if m["beats"] else ["length", "same"])
    assert block["n"] == 80 and block["n_hallucinated"] == 40
    with pytest.raises(InputError, match="same items"):
        baselines.compare({"probe": probe}, {"length": length[:-1]}, y, 10, 0)


def test_length_matched_subset_has_equal_lengths_in_both_classes():
    g = np.random.default_rng(2)
    n_tokens = g.integers(1, 8, size=200)
    y = (g.random(200) < n_tokens / 8).astype(int)  # longer answers are wrong more often
    rows = baselines.length_matched_rows(n_tokens, y, seed=0)
    for length in np.unique(n_tokens):
        at = rows[n_tokens[rows] == length]
        assert y[at].sum() * 2 == len(at)
        assert len(at) == 2 * min(((n_tokens == length) & (y == 1)).sum(), ((n_tokens == length) & (y == 0)).sum())
    scores = {"length": n_tokens.astype(float), "probe": y + g.normal(0, 0.5, size=200)}
    out = baselines.length_matched(n_tokens, y, scores, [g.normal(size=200)], 200, 0)
    assert out["n"] == len(rows) == 2 * out["n_pairs"]
    assert out["scores"]["length"]["auroc"] == 0.5  # length carries nothing once matched
    assert out["scores"]["probe"]["auroc"] > 0.8
    assert "too few to decide" in out["note"] and "random_auroc_mean" in out
    none = baselines.length_matched(np.array([1, 2]), np.array([0, 1]), {"probe": np.array([0.0, 1.0])}, [], 10, 0)
    assert none["n_pairs"] == 0 and "no token count" in none["note"]


def test_within_family_auroc_counts_only_pairs_of_one_family():
    y = np.array([1, 0, 1, 0, 1, 1])
    fam = ["a", "a", "b", "b", "c", "c"]
    # family a ranked right, b wrong, c has one class only (ignored): 1 of 2 same-family pairs
    assert baselines.within_family_auroc(np.array([2.0, 1, 0, 3, 9, 9]), y, fam) == 0.5
    assert baselines.within_family_auroc(np.array([2.0, 1, 4, 3, 0, 0]), y, fam) == 1.0
    assert baselines.within_family_auroc(np.zeros(2), np.array([1, 0]), ["a", "b"]) is None


def test_c_choice_within_family_reads_the_within_family_validation_auroc():
    g = np.random.default_rng(4)
    n = 240
    fam = np.array([f"f{i % 4}" for i in range(n)])
    y = (g.random(n) < 0.5).astype(int)
    x = torch.tensor(g.normal(size=(n, 30)), dtype=torch.float32)
    x[:, 0] += torch.tensor(y, dtype=torch.float32)
    tr, val = slice(0, 160), slice(160, n)
    fit = fit_probe_path(x[tr], torch.tensor(y[tr], dtype=torch.float32), x[val], y[val],
                         LocateSettings(n_C=6, c_choice="within_family"), val_families=list(fam[val]))
    assert fit.criterion == "within_family" and fit.note is None
    assert all(w is not None for w in fit.val_auroc_within)
    # no validation family holds both classes: pooled, with a note saying so
    one_class = [f"h{v}" for v in y[val]]
    fallback = fit_probe_path(x[tr], torch.tensor(y[tr], dtype=torch.float32), x[val], y[val],
                              LocateSettings(n_C=6, c_choice="within_family"), val_families=one_class)
    assert fallback.criterion == "pooled" and "pooled" in fallback.note
    pooled = fit_probe_path(x[tr], torch.tensor(y[tr], dtype=torch.float32), x[val], y[val], LocateSettings(n_C=6))
    assert pooled.criterion == "pooled" and pooled.chosen == fallback.chosen


def test_fit_logistic_is_at_its_optimum():
    g = np.random.default_rng(5)
    x = g.normal(size=(300, 3))
    y = (g.random(300) < 1 / (1 + np.exp(-(x @ [2.0, -1.0, 0.0] + 0.5)))).astype(float)
    w, b = baselines.fit_logistic(x, y, l2=1.0)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    assert np.abs(x.T @ (p - y) + w).max() < 1e-6 and abs((p - y).sum()) < 1e-6
    # perfectly separable data stay finite (the penalty bounds the weights)
    w, b = baselines.fit_logistic(np.array([[-1.0], [1.0]] * 5), np.array([0.0, 1.0] * 5))
    assert np.isfinite(w).all() and w[0] > 0


def test_mean_logprobs_equal_a_full_forward_pass():
    from tinymodels import tiny_model, tiny_tokenizer

    from editor.model.loading import LoadedModel, ModelSource
    from editor.model.registry import get_arch

    model = tiny_model("llama")
    lm = LoadedModel(model, tiny_tokenizer(), ModelSource("tiny", "folder", "tiny"), get_arch(model.config))
    g = np.random.default_rng(0)
    records = []
    for i, (p, a) in enumerate([(5, 3), (8, 1), (3, 6), (6, 4)]):
        ids = g.integers(10, 290, size=p + a).tolist()
        records.append({"id": str(i), "representative": {"input_ids": ids, "response_start": p,
                                                         "response_end": p + a}})
    got = baselines.mean_logprobs(lm, records, "response", batch_size=3)
    for rec, value in zip(records, got):
        ids = torch.tensor([rec["representative"]["input_ids"]])
        s, e = rec["representative"]["response_start"], rec["representative"]["response_end"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        expected = float(logp[torch.arange(s - 1, e - 1), ids[0, s:e]].mean())
        assert value == pytest.approx(expected, abs=1e-5)
    assert baselines.answer_lengths(records, "response").tolist() == [3, 1, 6, 4]
    with pytest.raises(InputError, match="span"):
        baselines.answer_lengths([{"id": "x", "representative": {"input_ids": [1, 2], "response_start": 0,
                                                                  "response_end": 2}}], "response")
