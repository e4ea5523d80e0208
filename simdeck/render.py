"""Turning tasks and numbers into text, shared by the client and the CLI.

Everything here builds rich renderables; :func:`to_text` makes plain text
of them (``Task.summary``), the CLI prints them to the terminal in colour.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.filesize import decimal
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from simdeck.tasks import TaskInfo

SUCCESS = {"success"}
ON_MACHINE = {"preparing-to-compute", "started", "finalizing", "pending-kill"}
WAITING = {"pending-input", "submitted"}


def status_style(status: str) -> str:
    if status in SUCCESS:
        return "green"
    if status in ON_MACHINE:
        return "yellow"
    if status in WAITING:
        return "cyan"
    return "red"


def duration(seconds: float | None) -> str:
    """A short human duration: 0.42 s, 8.9 s, 2 min 05 s, 1 h 03 min, 2 d 04 h."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def size(n: int | None) -> str:
    return "—" if n is None else decimal(n)


def when(moment: dt.datetime | None) -> str:
    """A timestamp in the reader's local time, to the second."""
    if moment is None:
        return "—"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def parse_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def to_text(renderable: RenderableType, width: int = 100) -> str:
    """Plain text of a renderable, without colours or terminal codes."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, soft_wrap=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


# -- one task ---------------------------------------------------------------------


def task_summary(info: TaskInfo) -> RenderableType:
    """Status with its guidance, where it runs, its timeline, time breakdown and outputs."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    status = Text(info.status_label, style=f"bold {status_style(info.status)}")
    head.add_row("Status", status)
    head.add_row("", info.guidance.what_happened)
    if info.is_terminal and info.status not in SUCCESS:
        head.add_row("", Text(f"Why: {info.guidance.why}", style="dim"))
    head.add_row("", Text(f"What to do: {info.guidance.what_to_do}", style="dim"))
    if info.error_detail:
        head.add_row("Error", Text(info.error_detail, style="red"))
    if info.position_in_queue is not None:
        ahead = info.position_in_queue
        head.add_row("Queue", f"{ahead} task{'s' if ahead != 1 else ''} ahead")
    version = f" {info.simulator_version}" if info.simulator_version else ""
    head.add_row("Simulator", f"{info.simulator}{version}")
    where = f"{info.machine_group} ({info.machine_type})"
    if info.machine:
        where += f", machine {info.machine}"
    head.add_row("Machine group", where)
    head.add_row("Project", f"{info.project}, owner {info.owner}")
    if info.metadata:
        head.add_row("Metadata", ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())))
    if info.time_to_live is not None:
        head.add_row("Time to live", duration(info.time_to_live))

    steps = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    steps.add_column("Status", no_wrap=True)
    steps.add_column("Since", no_wrap=True)
    steps.add_column("Duration", justify="right", no_wrap=True)
    for step in info.timeline:
        length = duration(step.duration) + " (ongoing)" if step.ongoing else duration(step.duration)
        if step.duration is None and not step.ongoing:
            length = ""
        steps.add_row(Text(step.label, style=status_style(step.status)), when(step.at), length)

    tail = Table.grid(padding=(0, 2))
    tail.add_column(style="bold", no_wrap=True)
    tail.add_column()
    phases = [
        ("waiting for input", info.time_breakdown.waiting_for_input),
        ("in queue", info.time_breakdown.in_queue),
        ("preparing", info.time_breakdown.preparing),
        ("computing", info.time_breakdown.computing),
        ("finalizing", info.time_breakdown.finalizing),
    ]
    parts = ", ".join(f"{name} {duration(value)}" for name, value in phases if value is not None)
    total = "so far" if not info.is_terminal else "in all"
    tail.add_row("Time", f"{duration(info.total_time)} {total}" + (f": {parts}" if parts else ""))
    tail.add_row("Outputs", outputs_line(info))
    title = Text.assemble(("Task ", "bold"), (info.id, "bold"))
    return Group(title, head, Text(""), steps, Text(""), tail)


def outputs_line(info: TaskInfo) -> str:
    if info.outputs_available:
        files = info.output_files or 0
        return (
            f"{files} file{'s' if files != 1 else ''}, {size(info.output_size)} "
            f"({size(info.output_archive_size)} zipped)"
        )
    if info.output_files is not None:
        return "removed from the server"
    if info.is_terminal:
        return "none"
    return "stored when the task finishes"


# -- lists of tasks ----------------------------------------------------------------


def tasks_table(items: list[dict]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("ID", no_wrap=True, min_width=25)
    table.add_column("Simulator", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Machine group", overflow="fold")
    table.add_column("Project", overflow="fold")
    table.add_column("Created", no_wrap=True)
    table.add_column("Duration", justify="right", no_wrap=True)
    # Only where a listed simulation reports how far it got: most lists have none.
    reports = any(t.get("progress") is not None for t in items)
    if reports:
        table.add_column("Progress", justify="right", no_wrap=True)
    now = dt.datetime.now(dt.UTC)
    for t in items:
        created = parse_time(t["created_at"])
        ended = parse_time(t["ended_at"])
        length = ((ended or now) - created).total_seconds() if created else None
        table.add_row(
            t["id"],
            t["simulator"],
            Text(t["status_label"], style=status_style(t["status"])),
            t["machine_group"],
            t["project"],
            when(created),
            duration(length),
            *([progress(t, now)] if reports else []),
        )
    return table


def progress(task: dict, now: dt.datetime) -> str:
    """'63%', and the time left when the server has an honest estimate ('63% ~4m 10s left')."""
    fraction = task.get("progress")  # servers before progress reports send none
    if fraction is None:
        return ""
    text = f"{math.floor(fraction * 100)}%"
    eta = parse_time(task.get("progress_eta"))
    if eta is not None:
        text += f" ~{duration(max(0.0, (eta - now).total_seconds()))} left"
    return text


def transfer_bar(hidden: bool = False):
    """A progress bar of bytes sent or received, on stderr when it is a terminal; a context manager."""
    import sys

    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
        disable=hidden or not sys.stderr.isatty(),
    )
