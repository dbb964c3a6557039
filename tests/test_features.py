"""CETT features: exact definition, span bookkeeping, streaming store and resume."""

from __future__ import annotations

import json

import pytest
import torch
from tinymodels import tiny_model, tiny_tokenizer

from editor.errors import InputError, NumericalError
from editor.locate.features import FeatureSettings, FeatureStore, cett_features, extract_features, span_masks
from editor.model.hooks import capture_down_inputs, down_proj_modules
from editor.model.loading import LoadedModel, ModelSource
from editor.model.registry import get_arch


def make_lm(model_type="llama", seed=0) -> LoadedModel:
    model = tiny_model(model_type, seed=seed)
    return LoadedModel(model, tiny_tokenizer(), ModelSource("tiny", "folder", "tiny"), get_arch(model.config))


def make_records(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    records = []
    for i in range(n):
        length = int(torch.randint(6, 14, (1,), generator=g))
        ids = torch.randint(4, 300, (length,), generator=g).tolist()
        prompt_len = length - 3
        start = prompt_len + (i % 2)
        records.append({"id": f"q{i}", "representative": {"input_ids": ids, "prompt_len": prompt_len,
                                                          "answer_start": start, "answer_end": length - 1,
                                                          "response_start": prompt_len, "response_end": length}})
    return records


def slow_cett(lm, record):
    """The definition, the slow way: ||W_down[:, j] * z_j|| / ||W_down z|| per neuron and token."""
    ids = torch.tensor([record["representative"]["input_ids"]])
    with torch.no_grad(), capture_down_inputs(lm.model) as z:
        lm.model(input_ids=ids)
    rep = record["representative"]
    answer = torch.zeros(ids.shape[1], dtype=torch.bool)
    answer[rep["answer_start"]:rep["answer_end"]] = True
    per_layer_answer, per_layer_other = [], []
    for layer, module in enumerate(down_proj_modules(lm.model, lm.arch)):
        w = module.weight.T if lm.arch.conv1d else module.weight  # [d_model, d_ff]
        zl = z[layer][0]  # [T, d_ff]
        cett = torch.zeros_like(zl)
        for t in range(zl.shape[0]):
            h = w @ zl[t]
            for j in range(zl.shape[1]):
                cett[t, j] = torch.linalg.vector_norm(w[:, j] * zl[t, j]) / torch.linalg.vector_norm(h)
        per_layer_answer.append(cett[answer].mean(0))
        per_layer_other.append(cett[~answer].mean(0))
    return torch.cat(per_layer_answer), torch.cat(per_layer_other)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi", "phi3"])
def test_cett_equals_the_slow_definition(model_type):
    lm = make_lm(model_type)
    records = make_records(4)
    got = {}
    for ids, feats in cett_features(lm, records, batch_size=3):  # 3 + 1: padding inside a batch
        for i, f in zip(ids, feats):
            got[i] = f
    for rec in records:
        answer, other = slow_cett(lm, rec)
        torch.testing.assert_close(got[rec["id"]][0], answer, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[rec["id"]][1], other, rtol=1e-5, atol=1e-5)


def test_span_masks_take_the_right_positions():
    records = [{"id": "a", "representative": {"input_ids": [5, 6, 7, 8, 9], "answer_start": 3, "answer_end": 5}},
               {"id": "b", "representative": {"input_ids": [5, 6, 7], "answer_start": 1, "answer_end": 2}}]
    answer, other = span_masks(records, 6)
    assert answer.tolist() == [[0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]]
    assert other.tolist() == [[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0]]  # padding is neither
    bad = [{"id": "c", "representative": {"input_ids": [1, 2], "answer_start": 1, "answer_end": 4}}]
    with pytest.raises(InputError, match="'c'"):
        span_masks(bad, 4)


def test_max_aggregation_is_the_maximum_over_the_span():
    lm = make_lm()
    rec = make_records(1)[0]
    (_, mean), = list(cett_features(lm, [rec], "mean"))
    (_, maxi), = list(cett_features(lm, [rec], "max"))
    assert (maxi >= mean - 1e-6).all() and (maxi > mean + 1e-6).any()


def test_store_streams_shards_and_resumes(tmp_path):
    lm = make_lm()
    records = make_records(7)
    # ~2 records per shard: several shards, each written atomically
    settings = FeatureSettings(batch_size=2, shard_bytes=2 * (2 * 96 * 2))  # 2 rows of 2 kinds x 96 fp16
    store = extract_features(lm, records, tmp_path / "f", settings, progress=False)
    assert len(store.meta["shards"]) == 4 and store.meta["complete"]
    x = store.load(["q6", "q0"], "answer")
    direct = {i: f for ids, feats in cett_features(lm, records, span="response") for i, f in zip(ids, feats)}
    torch.testing.assert_close(x[0], direct["q6"][0].half().float())
    torch.testing.assert_close(store.load(["q1"], "other", columns=torch.tensor([3, 50]))[0],
                               direct["q1"][1][[3, 50]].half().float())
    # simulate a kill after two shards: drop the later shards and the completion flag
    meta = json.loads((tmp_path / "f" / "features.json").read_text())
    first = (tmp_path / "f" / "shard-00000.safetensors").read_bytes()
    for s in meta["shards"][2:]:
        (tmp_path / "f" / s["file"]).unlink()
    meta["complete"] = False
    meta["shards"] = meta["shards"][:2]
    (tmp_path / "f" / "features.json").write_text(json.dumps(meta))
    again = extract_features(lm, records, tmp_path / "f", settings, progress=False)
    assert again.meta["complete"] and (tmp_path / "f" / "shard-00000.safetensors").read_bytes() == first
    torch.testing.assert_close(again.load(["q6"], "answer"), x[:1])
    with pytest.raises(InputError):
        FeatureStore.open(tmp_path / "nothing")


def test_training_rows_fill_one_matrix_and_the_standardiser_works_in_blocks(tmp_path):
    import numpy as np

    from editor.locate.stage import Split, Standardiser, training_rows

    lm = make_lm()
    store = extract_features(lm, make_records(7), tmp_path / "f",
                             FeatureSettings(batch_size=2, shard_bytes=2 * (2 * 96 * 2)), progress=False)
    ids = ["q5", "q0", "q3", "q6"]
    split = Split(ids, np.array([1, 0, 1, 0]), ["r"] * 4)
    x, y = training_rows(store, split, "3v1")
    assert torch.equal(x, torch.cat([store.load(ids, "answer"), store.load(ids, "other")]))
    assert y.tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    cols = torch.tensor([3, 50, 90])
    assert torch.equal(training_rows(store, split, "3v1", columns=cols)[0], x[:, cols])
    with pytest.raises(InputError, match=r"out has shape \(1, 1\)"):
        store.load(ids, "answer", out=torch.empty(1, 1))
    # moments in float64, 7 columns at a time (96 is not a multiple): those of the whole matrix
    std = Standardiser.fit(x, block=7)
    torch.testing.assert_close(std.mean, x.double().mean(0).float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(std.std, x.double().std(0, unbiased=False).float(), rtol=1e-6, atol=0)
    assert torch.equal(std.apply_(x.clone()), std(x))  # in place: the same float32 arithmetic


def test_non_finite_activations_name_the_layer():
    lm = make_lm()
    with torch.no_grad():
        down_proj_modules(lm.model, lm.arch)[1].weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="layer 1"):
        list(cett_features(lm, make_records(2)))
