"""Training data of the abstention edit, from a finished collect folder (docs/METHOD.md section 6, "The trained
abstention edit").

Per question of the ``train`` and ``validation`` splits (the ``test`` and ``heldout`` splits are never read):

* consistently wrong (``consistency`` wrong): target = the abstention sentence, weight 1;
* consistently right (correct): target = the model's own representative answer (the most frequent of its
  consistent samples, token for token as collect recorded it), weight 1, so the edit keeps what the model knows;
* mixed: target = the abstention sentence with weight ``mixed_weight`` (left out at 0, the default);
* uncertain (refusals, hedges, truncated samples): left out.

With ``balanced`` (the default) only the questions collect's class balancing selected are used (as many right
as wrong per split); otherwise every consistent one. Fabricated-entity questions follow the same rule (right =
the model refused, wrong = it made something up).

Prompts are rebuilt exactly as collect built them (:func:`editor.data.prompting.build_prompt` with the prompt
settings collect.json records) and must equal the prompt tokens collect stored with each representative answer,
else the tokenizer differs from collect's and nothing is trained. A target is its content tokens followed by
the end of the answer, found by rendering one assistant turn with the chat template (the first end-of-turn
token after the content; base prompting: the newline that ends an answer), so the edited model stops after
the sentence as after its own answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import sha256_file, sha256_json
from ..collect.stage import load_responses
from ..data.prompting import (
    BASE_TEMPLATE,
    DEFAULT_INSTRUCTION,
    PromptStyle,
    as_ids,
    build_prompt,
    stop_token_ids,
)
from ..errors import InputError, ModelMismatchError
from ..formats import RESPONSES
from ..model.loading import LoadedModel
from .settings import AbstainSettings

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class Example:
    """One training or validation question: prompt ids, target ids (answer tokens only enter the loss)."""

    id: str
    split: str
    prompt: tuple[int, ...]
    target: tuple[int, ...]
    kind: str  # "abstain" | "answer"
    weight: float
    consistency: str  # "correct" | "wrong" | "mixed"

    @property
    def base_wrong(self) -> int | None:
        """1: the model answered it consistently wrong; 0: consistently right; None: mixed."""
        return {"wrong": 1, "correct": 0}.get(self.consistency)

    def record(self) -> list:
        return [self.id, self.split, list(self.prompt), list(self.target), self.kind, self.weight]


@dataclass
class TrainingData:
    train: list[Example]
    validation: list[Example]
    abstain_target: tuple[int, ...]  # content + end of answer
    end_of_answer: tuple[int, ...]
    style: PromptStyle
    chat: bool
    targets_from: str  # how the end of an answer was found: "chat template", "base template" or "fallback"
    source: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        return self.train if name == "train" else self.validation

    def record(self) -> dict[str, Any]:
        """What the manifest says about the data (and the resume key hashes)."""
        counts = {}
        for name in SPLITS:
            examples = self.split(name)
            counts[name] = {"examples": len(examples),
                            "abstain": sum(e.kind == "abstain" for e in examples),
                            "answer": sum(e.kind == "answer" for e in examples),
                            "mixed": sum(e.consistency == "mixed" for e in examples),
                            "sha256": sha256_json([e.record() for e in examples])}
        return {**self.source, "prompt": {"chat": self.chat, "instruction": self.style.instruction,
                                          "system": self.style.system, "base_template": self.style.base_template},
                "abstain_target_ids": list(self.abstain_target), "end_of_answer_ids": list(self.end_of_answer),
                "targets_from": self.targets_from, "splits": counts}


def prompt_style_of(manifest: dict[str, Any]) -> PromptStyle:
    """The prompt settings collect.json records (``prompt``: chat, instruction, system, base_template)."""
    prompt = manifest.get("prompt") or {}
    instruction = prompt.get("instruction")
    return PromptStyle(chat=prompt.get("chat"), instruction=DEFAULT_INSTRUCTION if instruction is None else instruction,
                       system=prompt.get("system"), base_template=prompt.get("base_template") or BASE_TEMPLATE)


def answer_tokens(tokenizer: Any, style: PromptStyle, text: str, stops: set[int]) -> tuple[list[int], list[int], str]:
    """(content ids, end-of-answer ids, how) of ``text`` as the model's answer to a prompt of ``style``.

    Chat: one user turn and an assistant turn holding ``text`` rendered with the template, minus the prompt;
    the end is the first end-of-turn token after the content. Base prompting: ``" " + text + "\\n"`` after the
    prompt; the end is the token that brings the newline. Where the rendering does not extend the prompt (an
    unusual template), the text's own tokens and the tokenizer's EOS."""
    question = "Q"
    prompt = build_prompt(tokenizer, question, style)
    if style.uses_chat(tokenizer):
        content = f"{question} {style.instruction}".strip() if style.instruction else question
        messages = ([{"role": "system", "content": style.system}] if style.system else []) + [
            {"role": "user", "content": content}, {"role": "assistant", "content": text}]
        full = as_ids(tokenizer.apply_chat_template(messages, tokenize=True))
        if full[:len(prompt.input_ids)] == prompt.input_ids:
            rest = full[len(prompt.input_ids):]
            for i, token in enumerate(rest):
                if token in stops:
                    if i:
                        return rest[:i], [token], "chat template"
                    break
    else:
        full = as_ids(tokenizer(prompt.text + " " + text + "\n", add_special_tokens=True)["input_ids"])
        if full[:len(prompt.input_ids)] == prompt.input_ids:
            rest = full[len(prompt.input_ids):]
            for i in range(1, len(rest)):
                if "\n" in tokenizer.decode(rest[i:i + 1]):
                    return rest[:i], rest[i:i + 1], "base template"
    if tokenizer.eos_token_id is None:
        raise InputError("cannot find how an answer ends: the chat template does not extend the prompt and the "
                         "tokenizer has no EOS token")
    own = as_ids(tokenizer(text, add_special_tokens=False)["input_ids"])
    return own, [int(tokenizer.eos_token_id)], "fallback"


def check_model(manifest: dict[str, Any], lm: LoadedModel, folder: Path, force: bool) -> dict[str, Any] | None:
    """The answers must be this model's own: same architecture, same weights unless ``force``."""
    recorded = manifest.get("model") or {}
    if recorded.get("architecture_hash") and recorded["architecture_hash"] != lm.architecture_hash:
        raise ModelMismatchError(f"{folder} holds the answers of a {recorded.get('model_type', '?')} model with another "
                                 f"architecture (hash {recorded['architecture_hash']}, the model given: "
                                 f"{lm.architecture_hash}): train on answers collected from this model")
    fingerprint = recorded.get("weights_fingerprint")
    if fingerprint and fingerprint != lm.fingerprint:
        if not force:
            raise ModelMismatchError(f"{folder} holds answers of other weights (fingerprint {fingerprint}) than the "
                                     f"model given ({lm.fingerprint}); the edit is meant to learn what this model "
                                     f"knows: collect its own answers, or pass --force")
        return {"artifact": str(folder), "recorded": {"spec": (recorded.get("source") or {}).get("spec"),
                                                      "weights_fingerprint": fingerprint},
                "model": {"spec": lm.source.spec, "weights_fingerprint": lm.fingerprint}}
    return None


