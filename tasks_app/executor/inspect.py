"""Looking inside a running task: files, the end of a file, processes.

The server cannot read a machine's disk (the machine may be on another
host), so it asks the worker through a Celery remote-control command
addressed to that one worker (``<machine name>@<host>``). The command runs in
the worker's main process, beside the pool process that runs the task, so it
answers while the simulation computes.

Paths are relative to the task's work directory; ``stdout.txt`` and
``stderr.txt`` name the task's logs, as they do in its outputs. Nothing may
reach outside the task's folder, whatever the request says.

The reading helpers (:func:`read_chunk`, :func:`tail_offset`) are shared
with the server, which reads stored logs the same way once a task ended.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
import time
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import psutil
from celery.worker.control import inspect_command
from django.conf import settings

from tasks_app.executor import os_error_message

COMMAND = "simdeck_inspect"
TASK_ID = re.compile(r"[a-z0-9]{25}")
LOG_FILES = ("stdout.txt", "stderr.txt")
# A listing of a huge output tree would make a huge broker message.
MAX_LISTED_FILES = 5000
MAX_READ_BYTES = 256 * 1024
# How far back from the end a tail looks for its lines.
TAIL_WINDOW = 64 * 1024
CPU_SAMPLE_SECONDS = 0.5


class Unavailable(Exception):
    """The task is not (or no longer) on this machine."""


class BadRequest(ValueError):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# -- reading text in pieces ----------------------------------------------------


def tail_offset(f: BinaryIO, size: int, lines: int) -> int:
    """Where the last ``lines`` lines of a file of ``size`` bytes begin."""
    if lines <= 0 or size == 0:
        return size
    start = max(0, size - TAIL_WINDOW)
    f.seek(start)
    data = f.read(size - start)
    # A final newline ends the last line; it does not start an empty one.
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    pos = end
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return start if start == 0 else start + data.find(b"\n") + 1
    return start + pos + 1


def read_chunk(f: BinaryIO, size: int, offset: int, max_bytes: int) -> tuple[str, int]:
    """Text from ``offset`` on, at most ``max_bytes``; returns it and the offset after it.

    The chunk never ends inside a UTF-8 character, so the next read starts
    cleanly; undecodable bytes (simulators print anything) become U+FFFD.
    """
    offset = min(max(0, offset), size)
    f.seek(offset)
    data = f.read(min(max_bytes, size - offset))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(data, final=offset + len(data) >= size)
    pending = len(decoder.getstate()[0])
    return text, offset + len(data) - pending


def read_text(f: BinaryIO, size: int, offset: int | None, lines: int, max_bytes: int) -> dict:
    """One answer for "what is new since ``offset``" or, without it, "the last ``lines`` lines"."""
    start = tail_offset(f, size, lines) if offset is None else offset
    if offset is None:
        # A tail shows the end even when that is more than max_bytes away.
        start = max(start, size - max_bytes)
    if start > size:
        start = 0  # the file was truncated since the last read: start over
    text, next_offset = read_chunk(f, size, start, max_bytes)
    return {"offset": start, "next_offset": next_offset, "size": size, "text": text}


# -- the task's folder on this machine -----------------------------------------


def task_folder(machine_name: str, task_id: str) -> Path:
    if not TASK_ID.fullmatch(task_id or ""):
        raise BadRequest(f"{task_id!r} is not a task id.", field="task_id")
    base = Path(settings.SIMDECK_WORK_DIR) / machine_name / task_id
    if not (base / "work").is_dir():
        raise Unavailable(f"Task {task_id} is not running on machine {machine_name}.")
    return base


def resolve(base: Path, name: str) -> Path:
    """The file ``name`` of the task, refusing anything outside its folder."""
    if name in LOG_FILES:
        return base / "logs" / name
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise BadRequest(f"{name!r} is not a path inside the task's folder.", field="path")
    workdir = (base / "work").resolve()
    target = (workdir / path).resolve()
    if not target.is_relative_to(workdir):  # a link pointing out
        raise BadRequest(f"{name!r} leads outside the task's folder.", field="path")
    return target


def _walk(base: Path):
    """(relative name, stat) of every regular file, logs included."""
    for name in LOG_FILES:
        try:
            yield name, (base / "logs" / name).stat()
        except FileNotFoundError:
            pass
    workdir = base / "work"
    for root, dirs, files in os.walk(workdir):
        dirs.sort()
        for file in sorted(files):
            path = Path(root, file)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # removed while we looked
            if path.is_symlink():
                continue
            yield path.relative_to(workdir).as_posix(), st


def _describe(name: str, st: os.stat_result) -> dict:
    return {"path": name, "size": st.st_size, "modified": st.st_mtime}


def list_files(base: Path) -> dict:
    files = []
    truncated = False
    for name, st in _walk(base):
        if len(files) >= MAX_LISTED_FILES:
            truncated = True
            break
        files.append(_describe(name, st))
    return {"files": files, "truncated": truncated}


def last_modified(base: Path) -> dict:
    newest = None
    for name, st in _walk(base):
        if newest is None or st.st_mtime > newest[1].st_mtime:
            newest = (name, st)
    return {"file": _describe(*newest) if newest else None, "now": time.time()}


def read(base: Path, files: list[dict], lines: int = 10, max_bytes: int = 64 * 1024) -> dict:
    if not isinstance(files, list) or not files:
        raise BadRequest("Name at least one file.", field="path")
    lines = max(0, min(int(lines), 10_000))
    max_bytes = max(1, min(int(max_bytes), MAX_READ_BYTES))
    out = []
    for spec in files[:20]:
        name = str(spec.get("path", ""))
        offset = spec.get("offset")
        path = resolve(base, name)
        try:
            with _open_inside(base, path) as f:
                size = os.fstat(f.fileno()).st_size
                chunk = read_text(f, size, None if offset is None else int(offset), lines, max_bytes)
        except (FileNotFoundError, IsADirectoryError):
            out.append({"path": name, "missing": True})
            continue
        out.append({"path": name, **chunk})
    return {"files": out}


def _open_inside(base: Path, path: Path):
    """Open ``path`` for reading, and make sure what was opened is a file of the task's folder.

    The simulation runs on while we look, and may swap a folder of its path
    for a link between :func:`resolve` and the opening: the folder that was
    really opened is what counts. Neither links nor pipes are followed.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    f = open(fd, "rb")  # closes fd from here on
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
        # The work folder may be elsewhere (the machine's sandbox folder), linked from the task's.
        inside = any(opened.is_relative_to(root) for root in (base.resolve(), (base / "work").resolve()))
        if not inside or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadRequest(f"{path.name!r} is not a file inside the task's folder.", field="path")
    except BaseException:
        f.close()
        raise
    return f


