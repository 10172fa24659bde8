"""Parsing of the small value languages used in fleet files: durations, rates, percentages.

Every parser raises ``ValueError`` with a short human message; the config loader turns it
into a ``ConfigError`` that names the file, key and line.
"""

from __future__ import annotations

import math
import re

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
               "h": 3600.0, "hour": 3600.0}


def parse_duration(value: object) -> float:
    """'10m', '1h30m', '250ms', '2s' or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '10m' or '30s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number >= 0, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '10m' or '30s', got {value!r}")
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"expected a duration like '10m', '1h30m' or '250ms', got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """Seconds -> short text: '6d 22h 40m', '10m', '1.5s'."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs and not days:
        parts.append(f"{secs}s")
    return " ".join(parts) or "0s"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """'1 host', '2 hosts', '0 hosts' (``nouns``: an irregular plural)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def parse_percent(value: object, *, allow_zero: bool = True) -> float:
    """'1%', '12.5%' or a number 0..100 -> percent as a float. Over 100 is an error."""
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage like '25%', got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f"expected a percentage like '25%', got {value!r}")
        try:
            number = float(text[:-1])
        except ValueError:
            raise ValueError(f"expected a percentage like '25%', got {value!r}") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise ValueError(f"expected a percentage like '25%', got {value!r}")
    if not math.isfinite(number) or number < 0 or number > 100:
        raise ValueError(f"a percentage must be between 0% and 100%, got {value!r}")
    if not allow_zero and number == 0:
        raise ValueError(f"a percentage must be above 0%, got {value!r}")
    return number


def parse_count_or_percent(value: object) -> int | float:
    """An int >= 1 (a host count) or 'N%' (returned as a float percent)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a host count or a percentage, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a host count must be at least 1, got {value}")
        return value
    if isinstance(value, str) and value.strip().endswith("%"):
        return parse_percent(value, allow_zero=False)
    raise ValueError(f"expected a host count (like 5) or a percentage (like '20%'), got {value!r}")


def resolve_count(value: int | float, total: int) -> int:
    """A count or a percent of ``total`` -> a host count, at least 1 when total > 0."""
    if total <= 0:
        return 0
    if isinstance(value, int):
        return min(value, total)
    return max(1, min(total, math.ceil(total * value / 100.0 - 1e-9)))


def parse_rate(value: object) -> float:
    """'1/min', '1/s', '10/h', '2/30s' -> hosts per second."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"expected a rate like '1/min' or '1/s', got {value!r}")
    count_text, _, per_text = value.strip().partition("/")
    try:
        count = float(count_text)
    except ValueError:
        raise ValueError(f"expected a rate like '1/min' or '1/s', got {value!r}") from None
    per_text = per_text.strip().lower()
    if per_text in _RATE_UNITS:
        per = _RATE_UNITS[per_text]
    else:
        try:
            per = parse_duration(per_text)
        except ValueError:
            raise ValueError(f"expected a rate like '1/min' or '1/s', got {value!r}") from None
    if count <= 0 or per <= 0 or not math.isfinite(count):
        raise ValueError(f"a rate must be positive, got {value!r}")
    return count / per
