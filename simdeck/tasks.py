"""Tasks: follow, wait for, kill and collect what a ``run()`` started.

A :class:`Task` is only a handle on a task id; any number of them may point
at the same task and none of them copies it. Every property asks the server.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from simdeck import api
from simdeck.errors import SimdeckError

OUTPUT_ROOT = Path("simdeck_output")

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
RUNNING = {"preparing-to-compute", "started", "finalizing", "pending-kill"}


def canonical(status: str) -> str:
    s = status.strip().lower()
    return ALIASES.get(s, s)


class TaskStatus(str):
    """A status string that also equals its other spellings (``"completed"`` == ``"success"``)."""

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return canonical(self) == canonical(other)
        return NotImplemented

    def __ne__(self, other) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self) -> int:
        return hash(canonical(self))


class Task:
    def __init__(self, task_id: str):
        self.id = task_id
        self._client = api.client()

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- state ---------------------------------------------------------------

    def get_info(self) -> dict:
        """Everything the server knows of the task, fresh."""
        return self._client.get(f"/tasks/{self.id}")

    @property
    def info(self) -> dict:
        return self.get_info()

    @property
    def status(self) -> TaskStatus:
        return TaskStatus(self.get_info()["status"])

    def is_terminal(self) -> bool:
        return canonical(self.status) in TERMINAL

    def is_running(self) -> bool:
        return canonical(self.status) in RUNNING

    def is_failed(self) -> bool:
        status = canonical(self.status)
        return status in TERMINAL and status != "success"

    def get_position_in_queue(self) -> int | None:
        return self._client.get(f"/tasks/{self.id}/position")["position_in_queue"]

    # -- waiting -------------------------------------------------------------

    def wait(
        self, polling_period: float = 1.0, silent_mode: bool = False, download_std_on_completion: bool = True
    ) -> TaskStatus:
        """Block until the task reaches a final status, and return it.

        Interrupting the wait (Ctrl+C) leaves the task running on its machine;
        use :meth:`sync_context` to kill it instead.
        """
        last = None
        last_position = None
        while True:
            info = self.get_info()
            status = info["status"]
            if status != last:
                if not silent_mode:
                    _clear_line()
                    print(f"■ Task {self.id}: {info['status_label']}. {info['guidance']['what_happened']}")
                last = status
            if canonical(status) in TERMINAL:
                break
            if status == "submitted" and not silent_mode:
                position = info.get("position_in_queue")
                if position != last_position:
                    _status_line(f"  Tasks ahead in the queue: {position}")
                    last_position = position
            time.sleep(polling_period)
        if download_std_on_completion:
            self._download_logs(silent_mode)
        if status != "success" and not silent_mode and info.get("error_detail"):
            print(info["error_detail"])
        return TaskStatus(status)

    def wait_for_status(self, status: str, polling_period: float = 1.0) -> TaskStatus:
        """Block until the task is in ``status`` (or has ended); returns its status."""
        wanted = canonical(status)
        while True:
            current = self.status
            if canonical(current) == wanted or canonical(current) in TERMINAL:
                return current
            time.sleep(polling_period)

    @contextlib.contextmanager
    def sync_context(self) -> Iterator[Task]:
        """Inside this block, an interruption or an error kills the task."""
        try:
            yield self
        except BaseException:
            self.kill()
            raise

    def kill(self, wait_timeout: float | None = None) -> bool | None:
        """Kill the task. With ``wait_timeout``, wait for it and say if it ended killed."""
        answer = self._client.post(f"/tasks/{self.id}/kill", retry=True)
        print(answer["message"], file=sys.stderr)
        if wait_timeout is None:
            return None
        deadline = time.monotonic() + wait_timeout
        while time.monotonic() < deadline:
            if canonical(self.status) != "pending-kill":
                break
            time.sleep(0.5)
        return canonical(self.status) == "killed"

    # -- outputs -------------------------------------------------------------

    def _output_dir(self, output_dir: str | Path | None) -> Path:
        return Path(output_dir) if output_dir else OUTPUT_ROOT / self.id / "outputs"

    def _download_logs(self, silent: bool) -> None:
        target = self._output_dir(None)
        target.mkdir(parents=True, exist_ok=True)
        for stream in ("stdout", "stderr"):
            try:
                with open(target / f"{stream}.txt", "wb") as sink:
                    self._client.download(f"/tasks/{self.id}/logs/{stream}", sink)
            except SimdeckError:
                (target / f"{stream}.txt").unlink(missing_ok=True)
        if not silent:
            print(f"  Logs saved in {target}/")

    def download_outputs(
        self,
        filenames: list[str] | None = None,
        output_dir: str | Path | None = None,
        uncompress: bool = True,
        rm_remote_files: bool = False,
    ) -> Path:
        """Fetch the outputs (and logs) into ``output_dir``; returns that folder."""
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        target = self._output_dir(output_dir)
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(suffix=".zip", dir=target, delete=False) as tmp:
            archive = Path(tmp.name)
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
                disable=not sys.stderr.isatty(),
            ) as bar:
                job = bar.add_task(f"Downloading outputs of {self.id}", total=None)
                self._client.download(
                    f"/tasks/{self.id}/outputs",
                    tmp,
                    lambda done, total: bar.update(job, completed=done, total=total),
                )
        if not uncompress:
            final = target / "outputs.zip"
            archive.replace(final)
            return final
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            wanted = names if filenames is None else [n for n in names if n in set(filenames)]
            missing = set(filenames or []) - set(wanted)
            for name in wanted:
                _extract_member(zf, name, target)
        archive.unlink()
        if missing:
            raise SimdeckError(f"Not among the outputs of {self.id}: {', '.join(sorted(missing))}.")
        if rm_remote_files:
            self._client.request("DELETE", f"/tasks/{self.id}/outputs")
        return target

    # -- metadata ------------------------------------------------------------

    def get_metadata(self) -> dict[str, str]:
        return self._client.get(f"/tasks/{self.id}/metadata")

    def set_metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        """Replace the task's metadata; keys and values must be non-empty strings."""
        _check_metadata(metadata)
        return self._client.put(f"/tasks/{self.id}/metadata", json={"metadata": metadata})

    def update_metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        """Add or change keys, keeping the others."""
        _check_metadata(metadata)
        return self._client.patch(f"/tasks/{self.id}/metadata", json={"metadata": metadata})


