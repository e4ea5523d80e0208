"""What ``Task.wait()`` shows while it waits.

On a terminal: status changes scroll by as lines, and below them one live
area shows either the number of tasks ahead in the queue or the last lines
of stdout/stderr; it disappears when the task ends. Elsewhere (a log file, a
pipe, a notebook's captured output) every status change, queue position
change and new log line is printed once, as plain lines.
"""

from __future__ import annotations

import collections
import functools
import sys
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from simdeck import api, render
from simdeck.errors import SimdeckError

if TYPE_CHECKING:
    from simdeck.tasks import Task, TaskInfo

# Lines of each poll printed when not on a terminal; the rest is counted, not shown.
MAX_LINES_PER_POLL = 50


@functools.cache
def _what_happened(url: str) -> dict[str, str]:
    """Each status's "what happened" text, asked once per server."""
    return {s["value"]: s["what_happened"] for s in api.client().get("/statuses")}


class WaitDisplay:
    def __init__(self, task: Task, *, silent: bool):
        from simdeck.tasks import COMPUTING, FOLLOW_LINES

        self.task = task
        self.silent = silent
        self.console = Console(file=sys.stdout, highlight=False)
        self.live_mode = self.console.is_terminal and not silent
        self.live: Live | None = None
        self.status: str | None = None
        self.printed_steps = 0
        self.position: int | None = None
        self.offsets: dict[str, int | None] = {"stdout": None, "stderr": None}
        self.recent: collections.deque[tuple[str, str]] = collections.deque(maxlen=FOLLOW_LINES)
        self.partial = {"stdout": "", "stderr": ""}
        self.computing = COMPUTING
        self.away = False
        # True when log lines are pushed in (``feed``) rather than fetched here.
        self.lines_fed = False
        self.fed: list[tuple[str, str]] = []
        self.flushed = False

    # -- lifetime ----------------------------------------------------------------

    def __enter__(self) -> WaitDisplay:
        if self.silent:
            return self
        self.say(
            Text(f"Waiting for task {self.task.id} (Ctrl+C stops waiting; the task keeps running).", "dim")
        )
        if self.live_mode:
            self.live = Live(console=self.console, transient=True, auto_refresh=False)
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def say(self, text: Text | str) -> None:
        if not self.silent:
            self.console.print(text, soft_wrap=True)

    def refresh(self) -> None:
        if self.live is None:
            return
        parts = []
        if self.status == "submitted" and self.position is not None:
            parts.append(Text(f"  Tasks ahead in the queue: {self.position}", "cyan"))
        if self.status in self.computing and self.recent:
            body = Text()
            for stream, line in self.recent:
                body.append(line + "\n", style="red" if stream == "stderr" else "")
            body.rstrip()
            parts.append(
                Panel(body, title="last lines of stdout and stderr", title_align="left", border_style="dim")
            )
        self.live.update(Group(*parts), refresh=True)

    # -- what the waiting loop reports ----------------------------------------------

    def update(self, status: str, position: int | None) -> None:
        if self.silent:
            return
        if status != self.status:
            if self.status in self.computing:
                # Lines printed before the change come before the news of it.
                self.follow_logs()
            self.status = status
            self.print_new_steps()
        if status == "submitted" and position != self.position:
            self.position = position
            if not self.live_mode:
                self.say(f"  Tasks ahead in the queue: {position}")
        if status in self.computing:
            self.follow_logs()
        self.refresh()

    def print_new_steps(self) -> None:
        try:
            info = self.task.get_info()
            texts = _what_happened(api.client().url)
        except SimdeckError:
            return  # shown at the next change, or at the end
        steps = info.timeline
        if self.printed_steps == 0:
            steps = steps[-1:]  # what happened before the wait began is history
            self.printed_steps = len(info.timeline) - 1
        else:
            steps = steps[self.printed_steps :]
        # The timeline may already be ahead of the status this update is about;
        # later steps wait for their own update, after the lines printed before them.
        reached = next((i for i, step in enumerate(steps) if step.status == self.status), None)
        if reached is not None:
            steps = steps[: reached + 1]
        for step in steps:
            line = Text("■ ", style=render.status_style(step.status))
            line.append(step.label, style=f"bold {render.status_style(step.status)}")
            line.append(f" · {texts.get(step.status, '')}")
            self.say(line)
        self.printed_steps += len(steps)

    def follow_logs(self) -> None:
        from simdeck.tasks import FOLLOW_LINES

        if self.lines_fed:
            return  # the lines arrive through feed()
        first = self.offsets["stdout"] is None
        try:
            answer = self.task.read_logs(self.offsets, tail_lines=FOLLOW_LINES if first else 0)
        except SimdeckError:
            return  # the machine was busy; the next poll catches up
        new: list[tuple[str, str]] = []
        for stream in ("stdout", "stderr"):
            chunk = answer[stream]
            self.offsets[stream] = chunk["next_offset"]
            new.extend(self.whole_lines(stream, chunk["text"]))
        self.show_lines(new)

    def whole_lines(self, stream: str, text: str) -> list[tuple[str, str]]:
        text = self.partial[stream] + text
        *lines, self.partial[stream] = text.split("\n")
        return [(stream, line) for line in lines]

    def feed(self, pieces: list[tuple[str, str]]) -> None:
        """Log text pushed by the server; shown at the next ``flush_lines``."""
        for stream, text in pieces:
            self.fed.extend(self.whole_lines(stream, text))

    def flush_lines(self) -> None:
        from simdeck.tasks import FOLLOW_LINES

        new, self.fed = self.fed, []
        if not self.flushed:
            # What was printed before the wait began: its end only, as over HTTP.
            new = new[-FOLLOW_LINES:]
            self.flushed = True
        self.show_lines(new)
        self.refresh()

    def show_lines(self, new: list[tuple[str, str]]) -> None:
        self.recent.extend(new)
        if self.live_mode or not new:
            return
        for stream, line in new[:MAX_LINES_PER_POLL]:
            self.say(
                Text(
                    f"  {'err' if stream == 'stderr' else 'out'}│ {line}", "red" if stream == "stderr" else ""
                )
            )
        if len(new) > MAX_LINES_PER_POLL:
            skipped = len(new) - MAX_LINES_PER_POLL
            self.say(Text(f"  … {skipped} more lines (simdeck logs {self.task.id} shows them all)", "dim"))

    def disconnected(self, exc: Exception) -> None:
        if not self.away:
            self.away = True
            self.say(Text(f"  Lost contact with the server ({exc}); retrying…", "yellow"))

    def reconnected(self) -> None:
        self.away = False
        self.say(Text("  Back in contact with the server.", "green"))

    def interrupted(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        print(
            f"\nStopped waiting. Task {self.task.id} keeps running; "
            f"follow it with: simdeck logs {self.task.id}",
            file=sys.stderr,
        )

    def finished(self, status: str, info: TaskInfo) -> None:
        if self.silent:
            return
        self.__exit__()
        self.print_new_steps()
        if status == "failed":
            self.print_stderr_tail(info)
        elif info.is_failed and info.error_detail:
            self.say(Text(f"  {info.error_detail}", "red"))
        took = f"  Took {render.duration(info.total_time)}"
        if info.computation_time is not None:
            took += f", {render.duration(info.computation_time)} of it computing"
        self.say(Text(took + ".", "dim"))
        from simdeck.tasks import output_root

        logs = output_root() / self.task.id / "outputs"
        if (logs / "stdout.txt").exists():
            self.say(Text(f"  Its stdout.txt and stderr.txt are in {logs}/", "dim"))

    def print_stderr_tail(self, info: TaskInfo) -> None:
        from simdeck.tasks import FAILURE_LINES

        try:
            chunk = self.task.read_logs({"stderr": None}, tail_lines=FAILURE_LINES)["stderr"]
        except SimdeckError:
            chunk = {"text": ""}
        lines = chunk["text"].rstrip("\n").split("\n") if chunk["text"] else []
        code = f" with code {info.exit_code}" if info.exit_code is not None else ""
        if not lines:
            self.say(Text(f"  The simulator exited{code} and wrote nothing to stderr.", "red"))
            return
        self.say(Text(f"  The simulator exited{code}. Last lines of stderr:", "red"))
        for line in lines:
            self.say(Text(f"  err│ {line}", "red"))
