"""Durations as people write them: ``timedelta(hours=2)``, ``"2 hours"``, ``"90 minutes"``, ``"1h30m"``.

A plain number keeps the unit of the argument it is given to (minutes for a
machine group's idle time, seconds for a task's time to live), as before.
"""

from __future__ import annotations

import datetime as dt
import re

UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?", re.IGNORECASE)


def seconds(value: dt.timedelta | str | float | None, name: str, bare_unit: int = 1) -> float | None:
    """``value`` in seconds; a bare number counts ``bare_unit`` seconds each.

    A number goes through as it is, for the server to judge; a timedelta or
    text must be a length of time. A ValueError names ``name``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{name} is a duration, not {value!r}.")
    if isinstance(value, int | float):
        return float(value) * bare_unit
    if isinstance(value, dt.timedelta):
        total = value.total_seconds()
    elif isinstance(value, str):
        total = _parse(value, name, bare_unit)
    else:
        raise ValueError(
            f"{name} is a duration (a timedelta, a number or text such as '2 hours'), not {value!r}."
        )
    if total <= 0:
        raise ValueError(f"{name} must be longer than nothing, not {value!r}.")
    return total


def minutes(value: dt.timedelta | str | float | None, name: str) -> float | None:
    """``value`` in minutes; a bare number is minutes already."""
    total = seconds(value, name, bare_unit=60)
    return None if total is None else total / 60


def until(moment: dt.datetime, name: str) -> float:
    """Minutes from now until ``moment`` (a naive datetime is local time); it must be ahead."""
    if not isinstance(moment, dt.datetime):
        raise ValueError(f"{name} is a datetime, not {moment!r}.")
    now = dt.datetime.now(moment.tzinfo) if moment.tzinfo else dt.datetime.now()
    left = (moment - now).total_seconds() / 60
    if left <= 0:
        raise ValueError(f"{name} is {moment.isoformat()}, which has passed; give a moment ahead.")
    return left


def _parse(text: str, name: str, bare_unit: int) -> float:
    stripped = text.strip().lower()
    try:
        return float(stripped) * bare_unit
    except ValueError:
        pass
    total, at = 0.0, 0
    for match in _PART.finditer(stripped):
        if match.start() != at or match.group(2) not in UNITS:
            break
        total += float(match.group(1)) * UNITS[match.group(2)]
        at = match.end()
    else:
        if at == len(stripped) and at:
            return total
    raise ValueError(
        f"Cannot read {text!r} as a duration for {name}; write it like '90 minutes', '2 hours', "
        "'1h30m' or '45s', or give a datetime.timedelta."
    )
