"""What every number and text a user gives must be, checked in one place.

The API's schemas and the services below them (which the console and the
scheduler use too) call these checks, so a value is refused the same way
whichever door it came through: with :class:`~tasks_app.services.Refused`
(400 ``invalid``) naming the field, the problem and what to send instead.

Numbers must be finite and within the range :data:`NUMBERS` gives for their
field (docs/api.md lists them). Texts must be storable: PostgreSQL keeps no
NUL character, and a lone UTF-16 surrogate (JSON's ``"\\ud800"``) is no
character at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tasks_app.errors import Refused

# A year: the longest any machine group may live or idle, and any task may run.
YEAR_MINUTES = 365 * 24 * 60


@dataclass(frozen=True)
class Bounds:
    """The range a number must be in; ``above`` makes the low end excluded (more than it)."""

    low: float
    high: float
    unit: str
    integer: bool = False
    above: bool = False

    def contains(self, value: float) -> bool:
        low_ok = value > self.low if self.above else value >= self.low
        return low_ok and value <= self.high

    def describe(self) -> str:
        low = f"more than {self.low:g}" if self.above else f"at least {self.low:g}"
        kind = "a whole number" if self.integer else "a number"
        return f"{kind} of {self.unit}, {low} and at most {self.high:g}"


NUMBERS: dict[str, Bounds] = {
    "num_machines": Bounds(1, 64, "machines", integer=True),
    "min_machines": Bounds(0, 64, "machines", integer=True),
    "max_machines": Bounds(1, 64, "machines", integer=True),
    "data_disk_gb": Bounds(1, 65536, "GB", integer=True),
    "auto_resize_disk_max_gb": Bounds(1, 65536, "GB", integer=True),
    "max_idle_time": Bounds(0, YEAR_MINUTES, "minutes", above=True),
    "auto_terminate_minutes": Bounds(0, YEAR_MINUTES, "minutes", above=True),
    "time_to_live": Bounds(1, YEAR_MINUTES * 60, "seconds", integer=True),
}
# Quotas, which administrators set (manage.py quota).
QUOTAS: dict[str, Bounds] = {
    "max_machines": Bounds(0, 100_000, "machines", integer=True),
    "max_group_ttl_minutes": Bounds(0, YEAR_MINUTES, "minutes"),
    "max_task_ttl_seconds": Bounds(0, YEAR_MINUTES * 60, "seconds", integer=True),
}


def number(field: str, value, *, bounds: Bounds | None = None):
    """``value`` checked against the range of ``field``; None stays None (no limit)."""
    if value is None:
        return None
    bounds = bounds or NUMBERS[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused(f"{field} must be {bounds.describe()}; got {value!r}.", field=field)
    if not math.isfinite(value):
        raise Refused(
            f"{field} must be a finite number ({bounds.describe()}), not {value!r}. "
            "Give a number in that range, or leave it out (null) for no limit where that is allowed.",
            field=field,
        )
    if bounds.integer and value != int(value):
        raise Refused(f"{field} must be {bounds.describe()}; got {value:g}.", field=field)
    if not bounds.contains(value):
        raise Refused(
            f"{field} is {value:g}; it must be {bounds.describe()}. Give a value in that range.",
            field=field,
        )
    return int(value) if bounds.integer else float(value)


# -- texts -------------------------------------------------------------------------


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    if "\x00" in value:
        return "holds a NUL character (\\0), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        return (
            f"holds a lone surrogate (U+{code:04X}), which is not a character; "
            "send valid Unicode (in JSON, a character beyond U+FFFF is a pair of \\u escapes)"
        )
    return None


def text(field: str, value: str) -> str:
    """``value`` when it can be stored; refused, naming ``field``, when it cannot."""
    problem = text_problem(value)
    if problem:
        raise Refused(f"{field} {problem}. Remove or replace that character.", field=field)
    return value


def texts(field: str, value) -> None:
    """Check every text in ``value``: a string, or the keys and values of mappings and lists in it."""
    if isinstance(value, str):
        text(field, value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            problem = text_problem(key) if isinstance(key, str) else None
            if problem:
                raise Refused(
                    f"{field} has a key, {_shown(key)!r}, that {problem}. Remove or replace that character.",
                    field=field,
                )
            texts(f"{field}.{_shown(key)}", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            texts(f"{field}.{index}", item)


def _shown(key) -> str:
    """A key as a field path may name it: unprintable characters escaped."""
    return str(key).encode("utf-8", "backslashreplace").decode().replace("\x00", "\\0")
