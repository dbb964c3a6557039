"""The bundled diverse question set (eval/data/diverse_*), its builder, its splits and its loading."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

import pytest

from editor.data.build import diverse
from editor.data.judge import find_alias, judge
from editor.data.questions import (
    BUNDLED_DIR,
    BUNDLED_SETS,
    HELDOUT_SPLIT,
    SPLITS,
    dataset_fingerprint,
    load_questions,
)
from editor.errors import InputError

ALL_SPLITS = (*SPLITS, HELDOUT_SPLIT)
FIELDS = ["id", "question", "answers", "source", "relation", "entity", "split", "fabricated"]
GENERATED = [f"diverse_{s}.jsonl" for s in ALL_SPLITS] + ["diverse_manifest.json", "diverse_README.md"]


def _read(folder, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"diverse_{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    out = []
    for split in ALL_SPLITS:
        rows = _read(BUNDLED_DIR, split)
        assert rows and all(r["split"] == split for r in rows), split
        out += rows
    return out


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((BUNDLED_DIR / "diverse_manifest.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, manifest):
    a, b = tmp_path_factory.mktemp("diverse_a"), tmp_path_factory.mktemp("diverse_b")
    return diverse.build_all(a, seed=manifest["seed"]), a, b, diverse.build_all(b, seed=manifest["seed"])


# ================================================================================================ builder
def test_two_builds_with_one_seed_are_identical_and_equal_the_shipped_files(two_builds, manifest):
    rebuilt, a, b, _ = two_builds
    assert sorted(p.name for p in a.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    if rebuilt["sources"] == manifest["sources"]:
        for name in GENERATED:  # the committed files are what this build gives
            assert (a / name).read_bytes() == (BUNDLED_DIR / name).read_bytes(), name
    # other source package versions than the shipped files were built with: only determinism is checked


def test_another_seed_changes_the_splits_not_the_questions(two_builds, tmp_path):
    rebuilt, a, _, _ = two_builds
    other = diverse.build_all(tmp_path, seed=rebuilt["seed"] + 1)
    first = {r["id"]: r["split"] for s in ALL_SPLITS for r in _read(a, s)}
    second = {r["id"]: r["split"] for s in ALL_SPLITS for r in _read(tmp_path, s)}
    assert first.keys() == second.keys()
    assert {i for i, s in first.items() if s == HELDOUT_SPLIT} == {i for i, s in second.items() if s == HELDOUT_SPLIT}
    assert sum(first[i] != second[i] for i in first) > 1000
    assert other["counts"].keys() == rebuilt["counts"].keys()


# ================================================================================================ content
def test_size_families_packages_and_kinds(records, manifest):
    assert len(records) >= 8000
    families = Counter(r["relation"] for r in records)
    assert len(families) >= 25 and set(families) == set(manifest["families"])
    assert min(families.values()) >= 20
    sources = {r["source"] for r in records}
    assert len(sources) >= 8 and sources == set(manifest["sources"])
    kinds = {meta["kind"] for meta in manifest["families"].values()}
    assert {"people", "dates", "numbers", "codes", "places"} <= kinds


def test_every_record_has_the_facts_fields_and_answers(records):
    for r in records:
        assert list(r) == FIELDS, r
        assert r["question"].endswith("?") and r["entity"] and r["relation"] and r["source"]
        assert r["answers"] and all(isinstance(a, str) and a and a.strip() == a for a in r["answers"]), r
        assert r["fabricated"] is False
    assert max(Counter(r["id"] for r in records).values()) == 1
    facts_ids = {json.loads(line)["id"] for s in SPLITS
                 for line in (BUNDLED_DIR / f"facts_{s}.jsonl").read_text(encoding="utf-8").splitlines()}
    assert not facts_ids & {r["id"] for r in records}  # both sets can be collected together


def test_the_gold_answer_is_judged_correct_and_the_question_never_echoes_it(records):
    for r in records:
        assert find_alias(r["question"], r["answers"]) is None, r["id"]
        assert judge(f"The answer is {r['answers'][0]}.", r["answers"]).label == "correct", r["id"]


# ================================================================================================ splits
def test_no_entity_crosses_train_validation_and_test(records):
    splits_of = defaultdict(set)
    for r in records:
        if r["split"] != HELDOUT_SPLIT:
            splits_of[r["entity"]].add(r["split"])
    crossing = [e for e, s in splits_of.items() if len(s) > 1]
    assert crossing == []
    shares = Counter(r["split"] for r in records if r["split"] != HELDOUT_SPLIT)
    total = sum(shares.values())
    assert 0.5 < shares["train"] / total < 0.7
    assert 0.13 < shares["validation"] / total < 0.27
    assert 0.13 < shares["test"] / total < 0.27


def test_held_out_families_appear_only_in_heldout(records, manifest):
    heldout = set(manifest["heldout_families"])
    assert heldout == set(diverse.HELDOUT_FAMILIES) and len(heldout) >= 5
    assert len({manifest["families"][f]["kind"] for f in heldout}) >= 2
    for r in records:
        assert (r["relation"] in heldout) == (r["split"] == HELDOUT_SPLIT), r["id"]
    assert {r["relation"] for r in records if r["split"] == HELDOUT_SPLIT} == heldout
    # the training families keep enough of every kind to train on
    train_kinds = {manifest["families"][r["relation"]]["kind"] for r in records if r["split"] == "train"}
    assert {"dates", "numbers", "codes", "places"} <= train_kinds


def test_split_groups_keep_a_capitals_questions_with_its_country(records):
    split_of = {(r["relation"], r["entity"]): r["split"] for r in records}
    checked = 0
    for r in records:
        if r["relation"] == "country_capital":
            for alias in r["answers"]:
                city_split = split_of.get(("city_country", alias))
                if city_split is not None:
                    assert city_split == r["split"], r
                    checked += 1
    assert checked >= 20


def test_manifest_counts_versions_and_hashes_match_the_files(records, manifest):
    counts = defaultdict(Counter)
    for r in records:
        counts[r["relation"]][r["split"]] += 1
    for family, per_split in manifest["counts"].items():
        assert {s: n for s, n in per_split.items() if n} == dict(counts[family]), family
    assert manifest["totals"] == {s: sum(c[s] for c in counts.values()) for s in ALL_SPLITS}
    assert set(manifest["sources"]) == set(diverse.SOURCE_PACKAGES) and all(manifest["sources"].values())
    assert isinstance(manifest["seed"], int)
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((BUNDLED_DIR / name).read_bytes()).hexdigest() == digest, name
    readme = (BUNDLED_DIR / "diverse_README.md").read_text(encoding="utf-8")
    assert "python -m editor.data.build.diverse" in readme and "licen" in readme.lower()
    for family in manifest["heldout_families"]:
        assert f"`{family}` (held out)" in readme


# ================================================================================================ helpers
def test_alias_helpers():
    assert {"July 4", "4 July", "July 4th", "4th of July", "fourth of July"} <= set(diverse.date_aliases(7, 4))
    assert {"22nd of February", "twenty-second of February"} <= set(diverse.date_aliases(2, 22))
    people = diverse.discoverer_aliases("Sir William Ramsey, M.W. Travers")
    assert {"William Ramsay", "Ramsay", "Travers"} <= set(people) and "Ramsey" not in people
    assert {"Pierre Curie", "Marie Curie", "Curie"} <= set(diverse.discoverer_aliases("Pierre and Marie Curie"))
    assert diverse.discoverer_aliases("Joint Institute for Nuclear Research") is None
    assert diverse.discoverer_aliases("Known to the ancients.") is None
    assert diverse._country_answers_ambiguous(["SD"])  # "Sudan" occurs in "South Sudan"
    assert not diverse._country_answers_ambiguous(["FR"])


# ================================================================================================ loading
def test_bundled_diverse_loads_through_the_question_api_for_each_split(records):
    assert "diverse" in BUNDLED_SETS
    per_split = Counter(r["split"] for r in records)
    for split in ALL_SPLITS:
        questions = load_questions("bundled:diverse", split=split)
        assert len(questions) == per_split[split] and {q.split for q in questions} == {split}
        assert all(q.answers and not q.fabricated for q in questions)
        assert load_questions("bundled:diverse", split=split, limit=3) == questions[:3]
    everything = load_questions("bundled:diverse")  # no split: train + validation + test, never heldout
    assert len(everything) == sum(per_split[s] for s in SPLITS)
    assert HELDOUT_SPLIT not in {q.split for q in everything}
    fingerprint = dataset_fingerprint("bundled:diverse")
    assert len(fingerprint) == 64 and fingerprint != dataset_fingerprint("bundled:facts")


def test_the_heldout_split_exists_only_where_a_set_has_one(tmp_path):
    for spec in ("bundled:facts", "bundled:nonexist", "triviaqa"):
        with pytest.raises(InputError, match="exists only for bundled:diverse"):
            load_questions(spec, split=HELDOUT_SPLIT)
    path = tmp_path / "own.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answers": ["a"], "split": HELDOUT_SPLIT}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="'heldout' is not one of train, validation, test"):
        load_questions(str(path))
    with pytest.raises(InputError, match="split 'dev' is not one of"):
        load_questions("bundled:diverse", split="dev")
