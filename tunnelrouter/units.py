"""How the configuration writes a duration: a whole number and its unit (``500ms``, ``5s``,
``10m``), so that a bare ``5`` is never guessed to be seconds or minutes. Shared by the
tunnels' keys and the forwards'."""

import re
from typing import Annotated

from pydantic import PlainValidator

MAX_DURATION = 365 * 86400.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value) -> float:
    """Seconds. ``0`` alone needs no unit; anything else does."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if not isinstance(value, str):
        raise ValueError("a duration with its unit, like 500ms, 5s, 10m or 1h (or 0)")
    found = re.fullmatch(r"(\d{1,12})(ms|s|m|h|d)", value)
    if not found:
        raise ValueError("a whole number and a unit (ms, s, m, h, d), like 5s or 10m")
    seconds = int(found.group(1)) * _UNITS[found.group(2)]
    if seconds > MAX_DURATION:
        raise ValueError("longer than a year")
    return seconds


Duration = Annotated[float, PlainValidator(parse_duration)]
