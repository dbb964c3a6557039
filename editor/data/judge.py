"""The answer judge: is a sampled response correct, wrong or uncertain?

docs/METHOD.md section 1: a response is *correct* when it gives a gold alias as its answer; responses that
refuse or hedge are *uncertain*. This module makes each part of that rule precise (the paper leaves the
details open and uses an LLM judge; these are hneurons' choices, each with a unit test, and measured
against hand-labelled responses in eval/judge_validation/):

Matching (:mod:`editor.data.matching`)
    Normalised whole-word matching of every gold alias (accents, case, punctuation, articles; number
    words are numbers: "Twenty six" answers 26; short codes case-sensitive).

Generic words are no answer
    A bare currency word shared by many countries ("Dollar", "Peso", "Dinar", "Franc", "Pound", ...; see
    ``GENERIC_ALIASES``) is not accepted as an alias: "US Dollar" does not answer "Bermudian dollar", and a
    bare "dollar" does not say which one. The qualified names ("Bermudian dollar") still match.

The answer a response commits to (:mod:`editor.data.clauses`)
    Only *asserted* mentions count: a mention that is negated ("The capital of France is not Paris",
    "Lyon, not Paris", "Definitely not Paris; it's Lyon") or attributed to someone else ("the question
    says Paris") is no answer.

A list of guesses is no answer
    When the asserted mention is one item of a list of alternatives in its sentence ("Paris or Lyon",
    "Paris, Lyon, Marseille, Nice", "Paris and Lyon"), the response is correct only when every item is
    a gold alias ("English and French" for Canada); otherwise it is wrong. A list has at least two
    candidate-looking items (at most four words, starting with a capital or a digit) joined by "or",
    "and" or "/", or at least three joined by commas; "Paris, France" is an answer with its country.

Refusals and hedges (:func:`refusal_kind`)
    A *refusal* says the model does not know or that the entity does not exist ("I don't know", "I'm not
    sure", "I cannot", "there is no", "does not exist", "no information", ...). A *hedge* guesses while
    flagging doubt ("I think", "probably", "maybe", ...). Emphatic certainty is neither: "There is no
    doubt", "without a doubt", "there is no question" are removed before the search, and so is
    "unknown to many / most / some / others". "Unknown" is a refusal only as a statement ("Unknown.",
    "it is unknown", "remains unknown", "unknown to me"), not as a value filled into a sentence ("is
    located in Unknown"). "Fictional / fictitious / imaginary / made-up" is a refusal only when it
    describes the entity itself ("X is a fictional country", "this appears to be made up",
    "A fictional place."), not a setting it is placed in ("a city in the fictional world of Arda"). Both
    refusals and hedges make a response on a real question ``uncertain``, even when it also names the
    gold answer ("I'm not sure, but I think it's Paris"): the paper keeps only confidently answered
    questions, so a disclaimer takes precedence over a match.

Fabricated (NonExist) questions
    There is no gold answer: a refusal without a hedge is ``correct`` (faithful), a hedged guess is
    ``uncertain``, and any other (confident) answer is ``wrong`` (a hallucination), including a
    confident attribution with a filler word ("Nustasaville is located in Unknown.") and a placement in
    a fictional setting ("Nustasaville is a city in the fictional world of ...").

Truncated samples (``truncated=True``: generation hit the token limit)
    A later disclaimer could still have followed, so a truncated sample is never judged ``correct``
    or ``wrong`` from its beginning: it is ``uncertain``. The one exception is a fabricated question
    whose text already refuses (and does not hedge): that refusal is faithful whatever follows, so it
    stays ``correct``. The collect stage also records ``truncated`` and treats such samples as
    inconsistent.

``matched_alias`` and ``alias_span`` are reported whenever a gold alias occurs in the response (the first
asserted mention, else the first mention), whatever the label (a hedged or truncated response keeps its
match), so callers can locate the answer tokens; ``alias_span`` is a ``[start, end)`` character span of the
ORIGINAL response text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from .clauses import is_attributed, is_negated, own_answer
from .matching import find_alias, fold_accents, mentions, normalize, tokens

__all__ = ["Judgement", "normalize", "fold_accents", "is_refusal", "refusal_kind", "find_alias", "judge", "LABELS",
           "GENERIC_ALIASES"]

LABELS = ("correct", "wrong", "uncertain")

# Currency words shared by several countries: on their own they do not say which currency.
GENERIC_ALIASES = frozenset({
    "dollar", "dollars", "peso", "pesos", "franc", "francs", "pound", "pounds", "dinar", "dinars", "rupee",
    "rupees", "shilling", "shillings", "krone", "kroner", "krona", "kronor", "riyal", "riyals", "rial", "rials",
    "dirham", "dirhams", "lira", "ruble", "rubles", "rouble", "roubles", "manat", "som", "leu", "won",
})

# -------------------------------------------------------------------------------- refusals and hedges
_REFUSAL_PATTERNS = [
    r"\bi (?:really )?(?:do not|don't|dont) know\b",
    r"\b(?:do not|don't|dont) know\b",
    r"\bno(?:body| one) knows\b",
    r"\bnot (?:entirely |completely |totally |quite |\w+ )?(?:sure|certain)\b",
    r"\bunsure\b",
    r"\bi (?:cannot|can't|cant|can not|am unable|'m unable|am not able|'m not able|was unable|was not able)\b",
    r"\bunable to\b",
    r"\b(?:could not|couldn't|couldnt|cannot|can't|can not|did not|didn't) (?:find|locate|verify|confirm|determine|identify)\b",
    r"\bno (?:reliable |specific |available |such |further |public(?:ly available)? |verifiable |known |accurate )?"
    r"(?:information|data|records?|evidence|details|mention)\b",
    r"\b(?:do not|don't|dont|does not|doesn't) have (?:any )?(?:information|data|details|knowledge|records?)\b",
    r"\bnot (?:aware|familiar)\b",
    r"\b(?:never|not|have not|haven't) heard of\b",
    r"\bnot (?:a )?(?:real|recogni[sz]ed|known|actual|existing)\b",
    r"\b(?:there is|there's|there are|there was|there were) no\b",
    r"\b(?:does not|doesn't|doesnt|did not|didn't|do not|don't|never) (?:exist|existed)\b",
    r"\b(?:not|non)[- ]?exist(?:ent|ing|s)?\b",
    r"\bno such\b",
    # fictional & co. only about the entity itself (a setting it is placed in is an attribution)
    r"\b(?:is|are|was|were|be|been|being|seems?|appears?|sounds?|looks?)(?: to be| like)? (?:a |an )?"
    r"(?:entirely |purely |completely |probably |likely )?(?:fictional|fictitious|imaginary|made[- ]up|invented|"
    r"fabricated)\b",
    r"^\W*(?:a |an |this is (?:a |an )?)?(?:fictional|fictitious|imaginary|made[- ]up)\b",
    r"\b(?:fictional|fictitious|imaginary|made[- ]up) (?:place|city|town|village|country|nation|person|character|"
    r"entity|element|book|novel|work|title|name|location|island|region)\b",
    r"\bhypothetical\b",
    # unknown only as a statement, not as a value filled into a sentence ("is located in Unknown")
    r"^\W*unknown\W*$",
    r"\b(?:is|are|was|were|remains?|remained|still|currently|largely|entirely|completely|totally|simply) unknown\b",
    r"\bunknown to (?:me|us)\b",
    r"\bno (?:idea|answer)\b",
    r"\bi(?:'m| am) sorry\b",
    r"\bi apologi[sz]e\b",
    r"\b(?:cannot|can't|can not|unable to) (?:answer|provide|say|tell|help)\b",
    r"\bas an ai\b",
    r"\bnot (?:possible|able) to (?:determine|say|know|answer)\b",
]
_HEDGE_PATTERNS = [
    r"\bi (?:think|believe|guess|suppose|assume|suspect)\b",
    r"\bprobably\b",
    r"\bpossibly\b",
    r"\bperhaps\b",
    r"\bmaybe\b",
    r"\b(?:might|may|could) be\b",
    r"\bmost likely\b",
    r"\bit seems\b",
    r"\bif i recall\b",
    r"\bto (?:the best of )?my (?:knowledge|recollection)\b",
    r"\bmy best guess\b",
]
# Certainty and statements about other people's knowledge, which the patterns above would misread.
_NOT_DOUBT_RE = re.compile(
    r"\b(?:there is|there's|there can be|with|without) (?:a |any |absolutely )?(?:no )?doubts?\b|\bno doubt\b|"
    r"\bundoubtedly\b|\b(?:there is|there's) no question\b|\bno question about it\b|"
    r"\bunknown to (?:many|most|some|others|people|outsiders|the public|many people)\b"
)
_REFUSAL_RE = re.compile("|".join(_REFUSAL_PATTERNS))
_HEDGE_RE = re.compile("|".join(_HEDGE_PATTERNS))


def _refusal_text(text: str) -> str:
    """Lower-case, accent-free text with straight apostrophes and single spaces, certainty phrases removed."""
    folded = fold_accents(text).lower()
    folded = folded.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    return _NOT_DOUBT_RE.sub(" ", " ".join(folded.split())).strip()


def refusal_kind(text: str) -> str | None:
    """``"refusal"`` (does not know / entity does not exist), ``"hedge"`` (a doubtful guess), or None.

    A text with both a refusal and a hedge ("I'm not sure, but I think it is X") is a ``"hedge"``:
    it still offers an answer.
    """
    folded = _refusal_text(text)
    if _HEDGE_RE.search(folded):
        return "hedge"
    if _REFUSAL_RE.search(folded):
        return "refusal"
    return None


def is_refusal(text: str) -> bool:
    """True when the response refuses or hedges (either makes a real question's answer uncertain)."""
    return refusal_kind(text) is not None


# ------------------------------------------------------------------------------------------ answers
def specific_aliases(answers: Sequence[str]) -> list[str]:
    """The aliases that name one answer: bare generic currency words are dropped."""
    return [a for a in answers if " ".join(t.text for t in tokens(a)) not in GENERIC_ALIASES]


_SENTENCE_END_RE = re.compile(r"[.!?;\n]")
_LIST_SEP_RE = re.compile(r"\s*,\s*(?:and\s+|or\s+)?|\s+(?:or|and)\s+|\s*/\s*")
_JOINER_RE = re.compile(r"\s+(?:or|and)\s+|\s*/\s*|,\s*(?:and|or)\s+")
_LEAD_IN_RE = re.compile(r"^.*\b(?:is|are|was|were|be|include|includes|including|either)\s+|^.*:\s*", re.I)


def _sentence(text: str, span: tuple[int, int]) -> tuple[int, str]:
    """The sentence holding ``span``: (its start offset, its text)."""
    cuts = [m.end() for m in _SENTENCE_END_RE.finditer(text, 0, span[0])]
    start = cuts[-1] if cuts else 0
    end_match = _SENTENCE_END_RE.search(text, span[1])
    return start, text[start:end_match.start() if end_match else len(text)]


def _looks_like_candidate(item: str) -> bool:
    words = item.split()
    return 0 < len(words) <= 4 and (item[:1].isupper() or item[:1].isdigit())


def list_items(text: str, span: tuple[int, int]) -> list[str] | None:
    """The items of the list of alternatives the mention at ``span`` belongs to, or None when it is not in
    one (rules in the module docstring)."""
    offset, sentence = _sentence(text, span)
    parts = _LIST_SEP_RE.split(sentence.strip())
    if len(parts) < 2:
        return None
    parts[0] = _LEAD_IN_RE.sub("", parts[0]).strip()
    items = [p.strip(" ()\"'") for p in parts]
    mention = text[span[0]:span[1]]
    own = next((i for i in items if mention in i), None)
    candidates = [i for i in items if _looks_like_candidate(i)]
    if own is None or own not in candidates or len(candidates) < 2:
        return None
    joined = bool(_JOINER_RE.search(sentence))
    return candidates if (joined or len(candidates) >= 3) else None


def _asserted(response: str, found: list[tuple[str, tuple[int, int]]]) -> list[tuple[str, tuple[int, int]]]:
    return [m for m in found if not is_negated(response, m[1]) and not is_attributed(response, m[1])]


def _answers_with(response: str, asserted: list[tuple[str, tuple[int, int]]], answers: Sequence[str]) -> bool:
    """Whether the asserted mentions make a correct answer: no list of guesses, or one of gold aliases only."""
    for _, span in asserted:
        items = list_items(response, span)
        if items is None or all(find_alias(item, answers) for item in items):
            return True
    return False


# ----------------------------------------------------------------------------------------------- judge
@dataclass(frozen=True)
class Judgement:
    label: str  # "correct" | "wrong" | "uncertain"
    matched_alias: str | None = None
    alias_span: tuple[int, int] | None = None  # [start, end) in the original response


def judge(
    response: str, answers: Sequence[str], *, fabricated: bool = False, truncated: bool = False
) -> Judgement:
    """Label one response (rules in the module docstring)."""
    if not fabricated and not any(tokens(a) for a in answers):
        raise InputError("judge() needs at least one non-empty gold alias for a non-fabricated question")
    response = own_answer(response)  # not the questions a base model goes on to write itself
    answers = specific_aliases(answers)
    found = mentions(response, answers) if answers else []
    asserted = _asserted(response, found)
    reported = (asserted or found or [(None, None)])[0]
    kind = refusal_kind(response)

    if fabricated:
        if kind == "refusal":
            label = "correct"
        elif kind == "hedge" or truncated:
            label = "uncertain"
        else:
            label = "wrong"
    elif kind is not None or truncated:
        label = "uncertain"
    else:
        label = "correct" if asserted and _answers_with(response, asserted, answers) else "wrong"
    return Judgement(label, *reported)
