"""Tasks: follow, wait for, kill and collect what a ``run()`` started.

A :class:`Task` is only a handle on a task id; any number of them may point
at the same task and none of them copies it. Every question asks the server,
so the answer is always current.

    task = simdeck.tasks.Task("i4ir3kvv62odsfrhko4y8w2an")
    task.wait()
    if task.status == "completed":
        task.download_outputs()
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simdeck import api, render
from simdeck import stream as live
from simdeck.errors import InvalidTaskId, NotFound, Refused, ServerError, ServerUnreachable, SimdeckError

if TYPE_CHECKING:
    from simdeck.follow import WaitDisplay

# The seeds' and the hosted service's spellings, mapped to ours.
ALIASES = {
    "completed": "success",
    "in-queue": "submitted",
    "computation-started": "started",
    "computation-ended": "finalizing",
    "executer-terminated": "executor-terminated",
    "executer-terminated-by-user": "executor-terminated-by-user",
    "executer-terminated-ttl-exceeded": "executor-terminated-ttl-exceeded",
    "executer-failed": "executor-failed",
}
TERMINAL = {
    "success",
    "failed",
    "killed",
    "zombie",
    "spot-instance-preempted",
    "executor-terminated",
    "executor-terminated-by-user",
    "executor-terminated-ttl-exceeded",
    "executor-failed",
    "ttl-exceeded",
}
# Not ended yet: waiting for input, queued or on a machine.
ACTIVE_STATUSES = {
    "pending-input",
    "submitted",
    "preparing-to-compute",
    "started",
    "finalizing",
    "pending-kill",
}
# On a machine: what is_running() answers true for.
RUNNING = {"preparing-to-compute", "started", "finalizing", "pending-kill"}
# While these last, the simulator may be printing: wait() follows its logs.
COMPUTING = {"started", "pending-kill", "finalizing"}
# While the simulator runs its log is open; from finalizing on it has ended.
LOG_OPEN = {"started", "pending-kill"}
TASK_ID = re.compile(r"[a-z0-9]{25}")
# The names a task's logs go by among its files, on the machine and in its outputs.
LOG_FILES = ("stdout.txt", "stderr.txt")
# How long wait() keeps trying while the server is away (a restart, a network blip).
MAX_OUTAGE_SECONDS = 15 * 60
# wait(): with no news for this long, the status is asked for once over HTTP.
QUIET_CHECK_SECONDS = 10.0
# wait(): how long the last lines may take to arrive after the task left its machine.
LOG_DRAIN_SECONDS = 5.0
FOLLOW_LINES = 50
FAILURE_LINES = 10


def output_root() -> Path:
    """Where downloads go unless told otherwise: ``SIMDECK_OUTPUT_DIR`` or ``simdeck_output``."""
    return Path(os.environ.get("SIMDECK_OUTPUT_DIR") or "simdeck_output")


def canonical(status: str) -> str:
    s = status.strip().lower()
    return ALIASES.get(s, s)


class TaskStatus(str):
    """A status string that also equals its other spellings (``"completed"`` == ``"success"``)."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return canonical(self) == canonical(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(canonical(self))


# -- what the server tells about a task ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Guidance:
    what_happened: str
    why: str
    what_to_do: str


@dataclasses.dataclass(frozen=True)
class StatusPeriod:
    """One status in the task's timeline: when it began and how long it lasted (seconds)."""

    status: TaskStatus
    label: str
    at: dt.datetime
    duration: float | None
    ongoing: bool


@dataclasses.dataclass(frozen=True)
class TimeBreakdown:
    """Seconds spent in each phase; None for a phase the task has not reached."""

    waiting_for_input: float | None
    in_queue: float | None
    preparing: float | None
    computing: float | None
    finalizing: float | None


@dataclasses.dataclass
class Metric:
    """One measure under Inductiva's name: a label and its value (None when not measured)."""

    label: str
    value: float | int | None = None


@dataclasses.dataclass(frozen=True)
class Executer:
    """The machine that ran the task, with the attribute names of Inductiva's client."""

    uuid: str | None  # the machine's name: Simdeck names machines uniquely
    vm_name: str | None
    vm_type: str
    cpu_count_logical: int | None
    cpu_count_physical: int | None
    memory: float | None  # GB
    n_mpi_hosts: int
    host_type: str  # the provider: local or slurm
    error_detail: str


