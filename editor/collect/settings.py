"""The collect stage's settings: the recipe's ``collect`` section, the argument of :func:`editor.collect.stage.collect`
and the flags of ``hneurons collect`` (docs/METHOD.md section 1 for the paper's values)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import Field, ValidationInfo, field_validator

from ..data.prompting import DEFAULT_INSTRUCTION, PromptStyle
from ..data.questions import BUNDLED_HELDOUT, BUNDLED_SETS, HELDOUT_SPLIT, HUB_DATASETS
from ..errors import InputError
from ..model.batching import BatchSize
from ..options import Cli, Settings

SPLITS = ("train", "validation", "test")  # the default splits
ALL_SPLITS = (*SPLITS, HELDOUT_SPLIT)  # heldout: whole question families held out of training (bundled:diverse)
Split = Literal["train", "validation", "test", "heldout"]
# The sampling part of the settings, in the order collect.json records it (resume compares these records).
SAMPLING_FIELDS = ("samples", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "early_stop", "batch_size")


def has_heldout(spec: str) -> bool:
    """Whether the question source ``spec`` has a ``heldout`` split (the bundled sets that ship one)."""
    kind, _, name = spec.strip().partition(":")
    return kind == "bundled" and name in BUNDLED_HELDOUT


def heldout_problem(data: Sequence[str]) -> str | None:
    """Why ``heldout`` cannot be collected from the sources ``data`` (the ones without it, named), or None."""
    lacking = [spec for spec in data if not has_heldout(spec)]
    if not lacking:
        return None
    return (f"split {HELDOUT_SPLIT!r} (question families held out of training) exists only for "
            f"{', '.join('bundled:' + s for s in BUNDLED_HELDOUT)}; {', '.join(repr(s) for s in lacking)} "
            f"{'has' if len(lacking) == 1 else 'have'} no such split: leave {HELDOUT_SPLIT} out of the splits, or "
            f"collect {'that source' if len(lacking) == 1 else 'those sources'} separately")


def parse_limit(text: Any) -> int | dict[str, int] | None:
    """``300`` (every split) or ``train=600,validation=200`` (per split) -> int or dict."""
    if text is None or isinstance(text, (int, dict)):
        return text
    try:
        if "=" not in text:
            return int(text)
        return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in text.split(","))}
    except ValueError:
        raise InputError(f"--limit must be N or split=N,... (e.g. train=600,test=200), got {text}") from None


class CollectSettings(Settings):
    """Which questions are asked, how answers are sampled and how the prompt looks."""

    data: Annotated[list[str], Cli(many="repeat", metavar="SOURCE")] = Field(
        ["bundled:facts", "bundled:nonexist"],
        description="question source (repeatable): bundled:facts, bundled:nonexist, triviaqa, nq_open or a local "
                    ".jsonl/.json/.csv/.parquet file")
    splits: Annotated[list[Split], Cli(flag="--split", many="comma", metavar="SPLITS")] = Field(
        list(SPLITS), description="comma-separated splits to collect: train, validation, test, and heldout (the "
                                  "question families held out of training, for sources that have them: "
                                  "bundled:diverse)")
    limit: Annotated[int | dict[Split, int] | None, Cli(parse=parse_limit, metavar="N|SPLIT=N,...")] = Field(
        None, description="questions per split and source: N, or per split as train=600,validation=200,test=200 "
                          "(heldout=N too; a relation-balanced subset; default: all)")
    samples: int = Field(10, ge=1, description="sampled answers per question, k")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling threshold")
    top_k: int = Field(50, ge=0, description="top-k sampling (0: off)")
    max_new_tokens: int = Field(50, ge=1, description="longest answer in tokens")
    seed: int = Field(0, description="sampling and class-balancing seed (same seed, same samples)")
    early_stop: Annotated[bool, Cli(flag="--all-samples", negate=True)] = Field(
        True, description="draw all k samples even for questions that can no longer be consistent (no early stop)")
    batch_size: Annotated[BatchSize, Cli(metavar="N|auto")] = Field(
        32, description="questions per batch (and resume chunk); auto: the largest batch that fits the free GPU "
                        "memory (32 on the CPU)")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="generation engine: hf (transformers) or vllm (optional: needs `pip install vllm` and a "
                          "CUDA GPU; same prompts and settings, but its own random samples)")
    prompt_style: Literal["auto", "chat", "base"] = Field(
        "auto", description="chat template (chat), 'Question: ...\\nAnswer:' (base), or chat when the tokenizer has "
                            "a template (auto)")
    instruction: str | None = Field(
        None, description=f"answer-only instruction appended to each question (default: \"{DEFAULT_INSTRUCTION}\")")
    question_column: str = Field("question", description="question column of a local file")
    answers_column: str = Field("answers", description="answers column of a local file (a list or a string)")

    @field_validator("data")
    @classmethod
    def _known_sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one question source")
        for spec in value:
            kind, _, name = spec.partition(":")
            if kind == "bundled" and name not in BUNDLED_SETS:
                raise ValueError(f"unknown bundled set {name!r}; bundled sets: "
                                 f"{', '.join('bundled:' + s for s in BUNDLED_SETS)}")
            if kind != "bundled" and kind not in HUB_DATASETS and not Path(spec).suffix:
                raise ValueError(f"{spec!r} is not a bundled set, {', '.join(HUB_DATASETS)} or a data file")
        return value

    @field_validator("limit")
    @classmethod
    def _positive_limit(cls, value: Any) -> Any:
        counts = value.items() if isinstance(value, dict) else [(None, value)] if value is not None else []
        for _, count in counts:
            if count < 1:
                raise ValueError("question counts must be >= 1 (to leave a split out, leave it out of --split)")
        return value

    @field_validator("splits")
    @classmethod
    def _some_split(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value:
            raise ValueError(f"give at least one of {', '.join(ALL_SPLITS)}")
        problem = heldout_problem(info.data.get("data") or []) if HELDOUT_SPLIT in value else None
        if problem:
            raise ValueError(problem)
        return value

    def sampling_record(self) -> dict[str, Any]:
        """The sampling settings as collect.json records them."""
        return {name: getattr(self, name) for name in SAMPLING_FIELDS}

    def prompt(self) -> PromptStyle:
        return PromptStyle(chat={"auto": None, "chat": True, "base": False}[self.prompt_style],
                           instruction=DEFAULT_INSTRUCTION if self.instruction is None else self.instruction)
