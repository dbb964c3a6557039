"""The answer judge: is a sampled response correct, wrong or uncertain?

docs/METHOD.md section 1: a response is *correct* when a normalised gold alias occurs in the normalised
response; responses that refuse or hedge are *uncertain*. This module makes each part of that rule
precise (the paper leaves the details open; these are hneurons' choices):

Normalisation (:func:`normalize`)
    NFKD, accents stripped (``Lomé`` -> ``lome``; ``ø``/``æ``/``ß``/... spelled out), lower-cased,
    punctuation and symbols turned into spaces, the articles *a*, *an*, *the* dropped, whitespace
    collapsed. Inside numbers a thousands comma is dropped (``1,000`` -> ``1000``) and a decimal point
    is kept (``7.9`` stays one token), so ``79`` never matches ``7.9`` or ``1979``.

Matching
    Token-wise: an alias matches when its normalised tokens occur as a contiguous run of the
    response's normalised tokens, i.e. whole words only (``Au`` never matches ``August``, ``79`` never
    matches ``1979``). Codes - aliases of at most two characters with a capital (the element symbols
    ``Au``, ``As``, ``I``) or of at most three written in capitals (ISO codes ``TGO``, ``CAN``) - must
    match case-sensitively (as written, or in capitals: ``AU``), so the English words "as" or "can" do
    not count as the symbol of arsenic or the code of Canada; "Yen" or "Ufa" are ordinary words. (The
    pronoun "I" still matches iodine's symbol; answer-only responses rarely contain it.) Among several
    matching aliases the one found earliest (then the longest) is reported.

Refusals and hedges (:func:`is_refusal`)
    A *refusal* says the model does not know or that the entity does not exist ("I don't know",
    "I'm not sure", "I cannot", "there is no", "does not exist", "fictional", ...). A *hedge* guesses
    while flagging doubt ("I think", "probably", "maybe", ...). Both make a response on a real question
    ``uncertain`` - even when it also names the gold answer ("I'm not sure, but I think it's Paris"):
    the paper keeps only confidently answered questions, so a disclaimer takes precedence over a match.

Fabricated (NonExist) questions
    There is no gold answer: a refusal without a hedge is ``correct`` (faithful), a hedged guess is
    ``uncertain``, and any other (confident) answer is ``wrong`` (a hallucination).

Truncated samples (``truncated=True``: generation hit the token limit)
    A later disclaimer could still have followed, so a truncated sample is never judged ``correct``
    or ``wrong`` from its beginning: it is ``uncertain``. The one exception is a fabricated question
    whose text already refuses (and does not hedge): that refusal is faithful whatever follows, so it
    stays ``correct``. The collect stage also records ``truncated`` and treats such samples as
    inconsistent.

``matched_alias`` and ``alias_span`` are reported whenever a gold alias occurs in the response,
whatever the label (a hedged or truncated response keeps its match), so callers can locate the
answer tokens; ``alias_span`` is a ``[start, end)`` character span of the ORIGINAL response text, from
the first to the last matched word (a dropped leading article is not part of it: "The Hague" -> "Hague").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError

__all__ = ["Judgement", "normalize", "fold_accents", "is_refusal", "refusal_kind", "find_alias", "judge", "LABELS"]

LABELS = ("correct", "wrong", "uncertain")
ARTICLES = frozenset({"a", "an", "the"})

# Letters that NFKD does not decompose into an ASCII base letter.
_SPELLED_OUT = {
    "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
    "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "TH", "ł": "l", "Ł": "L", "ı": "i",
    "ħ": "h", "Ħ": "H", "ŧ": "t", "Ŧ": "T", "ŋ": "ng", "Ŋ": "NG", "ĸ": "k",
}
# A code alias in capitals ("TGO", "CAN") has at most this many characters.
_CODE_MAX_LEN = 3


# -------------------------------------------------------------------------------------- tokenisation
@dataclass(frozen=True)
class _Token:
    text: str  # normalised (lower-case, ASCII-folded)
    cased: str  # ASCII-folded with the original case (for code aliases)
    start: int  # [start, end) in the original text
    end: int


def _fold(char: str) -> str:
    """One original character -> its accent-free spelling (may be empty or several characters)."""
    if char in _SPELLED_OUT:
        return _SPELLED_OUT[char]
    return "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))


def fold_accents(text: str) -> str:
    """``text`` without accents, keeping case and punctuation ("Łódź" -> "Lodz", "Lomé" -> "Lome")."""
    return "".join(_fold(c) if c.isalpha() else c for c in text)


def _is_digit_separator(text: str, i: int) -> bool:
    """A ',' or '.' with a digit on both sides belongs to the number (1,000 / 7.9)."""
    return 0 < i < len(text) - 1 and text[i] in ",." and text[i - 1].isdigit() and text[i + 1].isdigit()


def _tokens(text: str) -> list[_Token]:
    """Split ``text`` into normalised word tokens, each remembering its span in ``text``."""
    tokens: list[_Token] = []
    cased: list[str] = []
    start = -1

    def close(end: int) -> None:
        nonlocal start, cased
        if cased:
            word = "".join(cased)
            tokens.append(_Token(word.lower(), word, start, end))
        cased, start = [], -1

    for i, char in enumerate(text):
        if _is_digit_separator(text, i):
            if char == ".":
                cased.append(".")  # decimal point stays inside the token; thousands comma vanishes
            continue
        folded = _fold(char)
        if folded and all(c.isalnum() for c in folded):
            if not cased:
                start = i
            cased.append(folded)
        else:
            # punctuation, symbol or space ends the word (a folded char mixing both is treated as a break)
            close(i)
    close(len(text))
    return [t for t in tokens if t.text not in ARTICLES]


def normalize(text: str) -> str:
    """Lower-case, strip accents, punctuation and the articles a/an/the; collapse whitespace."""
    return " ".join(t.text for t in _tokens(text))


# -------------------------------------------------------------------------------------------- matching
def _is_code(alias_tokens: list[_Token]) -> bool:
    """"Au", "I", "TGO", "U.S." are codes; "Yen", "Ufa", "79" are not."""
    compact = "".join(t.cased for t in alias_tokens)
    if not any(c.isupper() for c in compact):
        return False
    return len(compact) <= 2 or (len(compact) <= _CODE_MAX_LEN and compact.isupper())


def _find_run(response: list[_Token], alias: list[_Token], case_sensitive: bool) -> int | None:
    n = len(alias)
    for i in range(len(response) - n + 1):
        window = response[i : i + n]
        if all(
            (w.cased in (a.cased, a.cased.upper())) if case_sensitive else (w.text == a.text)
            for w, a in zip(window, alias)
        ):
            return i
    return None


def find_alias(response: str, answers: Sequence[str]) -> tuple[str, tuple[int, int]] | None:
    """The gold alias occurring in ``response`` (earliest, then longest) and its span in ``response``.

    Returns ``None`` when no alias occurs. Aliases that normalise to nothing (e.g. "The") are ignored.
    """
    resp_tokens = _tokens(response)
    best: tuple[int, int, str, tuple[int, int]] | None = None  # (start token, -length, alias, span)
    for alias in answers:
        alias_tokens = _tokens(alias)
        if not alias_tokens:
            continue
        at = _find_run(resp_tokens, alias_tokens, case_sensitive=_is_code(alias_tokens))
        if at is None:
            continue
        last = at + len(alias_tokens) - 1
        key = (at, -len(alias_tokens), alias, (resp_tokens[at].start, resp_tokens[last].end))
        if best is None or key[:2] < best[:2]:
            best = key
    return None if best is None else (best[2], best[3])


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
    r"\bnot (?:a )?(?:real|recogni[sz]ed|known|actual|existing)\b",
    r"\b(?:there is|there's|there are|there was|there were) no\b",
    r"\b(?:does not|doesn't|doesnt|did not|didn't|do not|don't|never) (?:exist|existed)\b",
    r"\b(?:not|non)[- ]?exist(?:ent|ing|s)?\b",
    r"\bno such\b",
    r"\bfictional\b",  # not bare "fiction": "a science fiction novel by X" is a confident answer
    r"\bfictitious\b",
    r"\bimaginary\b",
    r"\bmade[- ]up\b",
    r"\bhypothetical\b",
    r"\bunknown\b",
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
_REFUSAL_RE = re.compile("|".join(_REFUSAL_PATTERNS))
_HEDGE_RE = re.compile("|".join(_HEDGE_PATTERNS))


def _refusal_text(text: str) -> str:
    """Lower-case, accent-free text with straight apostrophes and single spaces (for the regexes)."""
    folded = "".join(_fold(c) for c in text).lower()
    folded = folded.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    return " ".join(folded.split())


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
    if not fabricated and not any(_tokens(a) for a in answers):
        raise InputError("judge() needs at least one non-empty gold alias for a non-fabricated question")
    found = find_alias(response, answers) if answers else None
    matched, span = found if found else (None, None)
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
        label = "correct" if found else "wrong"
    return Judgement(label, matched, span)