def load_training_data(folder: str | Path, lm: LoadedModel, settings: AbstainSettings, *,
                       force: bool = False) -> tuple[TrainingData, dict[str, Any] | None]:
    """The train and validation examples of a collect folder (module docstring); also what ``force`` accepted."""
    folder = Path(folder)
    records, manifest = load_responses(folder)
    accepted = check_model(manifest, lm, folder, force)
    tok = lm.tokenizer
    style = prompt_style_of(manifest)
    chat = style.uses_chat(tok)
    stops = set(stop_token_ids(tok, getattr(lm.model, "generation_config", None)))
    content, end, how = answer_tokens(tok, style, settings.abstain_text, stops)
    abstain = tuple(content + end)
    examples: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for number, record in enumerate(records, 1):
        split, consistency = record.get("split"), record.get("consistency")
        if split not in SPLITS:
            continue
        if consistency in ("correct", "wrong"):
            if settings.balanced and not record.get("selected"):
                continue
            weight = 1.0
        elif consistency == "mixed" and settings.mixed_weight > 0:
            weight = float(settings.mixed_weight)
        else:
            continue
        where = f"{folder / RESPONSES} line {number} (id {record.get('id')!r})"
        prompt = _prompt_ids(tok, record, style, where)
        if consistency == "correct":
            rep = record.get("representative")
            if not rep:
                raise InputError(f"{where}: a consistently right question without its representative answer")
            answer = list(rep["input_ids"][rep.get("response_start", rep["prompt_len"]):
                                          rep.get("response_end", len(rep["input_ids"]))])
            if not answer:
                continue
            if answer[-len(end):] != end:
                answer += end
            examples[split].append(Example(str(record["id"]), split, prompt, tuple(answer), "answer", weight,
                                           consistency))
        else:
            examples[split].append(Example(str(record["id"]), split, prompt, abstain, "abstain", weight, consistency))
    train = examples["train"]
    if not any(e.kind == "abstain" for e in train):
        raise InputError(f"{folder} has no train question the model answers wrong (consistently, "
                         f"{'selected by class balancing' if settings.balanced else 'or mixed with --mixed-weight'}): "
                         f"there is no abstention to learn")
    source = {"collect_folder": str(folder.resolve()), "responses_sha256": sha256_file(folder / RESPONSES),
              "collect_model": manifest.get("model"), "balanced": settings.balanced,
              "mixed_weight": settings.mixed_weight}
    data = TrainingData(train, examples["validation"], abstain, tuple(end), style, chat, how, source)
    return data, accepted


def _prompt_ids(tok: Any, record: dict[str, Any], style: PromptStyle, where: str) -> tuple[int, ...]:
    """The prompt as collect built it: rebuilt from the question and checked against the stored tokens."""
    rep = record.get("representative")
    stored = list(rep["input_ids"][:rep["prompt_len"]]) if rep else None
    question = record.get("question")
    if question is None:
        if stored is None:
            raise InputError(f"{where}: no question text and no stored prompt tokens")
        return tuple(stored)
    built = build_prompt(tok, question, style).input_ids
    if stored is not None and built != stored:
        raise InputError(f"{where}: the prompt rebuilt with this tokenizer and collect's prompt settings differs from "
                         f"the tokens collect stored: the tokenizer (or its chat template) is not the one collect used")
    return tuple(built)
