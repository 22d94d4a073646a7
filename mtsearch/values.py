"""Values read from YAML and the command line: numbers as YAML spells them, and small checks that
return the reason a value is refused (None when it is fine)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from mtsearch.errors import did_you_mean


def as_int(value: Any) -> int:
    """An integer from YAML (2.0 counts as 2; booleans do not); ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError("expected an integer")


def as_float(value: Any) -> float:
    """A finite number from YAML (`2e-4` arrives as a string in YAML 1.1); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, str):  # YAML 1.1 reads `2e-4` as a string
        try:
            value = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    if not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return float(value)


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def at_least(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or v >= n else f"must be >= {n}"


def one_of(options: tuple[str, ...] | list[str]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}{did_you_mean(str(v), options)}"

    return check
