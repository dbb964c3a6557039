"""The answer judge on tricky, real-looking responses (rules in editor/data/judge.py)."""

from __future__ import annotations

import pytest

from editor.data.judge import find_alias, is_refusal, judge, normalize, refusal_kind
from editor.errors import InputError

# (response, gold aliases, expected label, expected matched text in the response or None)
REAL_CASES = [
    # accents both ways
    ("The capital of Togo is Lomé.", ["Lome"], "correct", "Lomé"),
    ("lome", ["Lomé"], "correct", "lome"),
    ("Reykjavík", ["Reykjavik"], "correct", "Reykjavík"),
    ("Łódź, in central Poland", ["Lodz"], "correct", "Łódź"),
    ("Cote d’Ivoire", ["Côte d'Ivoire"], "correct", "Cote d’Ivoire"),
    # articles, case, punctuation
    ("The Hague.", ["The Hague"], "correct", "Hague"),
    ("It is in the Netherlands", ["Netherlands"], "correct", "Netherlands"),
    ("PARIS!", ["Paris"], "correct", "PARIS"),
    ("Washington, D.C.", ["Washington, D.C."], "correct", "Washington, D.C"),
    ("Porto Novo", ["Porto-Novo"], "correct", "Porto Novo"),
    ("Saint John's", ["St. John's", "Saint John's"], "correct", "Saint John's"),
    # several aliases: the earliest occurrence is reported
    ("The United Kingdom (UK).", ["UK", "United Kingdom"], "correct", "United Kingdom"),
    # whole words only
    ("Athens, Georgia", ["Athens"], "correct", "Athens"),
    ("Athenstown", ["Athens"], "wrong", None),
    ("Paraguay", ["Paris"], "wrong", None),
    # numbers as whole tokens, digits or words
    ("79", ["79", "seventy-nine"], "correct", "79"),
    ("Its atomic number is seventy nine.", ["79", "seventy-nine"], "correct", "seventy nine"),
    ("It was discovered in 1979.", ["79", "seventy-nine"], "wrong", None),
    ("7.9", ["79"], "wrong", None),
    ("79.5", ["79"], "wrong", None),
    ("The number is 79.", ["79"], "correct", "79"),
    ("1,000", ["1000"], "correct", "1,000"),
    ("+228", ["+228", "228"], "correct", "228"),
    # short codes: case-sensitive, whole words
    ("It happened in August.", ["Au"], "wrong", None),
    ("The chemical symbol of gold is Au.", ["Au"], "correct", "Au"),
    ("AU", ["Au"], "correct", "AU"),
    ("au revoir", ["Au"], "wrong", None),
    ("It is known as Ar.", ["As"], "wrong", None),
    ("As", ["As"], "correct", "As"),
    # symbols that are also English words count only where the word reading is ruled out
    ("I think it is Io.", ["I"], "uncertain", None),  # the pronoun is not iodine (hedged: uncertain, not correct)
    ("I'm not sure, but it might be Io.", ["I"], "uncertain", None),
    ("I said Io.", ["I"], "wrong", None),
    ("The chemical symbol of iodine is I.", ["I"], "correct", "I"),
    ("Iodine (I)", ["I"], "correct", "I"),
    ("In fact, it is Sn.", ["In"], "wrong", None),
    ("The symbol of indium is In.", ["In"], "correct", "In"),
    ("No, it is Nb.", ["No"], "wrong", None),
    ("He is the one who knows.", ["He"], "wrong", None),
    ("You can find it: CAN", ["CAN"], "correct", "CAN"),
    ("Canada", ["CAN"], "wrong", None),
    ("The Japanese yen", ["Yen"], "correct", "yen"),
    # wrong answers
    ("The capital of Togo is Accra.", ["Lomé", "Lome"], "wrong", None),
    ("Sn", ["Au"], "wrong", None),
]


@pytest.mark.parametrize("response,answers,label,matched_text", REAL_CASES)
def test_real_question_cases(response, answers, label, matched_text):
    result = judge(response, answers)
    assert result.label == label, (response, result)
    if matched_text is None:
        assert result.alias_span is None and result.matched_alias is None
    else:
        start, end = result.alias_span
        assert response[start:end] == matched_text
        assert result.matched_alias in answers