class TimeMetrics:
    """Seconds per phase, by Inductiva's names; each is a :class:`Metric` (``.value``)."""

    def __init__(self, info: TaskInfo):
        phases = info.time_breakdown
        self.total_seconds = Metric("Total seconds", info.total_time)
        self.input_upload_seconds = Metric("Input upload", phases.waiting_for_input)
        self.queue_time_seconds = Metric("Time in queue", phases.in_queue)
        # Simdeck runs simulators installed on the machine: there is no image to fetch.
        self.container_image_download_seconds = Metric("Container image download", None)
        # Preparing is fetching the input and unpacking it, measured as one phase.
        self.input_download_seconds = Metric("Input download and decompression", phases.preparing)
        self.input_decompression_seconds = Metric("Input decompression", None)
        self.computation_seconds = Metric("Computation", phases.computing)
        self.output_upload_seconds = Metric("Output upload", phases.finalizing)


class DataMetrics:
    """Sizes of the outputs, by Inductiva's names; each is a :class:`Metric` (``.value``)."""

    def __init__(self, info: TaskInfo):
        self.output_zipped_size_bytes = Metric("Size of zipped output", info.output_archive_size)
        self.output_size_bytes = Metric("Size of unzipped output", info.output_size)
        self.output_total_files = Metric("Number of output files", info.output_files)


class TaskInfo(Mapping):
    """Everything the server knows about a task, at the moment it was asked.

    Read it by attribute (``info.machine_type``, ``info.time_breakdown.computing``)
    or, as the JSON the API sent, by key (``info["status"]``).
    ``str(info)`` is the same readable summary as ``Task.summary``.

    Scripts written for Inductiva's client find its names too: ``task_id``,
    ``executer``, ``time_metrics``, ``data_metrics``, ``create_time`` and the
    other ``*_time`` moments, ``storage_path``, ``status_history``,
    ``estimated_computation_cost``, ``is_submitted`` and ``is_running``.
    """

    def __init__(self, data: dict):
        self._data = data
        self.id: str = data["id"]
        self.status = TaskStatus(data["status"])
        self.status_label: str = data["status_label"]
        self.is_terminal: bool = data["is_terminal"]
        self.is_failed: bool = self.is_terminal and canonical(self.status) != "success"
        self.guidance = Guidance(**data["guidance"])
        self.simulator: str = data["simulator"]
        self.simulator_version: str = data["simulator_version"]
        # False only where an admin turned sandboxes off; None until the simulator starts.
        self.sandboxed: bool | None = data.get("sandboxed")
        self.parameters: dict = data["parameters"]
        self.metadata: dict[str, str] = data["metadata"]
        self.project: str = data["project"]
        self.owner: str = data["owner"]
        self.machine_group: str = data["machine_group"]
        self.machine_type: str = data["machine_type"]
        self.machine: str | None = data["machine"]
        self.attempt: int = data["attempt"]
        self.resubmit_on_preemption: bool = data["resubmit_on_preemption"]
        self.time_to_live: int | None = data["time_to_live_seconds"]
        self.created_at = render.parse_time(data["created_at"])
        self.queued_at = render.parse_time(data["queued_at"])
        self.preparing_at = render.parse_time(data["preparing_at"])
        self.started_at = render.parse_time(data["started_at"])
        self.finalizing_at = render.parse_time(data["finalizing_at"])
        self.ended_at = render.parse_time(data["ended_at"])
        self.exit_code: int | None = data["exit_code"]
        self.error_detail: str = data["error_detail"]
        self.input_size: int | None = data["input_size"]
        self.output_size: int | None = data["output_size"]
        self.output_files: int | None = data["output_files"]
        self.output_archive_size: int | None = data.get("output_archive_size")
        self.outputs_available: bool = data.get("outputs_available", False)
        self.position_in_queue: int | None = data.get("position_in_queue")
        # Chained tasks: the storage paths it takes as inputs, the tasks they come from and those
        # taking its files; the storage folder its outputs are also kept in.
        self.remote_assets: list[str] = data.get("remote_assets", [])
        self.inputs_from: list[str] = data.get("inputs_from", [])
        self.used_by: list[str] = data.get("used_by", [])
        self.storage_dir: str = data.get("storage_dir", "")
        self.timeline = [
            StatusPeriod(
                status=TaskStatus(step["status"]),
                label=step["label"],
                at=render.parse_time(step["at"]),
                duration=step["duration_seconds"],
                ongoing=step["ongoing"],
            )
            for step in data.get("timeline", [])
        ]
        self.time_breakdown = TimeBreakdown(**data["time_breakdown"])
        self.total_time: float = data["total_time_seconds"]
        self.computation_time: float | None = data["computation_time_seconds"]
        # How far the simulation got (0 to 1) while it computes, and its estimated end at a steady pace.
        self.progress: float | None = data.get("progress")
        self.progress_eta = render.parse_time(data.get("progress_eta"))
        # Core-seconds, memory GB-hours and the estimated cost at its machine type's price (servers
        # before accounting send none).
        self.usage: dict = data.get("usage") or {}
        self.core_seconds: float | None = self.usage.get("core_seconds")
        self.estimated_cost: float | None = self.usage.get("estimated_cost")
        self.currency: str | None = self.usage.get("currency")
        self._inductiva_names(data)

    def _inductiva_names(self, data: dict) -> None:
        """The same facts under the names Inductiva's TaskInfo gives them."""
        self.task_id = self.id
        self.status_alias = self.status_label
        self.is_submitted = canonical(self.status) == "submitted"
        self.is_running = canonical(self.status) in RUNNING
        self.storage_path = self.id  # the task's folder: <id>/outputs/… names its outputs
        self.create_time = self.created_at
        self.input_submit_time = self.queued_at
        self.start_time = self.preparing_at
        self.computation_start_time = self.started_at
        self.computation_end_time = self.finalizing_at
        self.end_time = self.ended_at
        self.estimated_computation_cost = self.estimated_cost
        self.status_history = [
            {"status": str(step.status), "timestamp": step.at, "duration_seconds": step.duration}
            for step in self.timeline
        ]
        self.time_metrics = TimeMetrics(self)
        self.data_metrics = DataMetrics(self)
        # A task that never reached a machine has no executer, as in Inductiva's client.
        self.executer = (
            Executer(
                uuid=self.machine,
                vm_name=self.machine,
                vm_type=self.machine_type,
                cpu_count_logical=data.get("machine_vcpus"),
                cpu_count_physical=data.get("machine_vcpus"),
                memory=data.get("machine_memory_gb"),
                n_mpi_hosts=1,
                host_type=data.get("provider", "local"),
                error_detail=self.error_detail,
            )
            if self.machine
            else None
        )

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"TaskInfo(id={self.id!r}, status={str(self.status)!r})"

    def __str__(self) -> str:
        return self.summary

    @property
    def summary(self) -> str:
        """Readable text: status and guidance, where it runs, timeline, time breakdown, outputs."""
        return render.to_text(render.task_summary(self))

    def to_dict(self) -> dict:
        return dict(self._data)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """A file of a running task, on its machine."""

    path: str
    size: int
    modified: dt.datetime


