"""What a response *asserts*: clauses, negated mentions, reported speech and the final answer.

Both judges (:mod:`editor.data.judge` for answers, :mod:`editor.data.behaviour` for over-compliance) decide on
the answer a response commits to, not on every word it contains: "Lyon, not Paris" does not answer Paris,
"the context says the Philippines" does not adopt the Philippines, and after "Actually, ..." the last
asserted answer counts. The rules (hneurons' choices, documented in eval/README.md):

Text preparation (:func:`prepare`)
    Curly quotes are straightened, "n't" is spelled "not" (``isn't`` -> ``is not``), "cannot" is "can
    not", accents are folded, runs of spaces collapsed (case is kept).

Clauses
    A clause ends at ``. ! ? ; : ,`` a line break or a dash between spaces. Phrases with a negation word
    that negate nothing (*not only, not just, no doubt, without a doubt, not sure, do not know, no
    problem, ...*) are ignored when looking for negations.

Negated mention (:func:`is_negated`)
    A mention of an answer is negated when, inside its clause, one of the three words before it is a
    negator (*not, no, never, nor, neither, instead, rather*: "is not Kabul", "instead of Kabul",
    "definitely not Paris"), or the words right after it are an auxiliary followed by a negation (*is
    not*, *has never been*, *was no longer*) or by a verdict (*is incorrect, wrong, false, untrue,
    inaccurate, mistaken, fictional*). "Paris is the correct answer, not Lyon" negates Lyon, not Paris.

Attributed mention (:func:`is_attributed`)
    A mention is reported, not asserted, when its clause attributes it to someone else before it: *the
    context / passage / text / question / statement / premise / user says, said, states, claims,
    mentions, suggests, asserts, reports*, *you said / say / mentioned / claimed*, *according to the
    context / passage / text / you*.

Asserted mentions (:func:`asserted`) are the mentions that are neither negated nor attributed.

The response's own answer (:func:`own_answer`, applied by every judge first)
    Base models often go on writing a document after answering: they repeat the question, ask themselves
    new questions ("Question: ... Answer: ...") and stop mid-sentence at the token limit. Lines that are
    one question (a sentence ending in "?") at the start of the response are dropped (a repeated question answers nothing); the
    response ends before the first later line that is a question or starts with *Question:* / *Q:*
    (the model writing its own next item); and a last line cut off without final punctuation after
    complete lines (or dropped questions) is dropped (an unfinished repetition is not a new claim: "I think it's 87. ... I
    think it's 8").
"""

from __future__ import annotations

import re
from typing import Sequence

from .matching import fold_accents, mentions

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u201c": '"', "\u201d": '"'})
_NT_RE = re.compile(r"(?i)n't\b")
_CANNOT_RE = re.compile(r"(?i)\bcannot\b")
NOT_NEGATING_RE = re.compile(
    r"\b(?:not only|not just|not merely|not least|no doubt|without (?:a |any )?doubt|no wonder|not far|"
    r"not surprising(?:ly)?|do not know|does not know|did not know|not sure|not certain|not aware|not familiar|"
    r"no problem|no question)\b"
)
CLAUSE_END_RE = re.compile(r"[.!?;:,\n]|\s[-\u2013\u2014]+\s|\u2014")
_WORD_RE = re.compile(r"[a-z0-9]+")
_NEGATORS_BEFORE = frozenset({"not", "no", "never", "nor", "neither", "instead", "rather"})
_AUXILIARIES = frozenset({"is", "was", "are", "were", "be", "been", "has", "have", "had", "does", "do", "did",
                          "would", "will", "could", "can", "should", "may", "might", "must", "actually",
                          "certainly", "definitely", "really", "also", "in", "fact"})
_NEGATIONS_AFTER = frozenset({"not", "never", "no"})
_VERDICTS_AFTER = frozenset({"incorrect", "wrong", "false", "untrue", "inaccurate", "mistaken", "fictional"})
_WINDOW_BEFORE = 3
_AUX_RUN_MAX = 3
_ATTRIBUTION_RE = re.compile(
    r"\b(?:(?:the )?(?:context|passage|text|question|statement|premise|prompt|user|article|source)s? "
    r"(?:also )?(?:says|said|states|stated|claims|claimed|mentions|mentioned|suggests|suggested|asserts|asserted|"
    r"reports|reported|describes|described|calls|called)|"
    r"you (?:said|say|mentioned|claimed|claim|stated|suggested|wrote)|"
    r"according to (?:the )?(?:context|passage|text|question|statement|you|your))\b"
)
CORRECTION_CUE_RE = re.compile(
    r"\b(?:actually|in reality|in fact|however|but|although|though|incorrect|wrong|false|mistake|mistaken|"
    r"misleading|error|not correct|not true|not right)\b"
)

