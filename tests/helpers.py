"""Helpers the tests share: waiting on real processes, making input archives."""

import io
import time
import zipfile
from pathlib import Path

import psutil

from tasks_app.lifecycle import Status
from tasks_app.models import Task

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout} s waiting for {message}")


def task_status(task_id: str) -> Status:
    return Status(Task.objects.values_list("status", flat=True).get(pk=task_id))


def processes_of(task_ids: str | set[str]) -> list[psutil.Process]:
    """The processes of a task (or of any of several), wherever they run: they carry its id."""
    wanted = {task_ids} if isinstance(task_ids, str) else task_ids
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SIMDECK_TASK_ID") in wanted:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def zipped(files: dict[str, bytes]) -> bytes:
    """A zip archive of ``files`` (name -> contents), as a client would upload it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()
