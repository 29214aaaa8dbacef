"""Durations and clock times as people write them in scenarios: `90s`, `45min`, `2h`, `1h30m`, `7d`, `07:30`."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|min|m|s)")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}


def parse_duration(value: object) -> float:
    """Seconds from a number (already seconds) or a string of parts like `1h30m`, `45min`, `90s`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 45min, 2h, 7d or a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if text.startswith("-"):
            raise ValueError(f"expected a duration such as 90s, 45min or 2h, not a negative one; got {value!r}")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        parts = _PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT_S[u] for n, u in parts)
    raise ValueError(f"expected a duration such as 90s, 45min, 2h, 7d or a number of seconds; got {value!r}")


def parse_clock(value: object) -> float:
    """Seconds after midnight from `HH:MM` or `HH:MM:SS` (24-hour clock)."""
    if isinstance(value, str):
        m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", value.strip())
        if m and int(m[1]) < 24 and int(m[2]) < 60 and int(m[3] or 0) < 60:
            return int(m[1]) * 3600.0 + int(m[2]) * 60.0 + int(m[3] or 0)
    raise ValueError(f"expected a clock time HH:MM; got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
ClockTime = Annotated[float, BeforeValidator(parse_clock)]


def format_clock(seconds: float) -> str:
    s = int(round(seconds)) % 86400
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}"
