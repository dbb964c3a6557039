"""Collect: batched sampling, seeding, early stop, consistency, answer spans, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tinymodels import tiny_model, tiny_tokenizer, write_capital_questions

from editor.collect.generation import generate, left_pad_prompts
from editor.collect.settings import CollectSettings
from editor.collect.stage import collect, consistency_of, gather_questions, stratified_subset
from editor.data.prompting import PromptStyle, build_prompt
from editor.data.questions import Question
from editor.model.loading import LoadedModel, ModelSource
from editor.model.registry import get_arch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_lm(seed=0) -> LoadedModel:
    model = tiny_model("llama", seed=seed)
    return LoadedModel(model, tiny_tokenizer(), ModelSource("tiny", "folder", "tiny"), get_arch(model.config))


def questions(n=6, answers=("Paris",)):
    return [Question(f"q{i}", f"What is the capital of country {i}?", tuple(answers), "test", "capital",
                     f"country{i}", "train") for i in range(n)]


def test_left_padding_keeps_answers_equal_to_unbatched():
    lm = tiny_lm()
    prompts = [build_prompt(lm.tokenizer, q, PromptStyle()) for q in
               ["What?", "What is the capital of France, the country in Europe?", "Who wrote it?"]]
    ids, mask = left_pad_prompts(prompts, lm.tokenizer.pad_token_id, "cpu")
    assert mask[0, : ids.shape[1] - len(prompts[0].input_ids)].sum() == 0  # padding on the left
    settings = CollectSettings(max_new_tokens=8)
    batched = generate(lm, prompts, settings, sample=False)
    alone = [generate(lm, [p], settings, sample=False)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]


def test_same_seed_same_samples_other_seed_other_samples(tmp_path):
    lm = tiny_lm()
    qs = questions(4)
    settings = CollectSettings(samples=3, max_new_tokens=6, early_stop=False, batch_size=4)
    a = collect(lm, qs, tmp_path / "a", settings=settings, progress=False)
    b = collect(lm, qs, tmp_path / "b", settings=settings, progress=False)
    c = collect(lm, qs, tmp_path / "c", settings=CollectSettings(samples=3, max_new_tokens=6, early_stop=False,
                                                                  batch_size=4, seed=1), progress=False)
    texts = lambda r: [[s["text"] for s in rec["samples"]] for rec in r.records]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert (tmp_path / "a" / "responses.jsonl").read_bytes() == (tmp_path / "b" / "responses.jsonl").read_bytes()
    assert all(len(rec["samples"]) == 3 for rec in a.records)
    # greedy does not depend on the seed
    assert [r["greedy"]["text"] for r in a.records] == [r["greedy"]["text"] for r in c.records]


def test_early_stop_stops_only_questions_that_cannot_be_consistent(tmp_path):
    lm = tiny_lm()
    # The tiny model's own greedy first word as the gold answer: its samples sometimes say it, sometimes not.
    probe = generate(lm, [build_prompt(lm.tokenizer, "What is the capital of country 0?")],
                     CollectSettings(max_new_tokens=6), sample=False)[0].text.split()
    word = next((w for w in probe if w.isalnum() and len(w) > 1), probe[0] if probe else "Paris")
    qs = questions(8, answers=(word,))
    k = 6
    full = collect(lm, qs, tmp_path / "full", progress=False,
                   settings=CollectSettings(samples=k, max_new_tokens=6, early_stop=False, batch_size=8))
    early = collect(lm, qs, tmp_path / "early", progress=False,
                    settings=CollectSettings(samples=k, max_new_tokens=6, early_stop=True, batch_size=8))
    assert all(r["n_samples"] == k for r in full.records)
    for rec in early.records:
        labels = [s["label"] for s in rec["samples"]]
        if rec["n_samples"] < k:
            assert rec["early_stopped"] and rec["consistency"] in ("mixed", "uncertain")
            assert "uncertain" in labels or {"correct", "wrong"} <= set(labels) or any(
                s["truncated"] for s in rec["samples"])
        else:
            assert rec["consistency"] in ("correct", "wrong", "mixed", "uncertain")
    saved = early.manifest["early_stop_saving"]
    assert early.manifest["generations"]["generations"] <= full.manifest["generations"]["generations"]
    assert 0 <= saved < 1


def test_consistency_rules():
    s = lambda label, trunc=False: {"label": label, "truncated": trunc}  # noqa: E731
    assert consistency_of([s("correct")] * 3, 3) == "correct"
    assert consistency_of([s("wrong")] * 3, 3) == "wrong"
    assert consistency_of([s("wrong"), s("correct")], 3) == "mixed"
    assert consistency_of([s("wrong"), s("uncertain")], 3) == "uncertain"
    assert consistency_of([s("wrong"), s("wrong", True), s("wrong")], 3) == "uncertain"
    assert consistency_of([s("wrong")] * 2, 3) == "uncertain"  # fewer than k samples is never consistent


def test_stratified_subset_covers_every_relation():
    qs = [Question(f"{r}{i}", "q?", ("a",), "s", r, f"{r}{i}", "train") for r in "abc" for i in range(50)]
    sub = stratified_subset(qs, 30, seed=0)
    assert len(sub) == 30 and {q.relation for q in sub} == {"a", "b", "c"}
    assert sub == stratified_subset(qs, 30, seed=0) != stratified_subset(qs, 30, seed=1)
    assert [qs.index(q) for q in sub] == sorted(qs.index(q) for q in sub)


def test_bundled_questions_limit_per_split():
    qs, record = gather_questions(["bundled:facts"], ["train", "test"], {"train": 40, "test": 10})
    assert sum(q.split == "train" for q in qs) == 40 and sum(q.split == "test" for q in qs) == 10
    assert len({q.relation for q in qs if q.split == "train"}) >= 6
    assert record["sources"][0]["sha256"]


def _collect_cmd(folder, data, out):
    return [sys.executable, "-m", "editor", "collect", "--model", str(folder), "--data", str(data), "--split", "train",
            "--samples", "4", "--max-new-tokens", "8", "--batch-size", "2", "--out", str(out), "--no-progress",
            "--device", "cpu"]


def test_resume_after_kill_gives_the_same_artifact(tmp_path):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    data = tmp_path / "qs.jsonl"
    write_capital_questions(data, 12)
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run(_collect_cmd(folder, data, tmp_path / "full"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_collect_cmd(folder, data, tmp_path / "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = tmp_path / "killed" / "chunks"
    deadline = time.time() + 120
    while time.time() < deadline and not (chunks.is_dir() and len(list(chunks.glob("chunk-*.jsonl"))) >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "responses.jsonl").exists(), "killed before the end: no final artifact"
    done_before = len(list(chunks.glob("chunk-*.jsonl")))
    assert 2 <= done_before < 6
    out = subprocess.run(_collect_cmd(folder, data, tmp_path / "killed"), check=True, env=env, capture_output=True,
                         text=True)
    full = (tmp_path / "full" / "responses.jsonl").read_bytes()
    assert (tmp_path / "killed" / "responses.jsonl").read_bytes() == full
    manifest = json.loads((tmp_path / "killed" / "collect.json").read_text())
    assert manifest["resumed_chunks"] >= done_before
    assert "selected_faithful" in out.stdout


def test_changed_settings_are_refused_without_overwrite(tmp_path):
    from editor.errors import OutputExistsError

    lm = tiny_lm()
    collect(lm, questions(2), tmp_path / "o", settings=CollectSettings(samples=2, max_new_tokens=4), progress=False)
    with pytest.raises(OutputExistsError, match="sampling"):
        collect(lm, questions(2), tmp_path / "o", settings=CollectSettings(samples=3, max_new_tokens=4),
                progress=False)


@pytest.mark.integration
def test_smollm2_collect_finds_both_classes_and_alias_spans(smollm2, tmp_path):
    qs, _ = gather_questions(["bundled:facts"], ["train"], 48)
    result = collect(smollm2, qs, tmp_path / "c", progress=False,
                     settings=CollectSettings(samples=4, batch_size=24))
    counts = result.manifest["counts"]["train"]
    assert counts.get("correct", 0) > 0 and counts.get("wrong", 0) > 0, counts
    for rec in result.records:
        rep = rec["representative"]
        if rec["consistency"] == "correct" and rep["answer_span"] == "alias":
            span = smollm2.tokenizer.decode(rep["input_ids"][rep["answer_start"]:rep["answer_end"]])
            from editor.data.judge import normalize

            assert any(normalize(a) in normalize(span) for a in rec["answers"]), (span, rec["answers"])
        if rep:
            assert rep["response_end"] == len(rep["input_ids"])
            assert rep["response_start"] <= rep["answer_start"] < rep["answer_end"] <= rep["response_end"]


def test_heldout_split_is_collected_from_a_source_that_has_it():
    from editor.data.questions import load_questions

    qs, record = gather_questions(["bundled:diverse"], ["train", "validation", "test", "heldout"],
                                  {"train": 30, "validation": 10, "test": 10, "heldout": 16})
    by_split = {s: [q for q in qs if q.split == s] for s in ("train", "validation", "test", "heldout")}
    assert [len(v) for v in by_split.values()] == [30, 10, 10, 16] and record["splits"][-1] == "heldout"
    # whole families: none of the held-out ones is asked in any other split, and the limit spreads over them
    held_families = {q.relation for q in load_questions("bundled:diverse", split="heldout")}
    assert {q.relation for q in by_split["heldout"]} == held_families
    assert not held_families & {q.relation for s in ("train", "validation", "test") for q in by_split[s]}
    assert CollectSettings.of(data=["bundled:diverse"], splits=["train", "heldout"], limit={"heldout": 5}).splits[-1] \
        == "heldout"
    assert CollectSettings().splits == ["train", "validation", "test"]  # the default splits stay the three


def test_heldout_split_of_a_source_without_one_is_one_error_naming_it(tmp_path, capsys):
    from editor.cli import main
    from editor.errors import InputError

    with pytest.raises(InputError, match=r"'bundled:nonexist' has no such split") as err:
        gather_questions(["bundled:diverse", "bundled:nonexist"], ["train", "heldout"], 5)
    assert "bundled:diverse" in str(err.value) and "'bundled:diverse'" not in str(err.value)
    with pytest.raises(InputError, match=r"'bundled:facts' has no such split"):
        CollectSettings.of(data=["bundled:facts"], splits=["test", "heldout"])
    data = write_capital_questions(tmp_path / "qs.jsonl", 4, split="heldout")
    with pytest.raises(InputError, match="qs.jsonl' has no such split"):
        gather_questions([str(data)], ["heldout"])
    # the command refuses before it looks for the model (which does not exist here)
    assert main(["collect", "--model", str(tmp_path / "no-such-model"), "--data", "bundled:facts", "--split",
                 "train,heldout", "--out", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "--split" in message and "'bundled:facts' has no such split" in message and "no-such-model" not in message
    assert not (tmp_path / "out").exists()


def test_heldout_is_balanced_as_test(tmp_path):
    """collect balances every split alike: heldout gets what test gets (equal classes per split, seeded)."""
    from editor.collect.stage import balance, summarize

    def rec(rid, split, y):
        return {"id": rid, "split": split, "fabricated": False, "hallucinated": y, "selected": False,
                "consistency": {0: "correct", 1: "wrong", None: "mixed"}[y], "greedy": {"label": "wrong"},
                "samples": []}

    labels = [1, 1, 1, 0, 0, None, 1, 0, 1]
    records = [rec(f"{s}{i}", s, y) for s in ("test", "heldout") for i, y in enumerate(labels)]
    balance(records, seed=0)
    for split in ("test", "heldout"):
        chosen = [r for r in records if r["split"] == split and r["selected"]]
        assert sorted(r["hallucinated"] for r in chosen) == [0, 0, 0, 1, 1, 1]
    counts = summarize(records)
    assert counts["heldout"]["selected_faithful"] == counts["test"]["selected_faithful"] == 3
    # and a collect run asks heldout questions like any other
    from editor.data.questions import load_questions

    lm = tiny_lm()
    qs = load_questions("bundled:diverse", split="heldout", limit=3)
    result = collect(lm, qs, tmp_path / "c", settings=CollectSettings(samples=2, max_new_tokens=4), progress=False)
    assert result.manifest["counts"]["heldout"]["questions"] == 3
    assert all(r["split"] == "heldout" for r in result.records)
