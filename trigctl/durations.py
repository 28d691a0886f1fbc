"""Durations: "500ms", "5s", "2m", "1h", "1d", "1h30m", or a number of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")
MAX_SECONDS = 100 * 365 * 86400.0  # beyond this, due times stop being dates (and `list` could not show them)


class DurationError(ValueError):
    pass


def is_duration(value: object) -> bool:
    try:
        parse_duration(value)
    except DurationError:
        return False
    return True


_PARSED: dict[str, float] = {}  # text -> seconds: a big config repeats a few durations thousands of times


def parse_duration(value: object) -> float:
    """Return seconds. Raises DurationError with a message naming the value."""
    if type(value) is str:
        seconds = _PARSED.get(value)
        if seconds is not None:
            return seconds
    seconds = _parse(value)
    if seconds > MAX_SECONDS:
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        raise DurationError(f"{shown} is not a duration (at most 100 years)")
    if type(value) is str and len(_PARSED) < 1024:
        _PARSED[value] = seconds
    return seconds


def _parse(value: object) -> float:
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise DurationError(f"{value!r} is not a duration (must be >= 0)")
        return float(value)
    if not isinstance(value, str):
        raise DurationError(f"{value!r} is not a duration")
    text = value.strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not _WHOLE.match(text):
        raise DurationError(f'"{value}" is not a duration (use e.g. 500ms, 5s, 2m, 1h, 1d)')
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


def parse_age(value: str) -> float:
    """A duration given for something destructive (`prune --older-than`): a bare number is refused,
    since "30" may mean days to the user and seconds to trigctl."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and re.fullmatch(r"\d+(?:\.\d+)?", text):
        raise DurationError(f"{text!r} has no unit: write {text}d for days, {text}h for hours or {text}s for seconds")
    return parse_duration(value)


def format_duration(seconds: float | None) -> str:
    """Short human form: 500ms, 5s, 2m, 1h30m."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:g}s" if seconds == int(seconds) else f"{seconds:.1f}s"
    out = []
    rest = int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out[:2])