REFUSALS = [
    "I don't know.",
    "I do not know the answer to that.",
    "I'm not sure.",
    "I cannot answer that question.",
    "I couldn't find any information about this city.",
    "There is no country called Velmoria.",
    "Velmoria does not exist.",
    "I'm not aware of a novel with that title.",
    "There is no information available about this person.",
    "Brontium is not a real chemical element.",
    "This appears to be a fictional country.",
    "I’m sorry, but I can’t find that element.",  # curly apostrophes
    "Unknown",
]
HEDGES = [
    "I think it's Paris.",
    "I'm not sure, but I think it's Paris.",
    "Probably Lomé.",
    "It might be Accra.",
    "Maybe 1879?",
    "I believe the capital is Zorbatown.",
]
CONFIDENT = [
    "The capital of Togo is Lomé.",
    "Au",
    "The currency is the West African CFA franc, which is also used in Benin.",
    "Seventy-nine.",
    "It is a science fiction novel by Ursula Vance, published in 1974.",
    "There are 79 protons in a gold nucleus.",
    "Canberra is the capital of Australia.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected(text):
    assert refusal_kind(text) == "refusal" and is_refusal(text)


@pytest.mark.parametrize("text", HEDGES)
def test_hedges_are_detected(text):
    assert refusal_kind(text) == "hedge" and is_refusal(text)


@pytest.mark.parametrize("text", CONFIDENT)
def test_confident_answers_are_not_refusals(text):
    assert refusal_kind(text) is None and not is_refusal(text)


def test_refusal_or_hedge_makes_a_real_question_uncertain_even_with_the_gold_answer():
    hedged = judge("I'm not sure, but I think it's Paris.", ["Paris"])
    assert hedged.label == "uncertain"
    # the match is still reported so that callers can locate the answer tokens
    assert hedged.matched_alias == "Paris"
    assert "I'm not sure, but I think it's Paris."[slice(*hedged.alias_span)] == "Paris"
    assert judge("I don't know.", ["Paris"]).label == "uncertain"
    assert judge("There is no such city.", ["Paris"]).label == "uncertain"


@pytest.mark.parametrize(
    "response,label",
    [
        ("Velmoria does not exist, so it has no capital.", "correct"),
        ("I'm not aware of any country called Velmoria.", "correct"),
        ("I don't know.", "correct"),
        ("The capital of Velmoria is Drassel.", "wrong"),
        ("Drassel", "wrong"),
        ("1873", "wrong"),
        ("I think the capital is Drassel.", "uncertain"),
        ("I'm not sure, but it might be Drassel.", "uncertain"),
    ],
)
def test_fabricated_questions(response, label):
    result = judge(response, [], fabricated=True)
    assert result.label == label
    assert result.matched_alias is None and result.alias_span is None


def test_truncated_samples_are_never_silently_correct_or_wrong():
    # would be correct / wrong untruncated: a later disclaimer could have followed
    assert judge("The capital of Togo is Lomé, a port city on", ["Lomé"], truncated=True).label == "uncertain"
    assert judge("The capital of Togo is Accra, a port city on", ["Lomé"], truncated=True).label == "uncertain"
    assert judge("The capital of Velmoria is Drassel, which", [], fabricated=True, truncated=True).label == "uncertain"
    # a refusal already made stays a refusal
    assert judge("Velmoria does not exist. It may be a", [], fabricated=True, truncated=True).label == "uncertain"
    assert judge("Velmoria does not exist as a country; it", [], fabricated=True, truncated=True).label == "correct"
    assert judge("I don't know. The", ["Lomé"], truncated=True).label == "uncertain"
    # the match is still reported
    truncated = judge("Lomé is the capital and", ["Lome"], truncated=True)
    assert truncated.matched_alias == "Lome" and truncated.alias_span == (0, 4)


def test_real_question_needs_an_alias():
    with pytest.raises(InputError, match="alias"):
        judge("Paris", [])
    with pytest.raises(InputError, match="alias"):
        judge("Paris", ["The", " "])


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The Hague", "hague"),
        ("Lomé", "lome"),
        ("  São   Tomé and Príncipe ", "sao tome and principe"),
        ("Seventy-nine!", "seventy nine"),
        ("A tale of an apple", "tale of apple"),
        ("1,000.5 km", "1000.5 km"),
        ("Straße Ørsted Æther", "strasse orsted aether"),
        ("“Den Haag”", "den haag"),
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_alias_span_maps_back_through_accents_and_punctuation():
    response = "Réponse : « Nuku‘alofa », capitale des Tonga."
    alias, (start, end) = find_alias(response, ["Nuku'alofa"])
    assert alias == "Nuku'alofa" and response[start:end] == "Nuku‘alofa"
    response = "It's São Tomé."
    alias, (start, end) = find_alias(response, ["Sao Tome"])
    assert response[start:end] == "São Tomé"
    assert find_alias("nothing here", ["Sao Tome"]) is None
