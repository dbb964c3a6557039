"""Settings of locate, origin and detect: the recipe's ``locate`` section, the arguments of
:func:`editor.locate.stage.locate`, :func:`editor.locate.origin.origin` and :class:`editor.locate.detect.Detector`,
and the flags of ``hneurons locate``, ``origin`` and ``detect`` (docs/METHOD.md sections 3-5 and 7)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ..model.batching import BatchSize
from ..options import Cli, Settings


class LocateSettings(Settings):
    """CETT features, the probe's labels and C path, the choice of C, and the report's controls."""

    labels: Literal["3v1", "1v1"] = Field(
        "3v1", description="3v1 (paper): hallucinated answer tokens vs faithful answer tokens and all other tokens; "
                           "1v1: hallucinated vs faithful answer tokens only")
    aggregate: Literal["mean", "max"] = Field("mean", description="CETT over a token span (paper: mean)")
    span: Literal["response", "answer"] = Field(
        "response", description="answer tokens: the whole response (the same for both classes and at detection "
                                "time) or narrowed to the gold alias where found (correct answers only)")
    C: Annotated[list[float] | None, Cli(many="nargs", metavar="C")] = Field(
        None, description="C values of the path (one value fixes C); default: an automatic log grid")
    n_C: Annotated[int, Cli(flag="--C-path", metavar="N")] = Field(
        24, ge=2, description="size of the automatic C grid")
    rule: Literal["sparsest_within", "best"] = Field(
        "sparsest_within", description="how C is chosen on validation AUROC: the sparsest C within --tol of the best, "
                                       "or the best")
    tol: float = Field(0.01, ge=0, description="AUROC tolerance of the sparsest_within rule")
    c_choice: Literal["pooled", "within_family"] = Field(
        "pooled", description="validation AUROC the rule reads: pooled over all validation responses, or within "
                              "family (only pairs of a wrong and a right answer to questions of the same family count, "
                              "so that C is chosen for the within-family signal; pooled where no family has both)")
    random_draws: int = Field(10, ge=1, description="random-neuron baselines")
    bootstrap: int = Field(1000, ge=1, description="bootstrap resamples of every CI")
    seed: int = Field(0, description="seed of the random draws and the bootstrap")
    batch_size: Annotated[BatchSize, Cli(metavar="N|auto")] = Field(
        8, description="responses per forward pass; auto: the largest batch that fits the free GPU memory (8 on the "
                       "CPU)")

    @field_validator("C")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(not (c > 0 and math.isfinite(c)) for c in value)):
            raise ValueError(f"C values must be positive finite numbers, got {value}")
        return value


class OriginSettings(Settings):
    """Backward transfer and parameter drift of the H-Neurons (base vs instruct model)."""

    random_draws: int | None = Field(
        None, ge=1, description="random-neuron classifiers (default: as many as locate drew, with its seeds)")
    seed: int | None = Field(None, description="seed of the random draws (default: locate's)")
    bootstrap: int = Field(1000, ge=1, description="bootstrap resamples of the AUROC CIs")
    batch_size: Annotated[BatchSize, Cli(metavar="N|auto")] = Field(
        8, description="responses per forward pass (base-model features); auto: from free GPU memory (8 on the CPU)")
    chunk_elements: Annotated[int, Cli(hidden=True)] = Field(
        1 << 22, ge=1, description="weight values per block read from a checkpoint (drift)")
    top: Annotated[int, Cli(hidden=True)] = Field(20, ge=0, description="most changed neurons listed in the report")


class DetectSettings(Settings):
    """Scoring answers with a located probe."""

    batch_size: Annotated[BatchSize, Cli(metavar="N|auto")] = Field(
        8, description="answers per batch (greedy answers and the teacher-forced pass); auto: from free GPU memory "
                       "(8 on the CPU)")
