"""Question sets: the bundled ones, TriviaQA, NQ-Open and your own files, as one list of :class:`Question`.

Dataset specs accepted by :func:`load_questions` and :func:`dataset_fingerprint`:

``bundled:facts`` / ``bundled:nonexist``
    The files shipped in ``eval/data/`` (built by :mod:`editor.data.build.facts`): factual questions with every
    acceptable alias, and questions about fabricated entities (``fabricated=True``, no answers).
``bundled:diverse``
    Factual questions of many kinds from ten packages (built by :mod:`editor.data.build.diverse`; families in
    ``eval/data/diverse_README.md``), split by entity, plus whole families held out of training:
    ``split="heldout"`` loads those; no split loads train, validation and test only, never the held-out families.
``triviaqa``
    Hugging Face ``mandarjoshi/trivia_qa``, config ``rc.nocontext`` (the paper's data). Answers =
    ``answer.value`` + ``answer.aliases`` + ``answer.normalized_aliases``. Split mapping: TriviaQA's
    *validation* split is our ``test``; our ``validation`` is carved from TriviaQA's *train* split by a
    seeded hash of the question id (:data:`HUB_VALIDATION_FRACTION`), the rest is ``train``.
``nq_open``
    Hugging Face ``google-research-datasets/nq_open`` (``question``, ``answer`` list), split the same
    way (NQ-Open has no ids: the carve hashes the question text; ids are ``nq_open-<split>-<row>``).
``triviaqa:train=PATH,validation=PATH`` / ``nq_open:...`` (or ``data_files={"train": PATH, ...}``)
    The same datasets read from local files with the Hub schema (e.g. parquet files downloaded
    elsewhere); keys are the *Hub's* split names. No network is needed.
``PATH.jsonl`` / ``.json`` (a list of objects) / ``.csv`` / ``.parquet``
    Your own questions. Columns: ``question_column`` (default ``question``) and ``answers_column``
    (default ``answers``: a list, a JSON-encoded list string, or a single string); optional ``id``
    (default ``<file stem>-<row>``), ``split`` (default: assigned ~60/20/20 by a seeded hash of the
    entity), ``entity`` (default: the question), ``relation`` (default: the file stem), ``source``
    (default: the file name) and ``fabricated`` (default false; fabricated rows must have no answers).

Hub datasets are read with ``datasets.load_dataset``, which works offline only when the dataset is in
the local cache; otherwise an :class:`~editor.errors.InputError` says so and how to use a local file.

``limit`` keeps the first N questions, in file order, of the requested split (no shuffling), so the same
call always returns the same questions. Every problem with the input raises one ``InputError`` naming
the file (and line or row) and what was expected: missing file, missing columns, empty answers for a
real question, non-UTF-8 bytes, duplicate ids, no rows.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..artifacts import canonical_json, sha256_bytes, sha256_file
from ..errors import InputError
from ..paths import EVAL_DIR

__all__ = [
    "Question",
    "SPLITS",
    "HELDOUT_SPLIT",
    "BUNDLED_DIR",
    "BUNDLED_SETS",
    "HUB_DATASETS",
    "HUB_VALIDATION_FRACTION",
    "load_questions",
    "dataset_fingerprint",
    "read_rows",
    "rows_from_triviaqa",
    "rows_from_nq_open",
    "rows_from_table",
]

SPLITS = ("train", "validation", "test")
BUNDLED_DIR = EVAL_DIR / "data"
BUNDLED_SETS = ("facts", "nonexist", "diverse")
HELDOUT_SPLIT = "heldout"  # whole question families held out of training (bundled sets that have them)
BUNDLED_HELDOUT = ("diverse",)
BUNDLED_BUILDERS = {"facts": "facts", "nonexist": "facts", "diverse": "diverse"}  # editor.data.build.<module>
FILE_SPLIT_FRACTIONS = (0.6, 0.2)  # files without a split column: train, validation (test = the rest)
HUB_VALIDATION_FRACTION = 0.1  # share of the Hub's train split carved out as our validation split
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Question:
    """One question (fields as in docs/ARTIFACTS.md, "Question sets")."""

    id: str
    question: str
    answers: tuple[str, ...]
    source: str
    relation: str
    entity: str
    split: str
    fabricated: bool = False

    def to_dict(self) -> dict:
        record = asdict(self)
        record["answers"] = list(self.answers)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Question":
        return cls(
            id=str(record["id"]),
            question=str(record["question"]),
            answers=tuple(record["answers"]),
            source=str(record["source"]),
            relation=str(record["relation"]),
            entity=str(record["entity"]),
            split=str(record["split"]),
            fabricated=bool(record.get("fabricated", False)),
        )


@dataclass(frozen=True)
class _Located:
    """A question and where it came from (for error messages)."""

    question: Question
    where: str  # "path:line 12" / "path:row 3" / "mandarjoshi/trivia_qa[train] row 5"


# ============================================================================================ helpers
def _split_by_hash(key: str, seed: int, fractions: tuple[float, ...]) -> int:
    """Deterministic bucket of ``key``: index of the first cumulative fraction above its hash in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = 0.0
    for i, fraction in enumerate(fractions):
        total += fraction
        if u < total:
            return i
    return len(fractions)


