"""Numbers as the reports print them (the eval table, the run summary, the model card)."""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> bool:
    """A real, finite number (booleans and None are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = 3, signed: bool = False, missing: str = "n/a") -> str:
    """``value`` with ``digits`` decimals (``+``/``-`` sign when ``signed``); ``missing`` when it is no finite number."""
    if not finite(value):
        return missing
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