@dataclasses.dataclass(frozen=True)
class OutputFile:
    path: str
    size: int
    compressed_size: int

    @property
    def name(self) -> str:
        """Inductiva's name for the path within the outputs."""
        return self.path


@dataclasses.dataclass(frozen=True)
class OutputInfo:
    """The files of a task's outputs; ``str()`` gives a table of them."""

    files: list[OutputFile]
    total_size: int
    archive_size: int

    @property
    def n_files(self) -> int:
        return len(self.files)

    # Inductiva's names for the totals.
    @property
    def total_size_bytes(self) -> int:
        return self.total_size

    @property
    def total_compressed_size_bytes(self) -> int:
        return sum(f.compressed_size for f in self.files)

    def __str__(self) -> str:
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, show_footer=True)
        table.add_column("File", footer=f"{self.n_files} files")
        table.add_column("Size", justify="right", footer=render.size(self.total_size))
        table.add_column("Zipped", justify="right", footer=render.size(self.archive_size))
        for f in self.files:
            table.add_row(f.path, render.size(f.size), render.size(f.compressed_size))
        return render.to_text(table)


def _remote_file(item: dict) -> RemoteFile:
    modified = dt.datetime.fromtimestamp(item["modified"], dt.UTC)
    return RemoteFile(path=item["path"], size=item["size"], modified=modified)


# -- the task ----------------------------------------------------------------------