def _file_split(key: str, seed: int) -> str:
    return SPLITS[_split_by_hash(key, seed, FILE_SPLIT_FRACTIONS)]


def _hub_split(hf_split: str, key: str, seed: int, where: str) -> str:
    """Hub split -> ours: validation -> test; train -> train, or validation for a hashed share."""
    if hf_split == "validation":
        return "test"
    if hf_split == "train":
        return "validation" if _split_by_hash(key, seed, (HUB_VALIDATION_FRACTION,)) == 0 else "train"
    raise InputError(f"{where}: unsupported split {hf_split!r}; expected 'train' or 'validation' (Hub names)")


def _parse_answers(value: Any, where: str, column: str) -> tuple[str, ...]:
    """A list, a JSON-encoded list string, or one string -> tuple of non-empty strings."""
    if value is None or (isinstance(value, float) and value != value):  # None / NaN (empty CSV or parquet cell)
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{where}: column {column!r} looks like a JSON list but is not valid JSON ({exc.msg})"
                ) from None
        else:
            value = [text]
    if hasattr(value, "tolist"):  # numpy / pyarrow arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(
            f"{where}: column {column!r} must be a list of strings or a string, got {type(value).__name__}"
        )
    answers = []
    for alias in value:
        if not isinstance(alias, (str, int, float)):
            raise InputError(f"{where}: column {column!r} holds a {type(alias).__name__}; expected strings")
        alias = str(alias).strip()
        if alias and alias not in answers:
            answers.append(alias)
    return tuple(answers)


def _parse_bool(value: Any, where: str, column: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", ""):
        return value.strip().lower() in ("true", "1", "yes")
    raise InputError(f"{where}: column {column!r} must be true or false, got {value!r}")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value).strip()


# ============================================================================================= readers
def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte offset {exc.start}); "
            "save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def _read_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(_decode(path.read_bytes(), path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of objects, got a {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise InputError(f"{path}: item {number} is a {type(record).__name__}; expected an object")
        yield f"{path}:item {number}", record


