"""Helpers for the client and CLI tests: commands that run until told to stop,
the machine's view of a task, and the ``simdeck`` command as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tasks_app.models import Task
from tests.helpers import ROOT, wait_for

EXAMPLES = ROOT / "examples"
SIMDECK = [sys.executable, "-m", "simdeck.cli"]

# A command that prints to both streams until a file named "stop" appears in
# its work directory: the test decides when the simulation ends.
UNTIL_STOPPED = (
    'i=0; while [ ! -f stop ]; do i=$((i+1)); echo "step $i"; echo "warning $i" >&2; '
    "echo $i > progress.txt; sleep 0.2; done; echo done > result.txt; echo finished"
)


def workdir(stack, task_id: str) -> Path:
    """The task's work directory on its machine (the local provider runs machines on this host)."""
    machine = Task.objects.select_related("machine").get(pk=task_id).machine
    return stack.home / "work" / machine.name / task_id / "work"


def stop(stack, task_id: str) -> None:
    (workdir(stack, task_id) / "stop").write_text("")


def wait_until_printed(stack, task_id: str, steps: int = 3) -> None:
    """Until the looping command has printed ``steps`` steps."""
    wait_for(
        lambda: Task.objects.filter(pk=task_id, machine__isnull=False).exists(),
        timeout=60,
        message=f"a machine to take task {task_id}",
    )
    progress = lambda: workdir(stack, task_id) / "progress.txt"  # noqa: E731
    wait_for(
        lambda: progress().exists() and int(progress().read_text() or 0) >= steps,
        timeout=60,
        message=f"task {task_id} to print {steps} steps",
    )


def run_cli(*args: str, env: dict[str, str], input: str | None = None, timeout: float = 120):
    """Run ``simdeck ARGS`` as a user would; returns the completed process."""
    return subprocess.run(
        [*SIMDECK, *args],
        env={**os.environ, "COLUMNS": "140", "NO_COLOR": "1", **env},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def normalize(text: str, **names: str) -> str:
    """Rendered text with what changes from run to run replaced by placeholders.

    ``names`` maps a placeholder to a literal to hide (a task id, a group name).
    """
    for placeholder, literal in names.items():
        text = text.replace(literal, f"<{placeholder}>")
    text = re.sub(r"\b[a-z0-9]{25}\b", "<id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)
    text = re.sub(r"\d+(\.\d+)? (s|min|h|d)\b( \d+ (s|min|h))?", "<duration>", text)
    text = re.sub(r"\d+(\.\d+)? (bytes|kB|MB|GB)", "<size>", text)
    # Column widths follow the values just hidden: keep the layout, not the padding.
    text = re.sub(r"─{2,}", "──", text)
    return "\n".join(re.sub(r" {2,}", "  ", line).rstrip() for line in text.splitlines())


def stop_web(stack) -> None:
    """Stop the stack's web server (the first process it started); machines go on."""
    web = stack.procs[0]
    web.terminate()
    web.wait(timeout=20)


def start_web(stack) -> None:
    """A new web server on the same port, as after a restart."""
    argv = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(stack.port),
        "console.asgi:application",
    ]
    stack.procs[0] = stack.spawn("web-restarted", argv)
    stack.procs.pop()  # spawn() appended it; it replaces the old one instead
