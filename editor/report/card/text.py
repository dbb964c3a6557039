"""Text for the card: Markdown escaping, code fences, YAML-safe strings and number formatting.

Every string that comes from an artifact reaches the card through :func:`md_text` (prose and table cells),
:func:`code_block` (fenced code) or :func:`yaml_text` (metadata); the template adds only its own fixed text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...text import finite, fmt  # noqa: F401 (re-exported for the card's modules)

_LINE_BREAKS = re.compile(r"\r\n|[\r\n\v\f\x85\u2028\u2029]")
_YAML_UNSAFE = re.compile(r"[\x85\ud800-\udfff]")  # NEL (YAML folds it) and lone surrogates (not UTF-8)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]|~$])")


def md_text(value: Any) -> str:
    """Inline Markdown text (also safe in a table cell): no markup, no HTML, one line."""
    text = _LINE_BREAKS.sub(" ", str(value))
    text = _CONTROL.sub(" ", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def code_block(text: str, lang: str = "") -> str:
    """A fenced code block whose fence is longer than any backtick run in ``text``."""
    body = _LINE_BREAKS.sub("\n", text).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body}\n{fence}"


def yaml_text(value: str) -> str:
    """A metadata string that YAML round-trips exactly: every character but NEL (which YAML folds into a space)
    and lone surrogates (which UTF-8 cannot hold) is kept; those two become spaces."""
    return _YAML_UNSAFE.sub(" ", str(value))


def ci(interval: Any, digits: int = 3, signed: bool = False) -> str:
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2 and all(finite(v) for v in interval)):
        return "no CI"
    return f"[{fmt(interval[0], digits, signed)}, {fmt(interval[1], digits, signed)}]"


def sci(value: Any) -> str:
    return f"{value:.1e}" if finite(value) else "n/a"


def human_count(n: int) -> str:
    """135M, 1.2B, or the exact number below a million."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n:,}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def spread(values: Any, digits: int = 3) -> str:
    """mean +- sd (sd only when there is one: a single seed has none)."""
    text = fmt(values.get("mean"), digits)
    return text + (f" +- {fmt(values['std'], digits)}" if finite(values.get("std")) else "")


def short_path(path: Path) -> str:
    """folder/name: enough to recognise a file without publishing the local directory layout."""
    return f"{path.resolve().parent.name}/{path.name}"