def _check_metadata(metadata: dict) -> None:
    if not isinstance(metadata, dict):
        raise TypeError(f"Metadata must be a dict of strings, not {type(metadata).__name__}.")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise TypeError(f"Metadata key {key!r} must be a string (convert it with str()).")
        if not isinstance(value, str):
            raise TypeError(
                f"Metadata value of {key!r} must be a string, not {type(value).__name__}: {value!r}."
            )
        if not key.strip():
            raise ValueError("Metadata keys must not be empty.")
        if not value:
            raise ValueError(f"Metadata value of {key!r} must not be empty.")


def _extract_member(zf: zipfile.ZipFile, name: str, target: Path) -> None:
    dest = (target / name).resolve()
    if not dest.is_relative_to(target.resolve()):
        raise SimdeckError(f"Refusing to write {name!r} outside {target}.")
    if name.endswith("/"):
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(name) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out)


def _status_line(text: str) -> None:
    if sys.stdout.isatty():
        print(f"\r\033[K{text}", end="", flush=True)
    else:
        print(text)


def _clear_line() -> None:
    if sys.stdout.isatty():
        print("\r\033[K", end="")


def get(last_n: int = 5, status: str | None = None, project: str | None = None) -> list[Task]:
    """The ``last_n`` most recent tasks, optionally of one status or project."""
    params: dict = {"limit": max(1, min(last_n, 500))}
    if status:
        params["status"] = status
    if project:
        params["project"] = project
    page = api.client().get("/tasks", params=params)
    return [Task(item["id"]) for item in page["items"][:last_n]]


def get_all(status: str | None = None, project: str | None = None) -> list[Task]:
    """Every task, page by page."""
    params: dict = {"limit": 500}
    if status:
        params["status"] = status
    if project:
        params["project"] = project
    tasks: list[Task] = []
    while True:
        page = api.client().get("/tasks", params=params)
        tasks.extend(Task(item["id"]) for item in page["items"])
        if not page["next_cursor"]:
            return tasks
        params["cursor"] = page["next_cursor"]


def get_tasks(last_n: int = 10, status: str | None = None, project: str | None = None) -> list[Task]:
    """``last_n`` recent tasks, or all of them when ``last_n <= 0``."""
    if last_n <= 0:
        return get_all(status=status, project=project)
    return get(last_n=last_n, status=status, project=project)