def _read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    text = _decode(path.read_bytes(), path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for number, record in enumerate(reader, start=1):
        yield f"{path}:row {number}", record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: cannot be read as parquet ({exc})") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {number}", record


_READERS: dict[str, Callable[[Path], Iterator[tuple[str, dict]]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_rows(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """``(where, row)`` pairs of a local .jsonl/.json/.csv/.parquet file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"question file not found: {path}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        expected = ", ".join(SUPPORTED_SUFFIXES)
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; expected one of {expected}")
    rows = list(reader(path))
    if not rows:
        raise InputError(f"{path}: the file has no rows")
    return rows


def _require(row: Mapping, columns: Iterable[str], where: str) -> None:
    missing = [c for c in columns if c not in row]
    if missing:
        present = ", ".join(repr(k) for k in row) or "none"
        raise InputError(f"{where}: missing column(s) {', '.join(map(repr, missing))}; columns present: {present}")


# ========================================================================================== converters
def rows_from_table(
    rows: Iterable[tuple[str, Mapping]],
    *,
    name: str,
    question_column: str = "question",
    answers_column: str = "answers",
    seed: int = 0,
    splits: tuple[str, ...] = SPLITS,
) -> Iterator[_Located]:
    """Rows of a generic question file (module docstring) -> questions. ``name`` is the file's name; ``splits``
    are the split names its rows may have."""
    stem = Path(name).stem
    for index, (where, row) in enumerate(rows):
        _require(row, [question_column, answers_column], where)
        question = _text(row[question_column])
        if not question:
            raise InputError(f"{where}: column {question_column!r} is empty")
        fabricated = _parse_bool(row.get("fabricated"), where, "fabricated")
        answers = _parse_answers(row[answers_column], where, answers_column)
        entity = _text(row.get("entity")) or question
        split = _text(row.get("split")) or _file_split(entity, seed)
        if split not in splits:
            raise InputError(f"{where}: split {split!r} is not one of {', '.join(splits)}")
        yield _Located(
            Question(
                id=_text(row.get("id")) or f"{stem}-{index:06d}",
                question=question,
                answers=answers,
                source=_text(row.get("source")) or Path(name).name,
                relation=_text(row.get("relation")) or stem,
                entity=entity,
                split=split,
                fabricated=fabricated,
            ),
            where,
        )


def rows_from_triviaqa(rows: Iterable[tuple[str, Mapping]], hf_split: str, *, seed: int = 0) -> Iterator[_Located]:
    """TriviaQA rows (``question_id``, ``question``, ``answer: {value, aliases, normalized_aliases}``)."""
    for where, row in rows:
        _require(row, ["question_id", "question", "answer"], where)
        answer = row["answer"]
        if isinstance(answer, str):  # a CSV export holds the struct as JSON text
            try:
                answer = json.loads(answer)
            except json.JSONDecodeError:
                raise InputError(f"{where}: column 'answer' must be an object with 'aliases'; got text") from None
        if not isinstance(answer, Mapping):
            raise InputError(f"{where}: column 'answer' must be an object with 'aliases', got {type(answer).__name__}")
        _require(answer, ["aliases"], f"{where} (inside 'answer')")
        values = [answer.get("value"), *(answer.get("aliases") or []), *(answer.get("normalized_aliases") or [])]
        question_id = _text(row["question_id"])
        yield _Located(
            Question(
                id=question_id,
                question=_text(row["question"]),
                answers=_parse_answers([v for v in values if v is not None], where, "answer"),
                source="triviaqa",
                relation="triviaqa",
                entity=question_id,
                split=_hub_split(hf_split, question_id, seed, where),
            ),
            where,
        )


def rows_from_nq_open(rows: Iterable[tuple[str, Mapping]], hf_split: str, *, seed: int = 0) -> Iterator[_Located]:
    """NQ-Open rows (``question``, ``answer``: list of strings). Ids are ``nq_open-<hub split>-<row>``;
    the question text is the entity (duplicated questions land in the same split)."""
    for index, (where, row) in enumerate(rows):
        _require(row, ["question", "answer"], where)
        question = _text(row["question"])
        yield _Located(
            Question(
                id=f"nq_open-{hf_split}-{index:06d}",
                question=question,
                answers=_parse_answers(row["answer"], where, "answer"),
                source="nq_open",
                relation="nq_open",
                entity=question,
                split=_hub_split(hf_split, " ".join(question.lower().split()), seed, where),
            ),
            where,
        )


@dataclass(frozen=True)
class HubDataset:
    repo: str
    config: str
    converter: Callable[..., Iterator[_Located]]

    def hub_splits(self, split: str | None) -> list[str]:
        """The Hub splits that hold our ``split`` (validation -> our test; train -> our train + validation)."""
        if split is None:
            return ["train", "validation"]
        return ["validation"] if split == "test" else ["train"]


HUB_DATASETS = {
    "triviaqa": HubDataset("mandarjoshi/trivia_qa", "rc.nocontext", rows_from_triviaqa),
    "nq_open": HubDataset("google-research-datasets/nq_open", "nq_open", rows_from_nq_open),
}


# ============================================================================================== specs
def _offline_message(name: str, dataset: HubDataset, exc: BaseException) -> str:
    return (
        f"dataset {name!r} ({dataset.repo}, config {dataset.config}) could not be loaded: {exc}. "
        "It needs Hugging Face Hub access the first time (or a copy in the local datasets cache). "
        f"Without the Hub, download its files elsewhere and pass them as '{name}:train=PATH,validation=PATH' "
        "(parquet or jsonl with the Hub's columns), or use your own .jsonl/.csv/.parquet question file."
    )


def _hub_rows(name: str, dataset: HubDataset, hf_split: str) -> Iterator[tuple[str, dict]]:
    try:
        import datasets

        loaded = datasets.load_dataset(dataset.repo, dataset.config, split=hf_split)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as exc:
        raise InputError(_offline_message(name, dataset, exc)) from None
    for number, row in enumerate(loaded, start=1):
        yield f"{dataset.repo}[{hf_split}] row {number}", row


def _parse_data_files(name: str, text: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, path = part.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise InputError(f"dataset spec '{name}:{text}': expected SPLIT=PATH pairs separated by commas")
        files[key.strip()] = path.strip()
    return files


def _parse_spec(spec: str, data_files: Mapping[str, str] | None) -> tuple[str, str, dict[str, str] | None]:
    """-> (kind, name, data_files): kind is 'bundled', 'hub' or 'file'."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"dataset spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    head, sep, tail = spec.partition(":")
    if head == "bundled":
        if tail not in BUNDLED_SETS:
            available = ", ".join("bundled:" + s for s in BUNDLED_SETS)
            raise InputError(f"unknown bundled set {tail!r}; available: {available}")
        return "bundled", tail, None
    if head in HUB_DATASETS:
        files = dict(data_files or {})
        if sep:
            files.update(_parse_data_files(head, tail))
        for key in files:
            if key not in ("train", "validation"):
                raise InputError(
                    f"dataset {head!r}: data file key {key!r} must be 'train' or 'validation' (the Hub's split names)"
                )
        return "hub", head, files or None
    if data_files:
        raise InputError(f"data_files only applies to {', '.join(HUB_DATASETS)}; spec {spec!r} is a file")
    return "file", spec, None


def _bundled_splits(name: str) -> tuple[str, ...]:
    """Every split a bundled set has (its files): train/validation/test, and heldout for some."""
    return (*SPLITS, HELDOUT_SPLIT) if name in BUNDLED_HELDOUT else SPLITS


def _bundled_paths(name: str, splits: Iterable[str]) -> list[Path]:
    paths = [BUNDLED_DIR / f"{name}_{split}.jsonl" for split in splits]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(
            f"bundled question file not found: {missing[0]}; rebuild with "
            f"`python -m editor.data.build.{BUNDLED_BUILDERS.get(name, 'facts')} --out {BUNDLED_DIR}`"
        )
    return paths


def _collect(spec: str, split: str | None, question_column: str, answers_column: str, seed: int,
             data_files: Mapping[str, str] | None) -> list[_Located]:
    kind, name, files = _parse_spec(spec, data_files)
    if kind == "bundled":
        located: list[_Located] = []
        for path in _bundled_paths(name, [split] if split else SPLITS):
            located += rows_from_table(read_rows(path), name=path.name, seed=seed, splits=_bundled_splits(name))
        return located
    if kind == "hub":
        dataset = HUB_DATASETS[name]
        needed = dataset.hub_splits(split)
        if files is not None and not any(s in files for s in needed):
            raise InputError(
                f"dataset {name!r}: our split {split or 'all'!r} comes from the Hub split(s) {', '.join(needed)}, "
                f"but data files were given only for {', '.join(files)}"
            )
        located = []
        for hf_split in needed:
            if files is None:
                rows: Iterable[tuple[str, dict]] = _hub_rows(name, dataset, hf_split)
            elif hf_split in files:
                rows = read_rows(files[hf_split])
            else:
                continue  # only some Hub splits were given as files
            located += dataset.converter(rows, hf_split, seed=seed)
        return located
    path = Path(name)
    return list(rows_from_table(read_rows(path), name=path.name, question_column=question_column,
                                answers_column=answers_column, seed=seed))


def _validate(located: list[_Located], spec: str) -> None:
    first_seen: dict[str, str] = {}
    for item in located:
        q = item.question
        if not q.question:
            raise InputError(f"{item.where}: the question text is empty")
        if q.fabricated and q.answers:
            raise InputError(f"{item.where}: question {q.id!r} is fabricated but has answers; fabricated questions have none")
        if not q.fabricated and not q.answers:
            raise InputError(f"{item.where}: question {q.id!r} has no answers (only fabricated questions may have none)")
        if q.id in first_seen:
            raise InputError(
                f"{item.where}: duplicate id {q.id!r} (first at {first_seen[q.id]}); ids must be unique in {spec!r}"
            )
        first_seen[q.id] = item.where


def load_questions(
    spec: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    question_column: str = "question",
    answers_column: str = "answers",
    seed: int = 0,
    data_files: Mapping[str, str] | None = None,
) -> list[Question]:
    """Load a question set (specs in the module docstring).

    ``split``: ``train``/``validation``/``test`` or None for all three; ``heldout`` (the held-out families)
    for the bundled sets that have one (``bundled:diverse``), never included in None. ``limit``: the first N
    questions of the split in file order. ``seed`` only affects split assignment where the data has no split
    (files without a ``split`` column, the validation carve of Hub train splits). ``data_files`` maps the Hub's split
    names to local files for ``triviaqa``/``nq_open``.
    """
    if split == HELDOUT_SPLIT:
        kind, name, _ = _parse_spec(spec, data_files)
        if kind != "bundled" or name not in BUNDLED_HELDOUT:
            with_heldout = ", ".join("bundled:" + s for s in BUNDLED_HELDOUT)
            raise InputError(f"split {HELDOUT_SPLIT!r} exists only for {with_heldout}, not for {spec!r}")
    elif split is not None and split not in SPLITS:
        raise InputError(f"split {split!r} is not one of {', '.join((*SPLITS, HELDOUT_SPLIT))}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    located = _collect(spec, split, question_column, answers_column, seed, data_files)
    _validate(located, spec)
    if not located:
        raise InputError(f"dataset {spec!r}: no rows")
    questions = [item.question for item in located if split is None or item.question.split == split]
    if not questions:
        counts = {s: sum(item.question.split == s for item in located) for s in SPLITS}
        raise InputError(f"dataset {spec!r}: no questions in split {split!r} (questions per split: {counts})")
    return questions[:limit] if limit is not None else questions


def dataset_fingerprint(spec: str, *, data_files: Mapping[str, str] | None = None) -> str:
    """sha256 identifying the data behind ``spec``: of the file (local), of the files' hashes (bundled,
    local Hub-format files), or of the Hub id + config + resolved revision (Hub datasets, from the cache
    when offline)."""
    kind, name, files = _parse_spec(spec, data_files)
    if kind == "bundled":
        paths = _bundled_paths(name, _bundled_splits(name))
        return sha256_bytes("".join(f"{p.name}\0{sha256_file(p)}\n" for p in paths).encode())
    if kind == "file":
        path = Path(name)
        if not path.is_file():
            raise InputError(f"question file not found: {path}")
        return sha256_file(path)
    if files:
        for path in files.values():
            if not Path(path).is_file():
                raise InputError(f"question file not found: {path}")
        return sha256_bytes("".join(f"{k}\0{sha256_file(p)}\n" for k, p in sorted(files.items())).encode())
    dataset = HUB_DATASETS[name]
    try:
        import datasets

        revision = datasets.load_dataset_builder(dataset.repo, dataset.config).hash
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as exc:
        raise InputError(_offline_message(name, dataset, exc)) from None
    identity = {"hub": dataset.repo, "config": dataset.config, "revision": revision}
    return sha256_bytes(canonical_json(identity).encode())


@functools.lru_cache(maxsize=None)
def answer_vocabulary(relation: str) -> tuple[tuple[str, ...], ...]:
    """Every answer (its aliases) the bundled facts of ``relation`` have, in every split: what a model could
    switch to when it gives up a correct answer (:func:`editor.data.behaviour.judge_flip`)."""
    answers: dict[str, tuple[str, ...]] = {}
    for path in _bundled_paths("facts", ("train", "validation", "test")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["relation"] == relation:
                answers.setdefault(row["answers"][0], tuple(row["answers"]))
    return tuple(answers.values())
