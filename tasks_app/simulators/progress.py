"""How far a running simulation got, read from what it prints and writes.

Any task may print a line ``SIMDECK_PROGRESS <fraction>`` (0 to 1) on its
standard output or error; the last one counts. A simulator adapter may know
more about its program: :meth:`Simulator.progress_reader` returns a reader
of its own, a subclass of :class:`ProgressReader`, which sees every batch of
output lines (:meth:`~ProgressReader.lines`) and is asked about once a
second to look at the work folder (:meth:`~ProgressReader.look`), for
simulators that tell their progress only through the files they write.

Readers run on the machine, beside the simulation: ``lines`` in the threads
copying its output, ``look`` in the thread watching it. Both must be cheap
(a chatty simulator prints thousands of lines a second) and never raise.
"""

from __future__ import annotations

import re

MARK = b"SIMDECK_PROGRESS"
# One line: the mark, blanks, a decimal number. Anything else on the line,
# or a number outside 0..1, is not a report (a simulation may echo the mark
# in other text).
REPORT = re.compile(rb"^[ \t]*SIMDECK_PROGRESS[ \t]+([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t]*\r?$", re.MULTILINE)


def reported(data: bytes) -> float | None:
    """The last valid ``SIMDECK_PROGRESS`` fraction in ``data`` (whole lines), or None."""
    if MARK not in data:  # almost every batch: no regular expression at all
        return None
    found = None
    for match in REPORT.finditer(data):
        value = float(match.group(1))
        if 0.0 <= value <= 1.0:
            found = value
    return found


class ProgressReader:
    """The generic reader: ``SIMDECK_PROGRESS`` lines only."""

    def lines(self, data: bytes) -> float | None:
        """The fraction done according to ``data``, a batch of whole lines, or None if it tells nothing."""
        return reported(data)

    def look(self) -> float | None:
        """The fraction done according to the work folder now, or None if it tells nothing."""
        return None


class Furthest(ProgressReader):
    """A reader of the simulator's own output that never goes back.

    Programs that run after the solver often print the same markers again
    (OpenFOAM's reconstructPar lists every time it rebuilds); the furthest
    point reached is what the task has done. A ``SIMDECK_PROGRESS`` line
    in the same batch wins over the simulator's own markers.
    """

    def __init__(self) -> None:
        self.furthest: float | None = None

    def lines(self, data: bytes) -> float | None:
        told = reported(data)
        if told is not None:
            return told
        found = self.fraction(data)
        if found is None:
            return None
        found = min(1.0, max(0.0, found))
        if self.furthest is None or found > self.furthest:
            self.furthest = found
        return self.furthest

    def fraction(self, data: bytes) -> float | None:
        """The fraction done according to the simulator's own lines in ``data``, or None."""
        raise NotImplementedError