class Task:
    """A handle on one task, by id."""

    def __init__(self, task_id: str):
        task_id = str(task_id).strip()
        if not TASK_ID.fullmatch(task_id):
            raise InvalidTaskId(
                f"{task_id!r} is not a task id: task ids are 25 lowercase letters and digits.",
                code="not_found",
            )
        self.id = task_id
        self._client = api.client()
        self._final: TaskInfo | None = None  # an ended task's info does not change

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- state ---------------------------------------------------------------

    def get_info(self) -> TaskInfo:
        """Everything the server knows of the task, fresh."""
        info = TaskInfo(self._client.get(f"/tasks/{self.id}"))
        if info.is_terminal:
            self._final = info
        return info

    def _info(self, cached: bool) -> TaskInfo:
        """With ``cached``, an ended task's info as last fetched (no request); else fresh."""
        return self._final if cached and self._final is not None else self.get_info()

    @property
    def info(self) -> TaskInfo:
        return self.get_info()

    @property
    def summary(self) -> str:
        """Readable text: status and guidance, where it runs, timeline, time breakdown, outputs."""
        return str(self.get_info())

    def print_summary(self) -> None:
        print(self.summary, end="")

    def _state(self) -> dict:
        # The lightest question: status and queue position only.
        return self._client.get(f"/tasks/{self.id}/position")

    @property
    def status(self) -> TaskStatus:
        return TaskStatus(self._state()["status"])

    def get_status(self) -> TaskStatus:
        """The task's status now (one light request)."""
        return self.status

    def get_machine_type(self) -> str:
        """The machine type of the group that runs (or ran) the task."""
        return self._info(cached=True).machine_type

    def get_simulator_name(self) -> str:
        """The simulator the task runs, by its name (``commands``, ``splishsplash`` …)."""
        return self._info(cached=True).simulator

    def get_storage_path(self) -> str:
        """The task's folder among stored files: its id (its outputs are ``<id>/outputs/…``)."""
        return self.id

    def is_terminal(self) -> bool:
        """Has the task ended, however it ended?"""
        return canonical(self.status) in TERMINAL

    def is_running(self) -> bool:
        """Is the task on a machine (preparing, computing, finalizing or being killed)?"""
        return canonical(self.status) in RUNNING

    def is_failed(self) -> bool:
        """Did the task end in any other way than success?"""
        status = canonical(self.status)
        return status in TERMINAL and status != "success"

    def get_position_in_queue(self) -> int | None:
        """How many tasks are ahead of this one in its group's queue; None when it is not queued."""
        return self._state()["position_in_queue"]

    def get_computation_time(self, cached: bool = False) -> float | None:
        """Seconds the simulation has computed (so far), or None before it started.

        With ``cached``, an ended task answers from what was last fetched, without a request.
        """
        return self._info(cached).computation_time

    def get_total_time(self, cached: bool = False) -> float:
        """Seconds from submission to the end (or to now, while it lasts); ``cached`` as above."""
        return self._info(cached).total_time

    # -- waiting -------------------------------------------------------------

    def wait(
        self, polling_period: float = 1.0, silent_mode: bool = False, download_std_on_completion: bool = True
    ) -> TaskStatus:
        """Block until the task ends, and return its final status.

        Prints each status change with what happened, the number of tasks
        ahead while queued, and the last lines of stdout/stderr while it
        computes. At the end stdout.txt and stderr.txt are in the task's
        output folder; when it failed, the end of stderr is printed.

        The task is never touched: interrupting the wait (Ctrl+C) leaves it
        running; use :meth:`sync_context` to kill it instead. While the
        server is unreachable (a restart) the wait keeps trying, with
        backoff, for up to 15 minutes.
        """
        from simdeck.follow import WaitDisplay

        display = WaitDisplay(self, silent=silent_mode)
        try:
            with display:
                try:
                    status = self._wait_live(display, polling_period)
                except live.Unavailable:
                    status = self._wait_polling(display, polling_period)
        except KeyboardInterrupt:
            display.interrupted()
            raise
        if download_std_on_completion:
            self._download_logs()
        display.finished(status, self.get_info())
        return TaskStatus(status)

    def _wait_live(self, display: WaitDisplay, polling_period: float) -> str:
        """Wait on what the server pushes: status changes, queue moves, log lines.

        Log lines are shown at most every ``polling_period`` (the display
        keeps up with any simulator). Raises :class:`live.Unavailable`
        when WebSockets do not reach the server.
        """
        options = {
            "lost": display.disconnected,
            "back": display.reconnected,
            "max_outage": MAX_OUTAGE_SECONDS,
        }
        events = live.Socket(self._client, lambda: f"/ws/tasks/{self.id}/?format=json", **options).open()
        display.lines_fed = True
        logs: live.LogFollower | None = None
        status = position = None
        next_flush = 0.0
        try:
            while True:
                frame = events.recv(timeout=0.1 if logs else QUIET_CHECK_SECONDS)
                new_status, new_position = status, position
                if frame is None and logs is None:
                    # Quiet for a while: ask once, in case an event went astray.
                    try:
                        state = self._state()
                    except (ServerUnreachable, ServerError):
                        continue  # the socket notices an outage and says so
                    new_status, new_position = state["status"], state["position_in_queue"]
                elif frame is not None and frame.get("type") == "status":
                    new_status, new_position = frame["status"], frame["position_in_queue"]
                elif frame is not None and frame.get("type") == "position":
                    new_position = frame["position_in_queue"]
                if new_status in LOG_OPEN and logs is None and not display.silent:
                    logs = live.LogFollower(self._client, self.id, from_start=False, **options).open()
                if logs is not None:
                    # Status and lines come on two sockets: once the simulator has
                    # exited, its last lines are taken before the news is shown.
                    leaving = new_status not in LOG_OPEN
                    if not self._read_log_frames(logs, display, LOG_DRAIN_SECONDS if leaving else 0.0):
                        logs.close()
                        logs = None
                    if leaving and logs is not None:
                        logs.close()
                        logs = None
                    if leaving or time.monotonic() >= next_flush:
                        display.flush_lines()
                        next_flush = time.monotonic() + polling_period
                if (new_status, new_position) != (status, position):
                    status, position = new_status, new_position
                    display.update(status, position)
                if status in TERMINAL:
                    return status
        finally:
            events.close()
            if logs is not None:
                logs.close()

    @staticmethod
    def _read_log_frames(logs: live.LogFollower, display: WaitDisplay, drain: float) -> bool:
        """Pass the frames that arrived to the display; with ``drain``, wait up to that long for the end.

        Returns False once the log has ended.
        """
        deadline = time.monotonic() + drain
        while True:
            pieces = logs.read(timeout=max(0.0, deadline - time.monotonic()))
            if pieces is None:
                return False
            if not pieces:
                return True
            display.feed(pieces)

    def _wait_polling(self, display: WaitDisplay, polling_period: float) -> str:
        """Ask for the status every ``polling_period``; used where WebSockets do not get through."""
        outage: float | None = None
        backoff = polling_period
        while True:
            try:
                state = self._state()
                if outage is not None:
                    display.reconnected()
                    outage, backoff = None, polling_period
                status = state["status"]
                display.update(status, state["position_in_queue"])
                if status in TERMINAL:
                    return status
            except (ServerUnreachable, ServerError) as exc:
                now = time.monotonic()
                outage = outage or now
                if now - outage > MAX_OUTAGE_SECONDS:
                    raise
                display.disconnected(exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            time.sleep(polling_period)

    def wait_for_status(
        self, status: str, polling_period: float = 1.0, timeout: float | None = None
    ) -> TaskStatus:
        """Block until the task is in ``status`` or has ended; returns the status it is in.

        With ``timeout`` (seconds), returns the current status once it has passed.
        """
        wanted = canonical(status)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.status
            if canonical(current) == wanted or canonical(current) in TERMINAL:
                return current
            if deadline is not None and time.monotonic() >= deadline:
                return current
            time.sleep(polling_period)

    @contextlib.contextmanager
    def sync_context(self) -> Iterator[Task]:
        """Inside this block, an interruption (Ctrl+C) or an error kills the task, then goes on."""
        try:
            yield self
        except BaseException:
            with contextlib.suppress(SimdeckError):
                self.kill(wait_timeout=None)
            raise

    def kill(
        self, wait_timeout: float | None = 1, verbose: bool = True, verbosity_level: int | None = None
    ) -> bool | None:
        """Kill the task, unless it has ended already.

        A queued task ends at once; a running one is stopped by its machine.
        With ``wait_timeout`` (seconds) waits that long for it to be killed
        and returns whether it is; with None returns at once (None).
        ``verbosity_level`` 0 prints nothing, 1 or 2 what the server said
        (as ``verbose``, which it overrides when given).
        """
        if verbosity_level is not None:
            if verbosity_level not in (0, 1, 2):
                raise ValueError(f"verbosity_level is 0, 1 or 2, not {verbosity_level!r}.")
            verbose = verbosity_level > 0
        answer = self._client.post(f"/tasks/{self.id}/kill", retry=True)
        if verbose:
            print(answer["message"], file=sys.stderr)
        if wait_timeout is None:
            return None
        deadline = time.monotonic() + wait_timeout
        status = canonical(answer["status"])
        while status == "pending-kill" and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            status = canonical(self.status)
        return status == "killed"

    # -- logs and files on the machine -----------------------------------------

    def read_logs(
        self,
        offsets: dict[str, int | None],
        tail_lines: int = 0,
    ) -> dict:
        """New text of the logs since ``offsets`` ({"stdout": n, "stderr": m}; None for a tail)."""
        params: dict[str, Any] = {"stream": list(offsets), "tail_lines": tail_lines}
        for stream, offset in offsets.items():
            if offset is not None:
                params[f"{stream}_offset"] = offset
        return self._client.get(f"/tasks/{self.id}/logs", params=params)

    def stream_logs(
        self,
        streams: tuple[str, ...] = ("stdout", "stderr"),
        follow: bool = True,
        polling_period: float = 1.0,
        tail_lines: int | None = None,
    ) -> Iterator[tuple[str, str]]:
        """Yield ``(stream, text)`` pieces of the logs, from the start (or the last ``tail_lines``).

        With ``follow`` keeps going while the task runs and stops once it
        has ended and everything was read; nothing is lost or repeated at
        the moment it leaves its machine. A task that has not ended is
        followed over the server's WebSocket (lines arrive as printed, and
        a reconnect resumes after the last line received); where WebSockets
        do not get through, the logs are asked for every ``polling_period``.
        """
        if follow and not tail_lines and not self.is_terminal():
            try:
                yield from live.follow_log(self._client, self.id, streams, self.is_terminal)
                return
            except live.Unavailable:
                pass  # nothing was yielded: read it all over HTTP instead
        offsets: dict[str, int | None] = {s: (None if tail_lines else 0) for s in streams}
        while True:
            answer = self.read_logs(offsets, tail_lines=tail_lines or 0)
            pending = False
            for stream in streams:
                chunk = answer[stream]
                if chunk["text"]:
                    yield stream, chunk["text"]
                offsets[stream] = chunk["next_offset"]
                pending = pending or chunk["next_offset"] < chunk["size"]
            ended = answer["status"] in TERMINAL and not answer["live"]
            if pending:
                continue  # more is there already: no need to sleep
            if ended or not follow:
                return
            time.sleep(polling_period)

    def _machine(self, what: str, **params) -> dict:
        return self._client.get(f"/tasks/{self.id}/machine/{what}", params=params)

    def list_files(self) -> list[RemoteFile]:
        """The files of the running task on its machine (stdout.txt and stderr.txt are its logs)."""
        return [_remote_file(f) for f in self._machine("files")["files"]]

    def last_modified_file(self) -> RemoteFile | None:
        """The file the running task changed most recently."""
        item = self._machine("last-modified-file")["file"]
        return _remote_file(item) if item else None

    def top(self) -> dict:
        """The running task's processes (CPU, memory) and its machine's load."""
        return self._machine("top")

    def iter_tail(
        self, files: list[str], lines: int = 10, follow: bool = False, polling_period: float = 1.0
    ) -> Iterator[tuple[str, str]]:
        """Yield ``(file, text)``: the last ``lines`` of each file, then (following) what they gain."""
        answer = self._machine("tail", path=files, lines=lines)
        offsets: list[int | None] = []
        for item in answer["files"]:
            if item["missing"]:
                raise NotFound(f"Task {self.id} has no file {item['path']!r} on its machine (yet).")
            yield item["path"], item["text"]
            offsets.append(item["next_offset"])
        while follow:
            time.sleep(polling_period)
            try:
                answer = self._machine("tail", path=files, offset=offsets, lines=lines)
            except Refused as exc:
                if exc.code != "not_running":
                    raise
                # It left its machine. Its logs are stored by now: print what the
                # last look missed. Other files are in its outputs.
                for path, offset in zip(files, offsets, strict=True):
                    stream = path.removesuffix(".txt")
                    if path in LOG_FILES and offset is not None:
                        chunk = self.read_logs({stream: offset})[stream]
                        while chunk["text"]:
                            yield path, chunk["text"]
                            chunk = self.read_logs({stream: chunk["next_offset"]})[stream]
                return
            for i, item in enumerate(answer["files"]):
                if item["missing"]:
                    continue
                if item["text"]:
                    yield item["path"], item["text"]
                offsets[i] = item["next_offset"]

    def tail_files(
        self, files: str | list[str], lines: int = 10, follow: bool = False
    ) -> dict[str, str] | None:
        """The last ``lines`` lines of files of the running task ({file: text}).

        With ``follow``, prints them and then every new line until the task
        stops running (or Ctrl+C), and returns None.
        """
        names = [files] if isinstance(files, str) else list(files)
        if not follow:
            return dict(self.iter_tail(names, lines))
        last = None
        for path, text in self.iter_tail(names, lines, follow=True):
            if len(names) > 1 and path != last:
                print(f"==> {path} <==")
                last = path
            print(text, end="", flush=True)
        return None

    # -- outputs and inputs -----------------------------------------------------

    def _download_logs(self) -> Path | None:
        target = output_root() / self.id / "outputs"
        got = None
        for stream in ("stdout", "stderr"):
            path = target / f"{stream}.txt"
            try:
                target.mkdir(parents=True, exist_ok=True)
                with open(path, "wb") as sink:
                    self._client.download(f"/tasks/{self.id}/logs/{stream}", sink)
                got = target
            except SimdeckError:
                path.unlink(missing_ok=True)  # a task that never ran has no logs
        return got

    def get_output_info(self) -> OutputInfo:
        """The output files with their sizes, without downloading them."""
        data = self._client.get(f"/tasks/{self.id}/outputs/files")
        return OutputInfo(
            files=[OutputFile(**f) for f in data["files"]],
            total_size=data["total_size"],
            archive_size=data["archive_size"],
        )

    def download_outputs(
        self,
        filenames: list[str] | str | os.PathLike | None = None,
        output_dir: str | os.PathLike | None = None,
        uncompress: bool = True,
        rm_downloaded_zip_archive: bool = True,
        rm_remote_files: bool = False,
    ) -> Path:
        """Fetch the outputs (with stdout.txt and stderr.txt) and return the folder they are in.

        The folder is ``output_dir``, by default ``simdeck_output/<task id>/outputs``.
        With ``filenames`` (a list of paths within the outputs) only those
        files are fetched. A single string or path given first is taken as
        the folder, as scripts written for the hosted service do.
        Without ``uncompress`` the zip archive itself is kept there, as
        ``output.zip``.
        """
        if isinstance(filenames, (str, os.PathLike)) and output_dir is None:
            filenames, output_dir = None, filenames
        target = Path(output_dir) if output_dir else output_root() / self.id / "outputs"
        self._download("outputs", filenames, target, "output.zip", uncompress, rm_downloaded_zip_archive)
        print(f"Outputs of task {self.id} are in {target}/", file=sys.stderr)
        if rm_remote_files:
            self.remove_remote_files()
        return target

    def download_inputs(
        self,
        filenames: list[str] | str | os.PathLike | None = None,
        input_dir: str | os.PathLike | None = None,
        uncompress: bool = True,
        rm_downloaded_zip_archive: bool = True,
        rm_remote_files: bool = False,
        output_dir: str | os.PathLike | None = None,
    ) -> Path:
        """Fetch the input files as uploaded; by default into ``simdeck_output/<task id>/inputs``.

        ``filenames`` and ``uncompress`` work as for :meth:`download_outputs`;
        the archive kept is ``input.zip``. ``input_dir`` (Inductiva's name)
        and ``output_dir`` both name the folder.
        """
        if isinstance(filenames, (str, os.PathLike)) and input_dir is None and output_dir is None:
            filenames, input_dir = None, filenames
        folder = input_dir or output_dir
        target = Path(folder) if folder else output_root() / self.id / "inputs"
        self._download("input", filenames, target, "input.zip", uncompress, rm_downloaded_zip_archive)
        print(f"Inputs of task {self.id} are in {target}/", file=sys.stderr)
        if rm_remote_files:
            self.remove_remote_files()
        return target

    def _download(
        self,
        what: str,
        filenames: list[str] | str | None,
        target: Path,
        zip_name: str,
        uncompress: bool,
        remove_zip: bool,
    ) -> None:
        """Fetch chosen files of the outputs or the input (``what``), or the whole archive."""
        target.mkdir(parents=True, exist_ok=True)
        if filenames:
            for name in [filenames] if isinstance(filenames, str) else filenames:
                dest = _inside(target, name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                _fetch(self._client, f"/tasks/{self.id}/{what}/files/{name}", dest, f"Downloading {name}")
            return
        archive = target / zip_name
        _fetch(self._client, f"/tasks/{self.id}/{what}", archive, f"Downloading {what} of {self.id}")
        if not uncompress:
            return
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _extract_member(zf, info, target)
        if remove_zip:
            archive.unlink()

    def remove_remote_files(self) -> dict:
        """Delete the task's stored outputs and input from the server (its logs stay)."""
        answer = self._client.delete(f"/tasks/{self.id}/outputs")
        print(
            f"Removed the stored files of task {self.id} ({render.size(answer['freed_bytes'])}).",
            file=sys.stderr,
        )
        return answer

    # -- metadata ------------------------------------------------------------

    def get_metadata(self) -> dict[str, str]:
        return self._client.get(f"/tasks/{self.id}/metadata")

    def set_metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        """Replace the task's metadata; keys and values must be non-empty strings."""
        check_metadata(metadata)
        return self._client.put(f"/tasks/{self.id}/metadata", json={"metadata": metadata})

    def update_metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        """Add or change keys, keeping the others."""
        check_metadata(metadata)
        return self._client.patch(f"/tasks/{self.id}/metadata", json={"metadata": metadata})

    def unset_metadata(self, *keys: str) -> dict[str, str]:
        """Remove keys; returns what is left."""
        return self._client.delete(f"/tasks/{self.id}/metadata", params={"key": list(keys)})


def check_metadata(metadata: object) -> None:
    """Refuse, before sending anything, what the server would refuse, naming the culprit."""
    if not isinstance(metadata, dict):
        raise TypeError(f"Metadata is a dict of strings to strings, not a {type(metadata).__name__}.")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(
                f"Metadata key {key!r} is a {type(key).__name__}; keys must be strings (use str({key!r}))."
            )
        if not key.strip():
            raise ValueError(f"Metadata key {key!r} is empty; give every value a name.")
        if not isinstance(value, str):
            raise TypeError(
                f"Metadata value of {key!r} is a {type(value).__name__} ({value!r}); "
                f"values must be strings (use str({value!r}))."
            )
        if not value:
            raise ValueError(f"Metadata value of {key!r} is empty; leave the key out instead.")


def _inside(target: Path, name: str) -> Path:
    dest = (target / name).resolve()
    if not dest.is_relative_to(target.resolve()):
        raise SimdeckError(f"Refusing to write {name!r} outside {target}.")
    return dest


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    dest = _inside(target, info.filename)
    if info.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)


def _fetch(client: api.Client, path: str, dest: Path, description: str) -> None:
    """Download to ``dest`` through a temporary file, with a progress bar on a terminal."""
    fd, tmp_name = tempfile.mkstemp(prefix=".simdeck-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as sink,
            render.transfer_bar() as bar,
        ):
            job = bar.add_task(description, total=None)
            client.download(path, sink, lambda done, total: bar.update(job, completed=done, total=total))
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


# -- many tasks ------------------------------------------------------------------------

PAGE = 500


def _params(status: str | list[str] | None, project: str | None, metadata: dict[str, str] | None) -> dict:
    params: dict[str, Any] = {}
    if status:
        params["status"] = [status] if isinstance(status, str) else list(status)
    if project:
        params["project"] = project
    if metadata:
        check_metadata(metadata)
        params["metadata"] = [f"{k}={v}" for k, v in metadata.items()]
    return params


def summaries(params: dict, limit: int | None) -> Iterator[dict]:
    """Tasks as the list endpoint describes them, newest first, page by page, at most ``limit``.

    ``params`` are the endpoint's filters (status, project, metadata, id, …).
    """
    client = api.client()
    seen = 0
    params = dict(params)
    while limit is None or seen < limit:
        params["limit"] = PAGE if limit is None else min(PAGE, limit - seen)
        page = client.get("/tasks", params=params)
        yield from page["items"]
        seen += len(page["items"])
        if not page["next_cursor"]:
            return
        params["cursor"] = page["next_cursor"]


def get(
    last_n: int = 5,
    status: str | list[str] | None = None,
    project: str | None = None,
    metadata: dict[str, str] | None = None,
) -> list[Task]:
    """The ``last_n`` most recent tasks, newest first, optionally filtered.

    ``status`` accepts every spelling (``"completed"`` means success);
    ``metadata`` keeps tasks whose metadata has all the given pairs.
    """
    if last_n < 1:
        raise ValueError(f"last_n must be at least 1 (got {last_n}); use get_all() for every task.")
    return [Task(t["id"]) for t in summaries(_params(status, project, metadata), last_n)]


def get_all(
    status: str | list[str] | None = None,
    project: str | None = None,
    metadata: dict[str, str] | None = None,
) -> list[Task]:
    """Every task that matches, newest first, fetched page by page."""
    return [Task(t["id"]) for t in summaries(_params(status, project, metadata), None)]


def get_tasks(
    last_n: int = 10,
    status: str | list[str] | None = None,
    project: str | None = None,
    metadata: dict[str, str] | None = None,
) -> list[Task]:
    """``last_n`` recent tasks, or all of them when ``last_n <= 0``."""
    if last_n <= 0:
        return get_all(status=status, project=project, metadata=metadata)
    return get(last_n=last_n, status=status, project=project, metadata=metadata)


__all__ = [
    "OutputInfo",
    "RemoteFile",
    "Task",
    "TaskInfo",
    "TaskStatus",
    "get",
    "get_all",
    "get_tasks",
]
