"""The edit stage's settings: the recipe's ``edit`` section, the argument of :func:`editor.edit.stage.edit_model`
and the flags of ``hneurons edit``. The dtype an edit is written in is the model's loading dtype
(:class:`~editor.model.loading.LoadOptions`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..options import Cli, Settings

MODES = ("weights", "ia3", "lora")
# A fixed, varied set of short texts: enough positions to exercise every layer, quick on any model.
VERIFY_PROMPTS = (
    "The capital of France is",
    "Question: What is the chemical symbol of gold?\nAnswer:",
    "I don't know the answer, but I think it might be",
    "Once upon a time, in a small village by the sea, there lived",
)
Mode = Literal["weights", "ia3", "lora"]


def parse_layer_alphas(items: Any) -> dict[int, float]:
    """``["12=0", "20=0.5"]`` -> ``{12: 0.0, 20: 0.5}`` (values are range-checked by the neuron set)."""
    if isinstance(items, dict):
        return items
    out: dict[int, float] = {}
    for item in items:
        layer, sep, value = str(item).partition("=")
        try:
            if not sep:
                raise ValueError
            key, number = int(layer), float(value)
        except ValueError:
            raise ValueError(f"expected LAYER=ALPHA, e.g. 12=0.5, got {item}") from None
        if key in out:
            raise ValueError(f"layer {key} is given twice")
        out[key] = number
    return out


def _finite_alpha(value: float) -> bool:
    return math.isfinite(value) and value >= 0


class EditSettings(Settings):
    """How the neurons are scaled and in which forms the edit is written."""

    alpha: float | Literal["auto"] = Field(
        0.0, description="activation scale for every neuron (0 = full suppression; 1 = unchanged; >= 0); in a "
                         "recipe, auto = the alpha the sweep chose")
    layer_alpha: Annotated[dict[int, float], Cli(many="repeat", parse=parse_layer_alphas, metavar="L=A")] = Field(
        {}, description="alpha for the neurons of layer L (repeatable; per-neuron alphas in the file win)")
    modes: Annotated[list[Mode], Cli(flag="--mode", many="repeat", metavar="MODE")] = Field(
        ["weights"], description="what to write (repeatable): weights (patched checkpoint), ia3 or lora (exact PEFT "
                                 "adapters); with several, --out is a parent folder holding model/, adapter-ia3/, "
                                 "adapter-lora/")
    out_of_core: bool = Field(
        False, description="weights mode: stream the safetensors shards instead of loading the model")
    verify_logits: Annotated[bool, Cli(flag="--skip-logit-check", negate=True)] = Field(
        True, description="with --out-of-core: skip reloading the model to compare logits (the exact tensor check "
                          "still runs)")
    max_shard_size: str = Field(
        "5GB", description="largest safetensors shard written by the in-memory weights mode")
    verify_prompts: Annotated[list[str], Cli(flag="--verify-prompt", many="repeat", metavar="TEXT")] = Field(
        list(VERIFY_PROMPTS), min_length=1,
        description="prompts the written edit is verified on (repeatable; default: four short varied texts)")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, value: float | str) -> float | str:
        if value != "auto" and not _finite_alpha(float(value)):
            raise ValueError(f"alpha must be >= 0 and finite (or 'auto' in a recipe), got {value}")
        return value

    @field_validator("layer_alpha")
    @classmethod
    def _layer_alphas(cls, value: dict[int, float]) -> dict[int, float]:
        for layer, alpha in value.items():
            if not _finite_alpha(alpha):
                raise ValueError(f"alpha of layer {layer} must be >= 0 and finite, got {alpha}")
        return value

    @field_validator("modes", mode="before")
    @classmethod
    def _known_modes(cls, value: Any) -> Any:
        for mode in value if isinstance(value, list) else []:
            if mode not in MODES:
                raise ValueError(f"unknown edit mode {mode!r}; expected one of {', '.join(MODES)}")
        return value

    @field_validator("modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("modes must list weights / ia3 / lora, each at most once")
        return value