def top(base: Path, task_id: str) -> dict:
    """The task's processes (those carrying its id in their environment) and the machine's load."""
    procs = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.environ().get("SIMDECK_TASK_ID") == task_id:
                proc.cpu_percent(None)  # the first call only starts the measurement
                procs.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    time.sleep(CPU_SAMPLE_SECONDS)
    rows = []
    for proc in procs:
        try:
            with proc.oneshot():
                rows.append(
                    {
                        "pid": proc.pid,
                        "ppid": proc.ppid(),
                        "name": proc.name(),
                        "command": " ".join(proc.cmdline())[:300],
                        "status": proc.status(),
                        "cpu_percent": round(proc.cpu_percent(None), 1),
                        "memory_bytes": proc.memory_info().rss,
                        "threads": proc.num_threads(),
                        "started": proc.create_time(),
                    }
                )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    memory = psutil.virtual_memory()
    return {
        "processes": rows,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": list(os.getloadavg()),
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "now": time.time(),
    }


def answer(machine_name: str, task_id: str, op: str, params: dict | None = None) -> dict:
    """Carry out one request; the reply says ``ok`` or why not, never raises."""
    params = dict(params or {})
    base = None
    try:
        base = task_folder(machine_name, task_id)
        if op == "list_files":
            result = list_files(base)
        elif op == "last_modified":
            result = last_modified(base)
        elif op == "read":
            result = read(base, **params)
        elif op == "top":
            result = top(base, task_id)
        else:
            raise BadRequest(f"Unknown request {op!r}.", field="op")
    except Unavailable as exc:
        return {"ok": False, "error": "not_here", "message": str(exc)}
    except (BadRequest, TypeError, ValueError) as exc:
        return {"ok": False, "error": "invalid", "message": str(exc), "field": getattr(exc, "field", None)}
    except OSError as exc:
        why = os_error_message(exc, base)
        return {"ok": False, "error": "machine_error", "message": f"The machine could not read it: {why}"}
    return {"ok": True, **result}


@inspect_command(
    name=COMMAND,
    signature="<task_id> <op> [params]",
    args=[("task_id", str), ("op", str)],
    default_timeout=3.0,
)
def simdeck_inspect(state, task_id: str = "", op: str = "", params: dict | None = None, **_) -> dict:
    """Answer the server's question about a task this machine runs."""
    # The worker's node name is "<machine name>@<host>" (see providers/local.py).
    machine_name = state.hostname.split("@", 1)[0]
    return answer(machine_name, task_id, op, params)
