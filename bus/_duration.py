"""One grammar for durations typed by people: ``90s``, ``15m``, ``1.5h``, ``30d``, ``2w``."""

from __future__ import annotations

import re

from ._errors import InvalidInput

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def is_duration(text: str) -> bool:
    """Whether ``text`` is written as a duration (to tell it apart from a date)."""
    return DURATION.match(text) is not None


def parse_duration(text: str) -> float:
    """A number and one unit (s, m, h, d, w; case and surrounding spaces ignored) -> seconds.
    Raises InvalidInput naming the accepted form."""
    match = DURATION.match(text)
    if not match:
        raise InvalidInput(f"{text!r} is not a duration; use a number and a unit: 90s, 15m, 1h, 30d, 2w")
    return float(match.group(1)) * _UNITS[match.group(2).lower()]
