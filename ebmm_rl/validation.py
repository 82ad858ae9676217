"""Construction-time checks shared by the config dataclasses: integers in range, finite numbers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def check_int_fields(config: Any, minimums: dict[str, int] | None = None, default_minimum: int = 1) -> None:
    """Raise ``ValueError`` unless every ``int`` field of the dataclass ``config`` is an integer >= its minimum.

    Args:
        config: a dataclass instance.
        minimums: per-field minimum (fields not named get ``default_minimum``).
        default_minimum: minimum of the other ``int`` fields.
    """
    minimums = minimums or {}
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        if f.type not in (int, "int"):
            continue
        value, minimum = getattr(config, f.name), minimums.get(f.name, default_minimum)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{owner}.{f.name} must be an integer >= {minimum}, got {value!r}")


def check_finite(owner: str, name: str, value: Any) -> float:
    """``value`` as a float, or ``ValueError`` if it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
    return float(value)