Span = tuple[int, int]


# a line that is one question: "Question: ..." / "Q: ...", or one sentence ending in "?"
_QUESTION_LINE_RE = re.compile(r"^\W*(?:question|q)\s*\d*\s*:|^[^.!?]*\?\W*$", re.IGNORECASE)
_COMPLETE_LINE_RE = re.compile(r"[.!?)\]\"'*]\s*$")


def own_answer(response: str) -> str:
    """The part of ``response`` that answers the prompt (rules in the module docstring)."""
    lines = response.strip().splitlines()
    before = len(lines)
    while lines and (not lines[0].strip() or _QUESTION_LINE_RE.search(lines[0])):
        lines.pop(0)
    dropped = len(lines) < before
    for i, line in enumerate(lines):
        if i and _QUESTION_LINE_RE.search(line):
            lines = lines[:i]
            break
    kept = [line for line in lines if line.strip()]
    if (len(kept) > 1 or dropped) and kept and not _COMPLETE_LINE_RE.search(kept[-1]):
        lines = lines[: len(lines) - 1 - lines[::-1].index(kept[-1])]
    return "\n".join(lines).strip()


def prepare(text: str) -> str:
    """Straight quotes, accents folded, spaces collapsed, "n't" -> " not", "cannot" -> "can not" (case kept)."""
    text = re.sub(r"[ \t]+", " ", fold_accents(text.translate(_QUOTES)))
    text = _NT_RE.sub(" not", text)
    return _CANNOT_RE.sub("can not", text)


def lower(text: str) -> str:
    return " ".join(text.lower().split())


def clause_of(text: str, start: int, end: int) -> tuple[str, str]:
    """The text of the clause before ``start`` and after ``end``."""
    before, after = text[:start], text[end:]
    cuts = list(CLAUSE_END_RE.finditer(before))
    before = before[cuts[-1].end():] if cuts else before
    cut = CLAUSE_END_RE.search(after)
    return before, after[: cut.start()] if cut else after


def _clause_words(text: str, start: int, end: int) -> tuple[list[str], list[str]]:
    """Words of the clause before ``start`` and after ``end`` (prepared, lower-case, not-negating phrases
    blanked). Only the clause is prepared, so spans stay those of the original ``text``."""
    before, after = clause_of(text, start, end)
    before = NOT_NEGATING_RE.sub(" ", lower(prepare(before)))
    after = NOT_NEGATING_RE.sub(" ", lower(prepare(after)))
    return _WORD_RE.findall(before), _WORD_RE.findall(after)


def is_negated(text: str, span: Span) -> bool:
    """Whether the mention at ``span`` of ``text`` is negated (module docstring)."""
    before, after = _clause_words(text, *span)
    if _NEGATORS_BEFORE.intersection(before[-_WINDOW_BEFORE:]):
        return True
    # "X is not", "X has never been", "X is actually not", "X is incorrect"
    for i, word in enumerate(after[: _AUX_RUN_MAX + 1]):
        if i > 0 and (word in _NEGATIONS_AFTER or word in _VERDICTS_AFTER):
            return True
        if word not in _AUXILIARIES:
            return False
    return False


def is_attributed(text: str, span: Span) -> bool:
    """Whether the mention at ``span`` is reported speech ("the context says X") rather than asserted."""
    before, _ = clause_of(text, *span)
    return bool(_ATTRIBUTION_RE.search(lower(prepare(before))))


def spans(text: str, aliases: Sequence[str]) -> list[Span]:
    """Every ``[start, end)`` span of ``text`` where one of ``aliases`` occurs (whole words)."""
    return [span for _, span in mentions(text, aliases)]


def asserted(text: str, aliases: Sequence[str]) -> list[Span]:
    """Mentions of ``aliases`` that ``text`` asserts: neither negated nor attributed."""
    return [s for s in spans(text, aliases) if not is_negated(text, s) and not is_attributed(text, s)]


def corrects(text: str, earlier: Span, later: Span) -> bool:
    """``later`` follows ``earlier`` with a correction cue between them ("X ..., but actually Y")."""
    return later[0] > earlier[1] and bool(CORRECTION_CUE_RE.search(lower(prepare(text[earlier[1]:later[0]]))))


def final_answer(text: str, candidates: dict[str, list[Span]]) -> str | None:
    """The candidate (a name in ``candidates``: its asserted spans) whose last assertion comes last; None if
    nothing is asserted. The answer a response commits to is the last one it asserts ("Lyon is in
    Belgium. No wait, France." -> France)."""
    last = {name: s[-1] for name, s in candidates.items() if s}
    if not last:
        return None
    return max(last, key=lambda name: last[name][0])
