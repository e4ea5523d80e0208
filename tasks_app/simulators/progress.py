"""How far a running simulation got, read from what it prints and writes.

Any task may print a line ``SIMDECK_PROGRESS <fraction>`` (0 to 1) on its
standard output or error; the last one counts. Or it may write the fraction
alone into a small file, :data:`PROGRESS_FILE` at the top of its work
folder, which the machine reads about once a second
(:func:`read_progress_file`). A simulator adapter may know
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

import os
import re
import stat
from pathlib import Path

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


# The progress file: the fraction done, e.g. "0.42", and nothing else but blanks.
PROGRESS_FILE = ".simdeck-progress"
# More than a number's worth is not a progress file.
PROGRESS_FILE_MAX_BYTES = 64
FRACTION = re.compile(rb"[ \t\r\n]*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t\r\n]*")


def read_progress_file(folder: Path) -> float | None:
    """The fraction in ``folder``'s progress file, or None when there is none or it holds no fraction.

    The simulation owns the folder, so the file may be anything: a link is
    not followed (it could point at the machine's own files), a FIFO or a
    device is not read (it would block or never end), and only its first
    bytes are read.
    """
    try:
        fd = os.open(folder / PROGRESS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, PROGRESS_FILE_MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    match = FRACTION.fullmatch(data) if len(data) <= PROGRESS_FILE_MAX_BYTES else None
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 1.0 else None


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
