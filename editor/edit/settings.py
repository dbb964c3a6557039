"""The edit stage's settings: the recipe's ``edit`` section, the argument of :func:`editor.edit.stage.edit_model`
and the flags of ``hneurons edit``. The dtype an edit is written in is the model's loading dtype
(:class:`~editor.model.loading.LoadOptions`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..options import Cli, Settings

MODES = ("weights", "ia3", "lora", "gguf", "abstain")
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
Mode = Literal["weights", "ia3", "lora", "gguf", "abstain"]


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
                                 "--out is a parent folder holding model/, adapter-ia3/, adapter-lora/, gguf/; abstain "
                                 "(alone, with --responses): train the neurons' own weights to answer 'I don't know' "
                                 "where the model answers wrong (the abstain training options below)")
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
        if "abstain" in value and len(value) > 1:
            raise ValueError("mode abstain trains its own edit and writes its own forms (abstain's forms setting): "
                             "give it alone")
        return value


# ============================================================================================= abstain
ABSTAIN_TEXT = "I don't know."
TRAIN_PARTS = ("gate", "up", "down")
TrainPart = Literal["gate", "up", "down"]
AbstainForm = Literal["weights", "lora"]
StrengthRule = Literal["loss", "selectivity"]
AbstainParams = Literal["neurons", "lora"]


class AbstainSettings(Settings):
    """How the abstention edit (``--mode abstain``, :mod:`editor.edit.abstain`) is trained: its data, the
    parameters it may change (only the neuron set's own), the objective, the budget and the forms it is written
    in. The recipe's ``abstain`` section; ``hneurons edit --mode abstain`` flags."""

    abstain_text: str = Field(
        ABSTAIN_TEXT, min_length=1,
        description="the abstention sentence: the target of the train questions the model answers consistently wrong")
    train: Annotated[list[TrainPart], Cli(many="comma", metavar="PARTS")] = Field(
        ["down"], description="what is trained of each neuron, comma-separated: down (its W_down column; Conv1D: "
                              "row), up, gate (its W_up / W_gate row); everything else stays frozen")
    epochs: int = Field(8, ge=1, description="most passes over the training questions")
    lr: float = Field(2e-2, gt=0, description="Adam learning rate")
    batch_size: int = Field(8, ge=1, description="training questions per step")
    seed: int = Field(0, description="shuffling seed: the same seed, data and machine give the same edit")
    kl_weight: float = Field(
        1.0, ge=0, description="weight of the KL(base || edited) penalty on neutral prompts (0: no penalty)")
    kl_batch_size: int = Field(4, ge=1, description="neutral prompts per training step (the KL term)")
    kl_prompts: Annotated[str | None, Cli(metavar="FILE")] = Field(
        None, description="neutral prompts of the KL term: JSONL with a prompt field, or one prompt per line "
                          "(default: the bundled eval/data/neutral_prompts.jsonl)")
    kl_max_prompts: int = Field(50, ge=1, description="use at most this many neutral prompts (the first ones)")
    mixed_weight: float = Field(
        0.0, ge=0, description="weight of the mixed questions (right in some samples, wrong in others) as extra "
                               "abstention targets; 0 leaves them out")
    balanced: Annotated[bool, Cli(flag="--all-consistent", negate=True)] = Field(
        True, description="train on every consistently answered question, not only on collect's class-balanced "
                          "selection")
    patience: int = Field(
        2, ge=0, description="early stopping: stop after this many epochs without a lower validation loss (0: "
                             "train every epoch); the best epoch is kept")
    strengths: Annotated[list[float], Cli(many="comma", metavar="S,...")] = Field(
        [0.5, 0.75, 1.0, 1.25, 1.5], min_length=1,
        description="scale factors of the learned change tried on the validation split")
    strength_rule: StrengthRule = Field(
        "loss", description="how the strength is chosen on validation: loss (the training objective, lowest) or "
                            "selectivity (abstention rate on the wrong questions minus on the right ones, highest)")
    forms: Annotated[list[AbstainForm], Cli(flag="--form", many="comma", metavar="FORMS")] = Field(
        ["weights", "lora"], description="what is written, comma-separated: weights (a patched checkpoint in "
                                         "DIR/model) and lora (the exact LoRA adapter in DIR/adapter-lora); the "
                                         "LoRA baseline (--abstain-params lora) writes its adapter only")
    params: Annotated[AbstainParams, Cli(flag="--abstain-params", metavar="WHAT")] = Field(
        "neurons", description="what is trained: neurons (the neuron set's own columns / rows, the edit) or lora (the "
                               "baseline a user would pick instead: a standard LoRA on every layer's down-projection, "
                               "A kaiming-uniform and B = 0 as PEFT initialises it, of the rank whose parameter count "
                               "is closest to the neuron edit's; same data, objective, budget, early stopping and "
                               "strength choice)")
    lora_rank: Annotated[int | None, Cli(metavar="N")] = Field(
        None, ge=1, description="--abstain-params lora: the LoRA rank (default: the rank whose parameter count "
                                "r x (d_ff + d_model) x layers is closest to the neuron edit's, at least 1)")
    neuron_set: Annotated[str | None, Cli(hidden=True)] = Field(
        None, description="recipes only: train the set of this name along locate's regularisation path "
                          "(neurons_path.json, e.g. x5 or x10) instead of locate's chosen neurons.json (on the "
                          "command line give --neurons LOCATE/neurons_path.json#x5)")
    random_seed: Annotated[int | None, Cli(flag="--random-control", metavar="SEED")] = Field(
        None, description="train the random control instead of the given neurons: the set matched per layer (as "
                          "many neurons in each layer, none of the given ones) drawn with SEED, as eval draws its "
                          "controls (editor.model.neuron_set.matched_random_pairs); recorded in the manifest")

    @field_validator("train", "forms")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give at least one value, each at most once")
        return value

    @model_validator(mode="after")
    def _baseline(self):
        if self.params == "lora" and self.random_seed is not None:
            raise ValueError("random_seed (--random-control) draws a random neuron set; the LoRA baseline "
                             "(params lora) trains no neuron set: give one of the two")
        if self.lora_rank is not None and self.params != "lora":
            raise ValueError("lora_rank (--lora-rank) belongs to the LoRA baseline (params lora, --abstain-params lora)")
        return self

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, value: list[float]) -> list[float]:
        for s in value:
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"strengths must be finite and > 0, got {s}")
        if len(set(value)) != len(value):
            raise ValueError("a strength is given twice")
        return value
