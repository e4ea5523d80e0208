"""How far a running simulation got, and when it will end if it keeps its pace.

The simulator's reader (:mod:`tasks_app.simulators.progress`) hears the
fraction done; :class:`ProgressWatch` turns it into what the task records:
the fraction, and an estimated end only while the pace is steady. An
estimate that jumps about is worse than none, so it is given only when

* the fraction rose at least :data:`MIN_POINTS` times over at least
  :data:`MIN_SPAN_SECONDS`,
* the pace over the older half of the recent reports and over the newer
  half differ by at most :data:`STEADY_TOLERANCE` of the faster one, and
* the last rise is recent: no longer ago than a few of the usual gaps
  between rises (a simulation that stalls loses its estimate).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path

from django.utils import timezone

from tasks_app.simulators.progress import ProgressReader, read_progress_file

log = logging.getLogger(__name__)

MIN_POINTS = 4
MIN_SPAN_SECONDS = 4.0
STEADY_TOLERANCE = 0.3
# Reports kept for judging the pace: the latest rises only, so a slow start
# does not weigh on the estimate for ever.
WINDOW = 120
# A rise is overdue after this many usual gaps (and at least STALL_SECONDS).
STALL_GAPS = 3.0
STALL_SECONDS = 10.0


class Pace:
    """The recent rises of the fraction done, as (monotonic seconds, fraction)."""

    def __init__(self) -> None:
        self.points: collections.deque[tuple[float, float]] = collections.deque(maxlen=WINDOW)

    def add(self, at: float, fraction: float) -> None:
        if self.points and fraction < self.points[-1][1]:
            self.points.clear()  # it went back (a new stage starting over): a new pace
        if not self.points or fraction > self.points[-1][1]:
            self.points.append((at, fraction))

    def remaining_seconds(self, now: float) -> float | None:
        """Seconds left at the steady pace, counted from ``now``; None unless the pace is steady."""
        points = self.points
        if len(points) < MIN_POINTS:
            return None
        (t0, p0), (t1, p1) = points[0], points[-1]
        span = t1 - t0
        if span < MIN_SPAN_SECONDS or p1 >= 1.0:
            return None
        if now - t1 > max(STALL_SECONDS, STALL_GAPS * span / (len(points) - 1)):
            return None
        middle = min(points, key=lambda point: abs(point[0] - (t0 + span / 2)))
        tm, pm = middle
        if not t0 < tm < t1:
            return None
        older, newer = (pm - p0) / (tm - t0), (p1 - pm) / (t1 - tm)
        if abs(older - newer) > STEADY_TOLERANCE * max(older, newer):
            return None
        rate = (p1 - p0) / span
        return max(0.0, (1.0 - p1) / rate - (now - t1))


class ProgressWatch:
    """One run's progress: fed by the output threads, read by the watch about once a second."""

    def __init__(
        self, reader: ProgressReader, clock: Callable[[], float] = time.monotonic, folder: Path | None = None
    ):
        self.reader = reader
        self.clock = clock
        self.folder = folder  # the work folder, where the simulation may keep its progress file
        self.printed: float | None = None  # the last SIMDECK_PROGRESS (or the reader's) from the output
        self.filed: float | None = None  # the last fraction its progress file held
        self.pace = Pace()
        self.recorded: tuple[float | None, dt.datetime | None] = (None, None)

    def lines(self, data: bytes) -> None:
        """A batch of output lines (called from the threads copying the output)."""
        try:
            fraction = self.reader.lines(data)
        except Exception:  # a reader's fault must not touch the simulation's log
            log.warning("The progress reader failed on a batch of output", exc_info=True)
            return
        if fraction is not None:
            self.printed = fraction

    def current(self) -> float | None:
        if self.printed is not None:  # what the simulation says outright comes first
            return self.printed
        if self.folder is not None:
            # A file caught half written holds no fraction: the last one it held stands.
            found = read_progress_file(self.folder)
            if found is not None:
                self.filed = found
            if self.filed is not None:
                return self.filed
        try:
            return self.reader.look()
        except Exception:
            log.warning("The progress reader failed to look at the work folder", exc_info=True)
            return None

    def due(self, ended: bool = False) -> tuple[float, dt.datetime | None] | None:
        """What to record now, or None when what was recorded still holds.

        The estimate is recorded again only when it moved by more than a
        few seconds (and more than a twentieth of the time left), so a
        steady simulation costs a write when its fraction moves, not every
        second.
        """
        fraction = self.current()
        if fraction is None:
            return None
        now = self.clock()
        self.pace.add(now, fraction)
        left = None if ended else self.pace.remaining_seconds(now)
        eta = None if left is None else timezone.now() + dt.timedelta(seconds=round(left))
        fraction = round(fraction, 3)
        old_fraction, old_eta = self.recorded
        if fraction == old_fraction and (eta is None) == (old_eta is None):
            if eta is None or abs((eta - old_eta).total_seconds()) <= max(5.0, 0.05 * left):
                return None
        self.recorded = (fraction, eta)
        return self.recorded
