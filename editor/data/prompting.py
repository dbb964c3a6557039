"""Prompts for factual questions, as the paper asks them (docs/METHOD.md section 1).

* Models with a chat template: one user turn, the question followed by an answer-only instruction
  (the authors append "Respond with the answer only, without any explanation."), rendered with the
  tokenizer's own chat template and a generation prompt.
* Base models (no chat template): ``Question: ...\\nAnswer:``; generation stops at the first newline.

Prompts are tokenised exactly once, here; later stages reuse the stored token ids, so no stage ever
re-tokenises a prompt differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..paths import NEUTRAL_PROMPTS

DEFAULT_INSTRUCTION = "Respond with the answer only, without any explanation."
BASE_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class PromptStyle:
    """How questions are put to the model. ``chat=None`` means: chat template when the tokenizer has one."""

    chat: bool | None = None
    instruction: str = DEFAULT_INSTRUCTION
    system: str | None = None  # optional system message (chat only); None keeps the template's default
    base_template: str = BASE_TEMPLATE

    def uses_chat(self, tokenizer: Any) -> bool:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.chat is None:
            return has_template
        if self.chat and not has_template:
            from ..errors import InputError

            raise InputError("chat prompting was asked for but the tokenizer has no chat template")
        return self.chat

    def settings(self, tokenizer: Any) -> dict:
        return {"chat": self.uses_chat(tokenizer), "instruction": self.instruction, "system": self.system,
                "base_template": self.base_template}


@dataclass(frozen=True)
class Prompt:
    text: str  # rendered prompt, for the record
    input_ids: list[int]  # what the model is fed
    stop_at_newline: bool  # base-model prompting ends the answer at the first newline


def answer_line(doc: Any, response: str) -> str:
    """The part of a task response the judges read: its first line when the document was asked the
    base-model way (``stop_at_newline``, eval/hneurons/utils.py), else all of it."""
    return response.split("\n", 1)[0] if doc.get("stop_at_newline") else response


def as_ids(encoded: Any) -> list[int]:
    """apply_chat_template returns a list, a tensor, or (transformers 5) a BatchEncoding."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(i) for i in encoded]


def build_prompt(tokenizer: Any, question: str, style: PromptStyle = PromptStyle()) -> Prompt:
    if style.uses_chat(tokenizer):
        content = f"{question} {style.instruction}".strip() if style.instruction else question
        messages = ([{"role": "system", "content": style.system}] if style.system else []) + [
            {"role": "user", "content": content}
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        return Prompt(text, ids, stop_at_newline=False)
    text = style.base_template.format(question=question)
    ids = as_ids(tokenizer(text, add_special_tokens=True)["input_ids"])
    return Prompt(text, ids, stop_at_newline=True)


def chat_prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """Token ids of a multi-turn conversation with a generation prompt (used by eval and detect)."""
    return as_ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every token id that ends a turn: the tokenizer's EOS and the generation config's EOS ids
    (Llama 3 ends chat turns with <|eot_id|>, which is not tokenizer.eos_token)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    return sorted(ids)


def read_neutral_prompts(path: str | Path = NEUTRAL_PROMPTS, limit: int | None = None) -> list[str]:
    """The ``prompt`` field of each JSONL line (a plain-text file with one prompt per line also works): the
    neutral prompts of the KL measure (eval) and of the abstain edit's KL term."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"KL prompt file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
                raise InputError(f'{path}:{number}: expected an object with a non-empty "prompt" string')
            prompts.append(record["prompt"])
        else:
            prompts.append(line.strip())
    if not prompts:
        raise InputError(f"KL prompt file {path} holds no prompts")
    return prompts[:limit] if limit else prompts


def render_prompt_ids(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """Each prompt as the model sees a user turn (chat template with a generation prompt) or as plain text."""
    out = []
    for prompt in prompts:
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            out.append([int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]])
        else:
            out.append([int(i) for i in tokenizer(prompt)["input_ids"]])
    return out
