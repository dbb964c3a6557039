"""The edit stage's settings: the recipe's ``edit`` section, the argument of :func:`editor.edit.stage.edit_model`
and the flags of ``hneurons edit``. The dtype an edit is written in is the model's loading dtype
(:class:`~editor.model.loading.LoadOptions`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ..options import Cli, Settings

MODES = ("weights", "ia3", "lora", "gguf")
# How the rewritten down-projections of a GGUF edit are stored (editor/edit/gguf.py): auto picks the most
# compact that passes verification; "source" keeps each tensor's own type.
GGUF_TYPES = ("auto", "source", "Q8_0", "F16", "F32")
# A fixed, varied set of short texts: enough positions to exercise every layer, quick on any model.
VERIFY_PROMPTS = (
    "The capital of France is",
    "Question: What is the chemical symbol of gold?\nAnswer:",
    "I don't know the answer, but I think it might be",
    "Once upon a time, in a small village by the sea, there lived",
)
Mode = Literal["weights", "ia3", "lora", "gguf"]


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
                                 "adapters), gguf (one GGUF file for llama.cpp / Ollama / LM Studio); with several, "
                                 "--out is a parent folder holding model/, adapter-ia3/, adapter-lora/, gguf/")
    out_of_core: bool = Field(
        False, description="weights, ia3, lora: read the safetensors shards instead of loading the model (the "
                           "adapters read only the targeted down-projections); verified by streamed tensor checks")
    verify_logits: Annotated[bool, Cli(flag="--skip-logit-check", negate=True)] = Field(
        True, description="with --out-of-core: skip reloading the model to compare logits (the exact tensor check "
                          "still runs; it is skipped anyway when the float32 model would not fit in memory)")
    max_shard_size: str = Field(
        "5GB", description="largest safetensors shard written by the in-memory weights mode")
    gguf_type: Annotated[str, Cli(metavar="TYPE")] = Field(
        "auto", description="gguf mode: how the rewritten down-projections are stored: source (each keeps its type; "
                            "F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1), Q8_0, F16 or F32; auto: the most compact of "
                            "these that keeps the edit within tolerance, never below the source's precision")
    gguf_converter: Annotated[str | None, Cli(metavar="PATH")] = Field(
        None, description="gguf mode, safetensors sources: llama.cpp's convert_hf_to_gguf.py or a command running it "
                          "(default: llama-convert-hf-to-gguf or convert_hf_to_gguf.py on PATH)")
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

    @field_validator("gguf_type", mode="before")
    @classmethod
    def _gguf_type(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        name = value.lower() if value.lower() in ("auto", "source") else value.upper()
        if name not in GGUF_TYPES:
            raise ValueError(f"cannot write GGUF type {value!r}: expected one of {', '.join(GGUF_TYPES)} (K-quants "
                             f"such as Q4_K and Q6_K are read, but the gguf package cannot quantize them; a source "
                             f"stored in Q4_0/Q4_1/Q5_0/Q5_1/BF16 keeps its type with 'source')")
        return name

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
            raise ValueError("modes must list weights / ia3 / lora / gguf, each at most once")
        return value
