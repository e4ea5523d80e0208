"""``simdeck tasks …`` and ``simdeck logs``: list, inspect, follow, kill and collect tasks."""

from __future__ import annotations

import datetime as dt
import io
import re
import time
from typing import Annotated

import typer
from rich import box
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simdeck import api, render
from simdeck import tasks as client_tasks
from simdeck.cli_common import confirm, note, out, print_json
from simdeck.errors import InvalidInput, NotFound, Refused
from simdeck.tasks import ACTIVE_STATUSES, TERMINAL, Task

app = typer.Typer(help="List, inspect, follow, kill and download tasks.", no_args_is_help=True)
metadata_app = typer.Typer(help="Read and change a task's metadata.", no_args_is_help=True)
app.add_typer(metadata_app, name="metadata")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


# -- listing -------------------------------------------------------------------------


def _fetch(task_ids, last_n, all_, status, project) -> list[dict]:
    params: dict = {}
    if status:
        params["status"] = status
    if project:
        params["project"] = project
    if task_ids:
        ids = [Task(i).id for i in task_ids]  # refuses malformed ids before asking
        params["id"] = ids
        items = list(client_tasks.summaries(params, None))
        missing = set(ids) - {t["id"] for t in items}
        if missing:
            raise NotFound(f"No task {', '.join(sorted(missing))}, or it is not yours to see.")
        return sorted(items, key=lambda t: ids.index(t["id"]))
    return list(client_tasks.summaries(params, None if all_ else last_n))


@app.command("list")
def list_tasks(
    last_n: Annotated[int, typer.Option("--last-n", "-n", min=1, help="How many recent tasks.")] = 10,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Every task, page by page.")] = False,
    task_id: Annotated[list[str] | None, typer.Option("--id", "-i", help="Only these tasks.")] = None,
    project: Annotated[str | None, typer.Option("--project-name", "-p", help="Only this project.")] = None,
    status: Annotated[
        list[str] | None, typer.Option("--status", "-s", help="Only these statuses ('completed' works).")
    ] = None,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            "-w",
            min=0.2,
            help="Refresh every SECONDS (5 when no number follows) until the listed tasks have ended.",
        ),
    ] = None,
    as_json: JsonOption = False,
):
    """The most recent tasks, newest first."""

    def fetch() -> list[dict]:
        return _fetch(task_id, last_n, all_, status, project)

    items = fetch()
    if as_json:
        print_json(items)
        return
    if watch is None:
        _print_tasks(items)
        return
    _watch(fetch, items, watch)


def _print_tasks(items: list[dict]) -> None:
    if not items:
        out.print("No tasks match.")
        return
    out.print(render.tasks_table(items))


def _watch(fetch, items: list[dict], seconds: float) -> None:
    """Show the table until every task in it has ended (or Ctrl+C)."""

    def ended(rows):
        return all(t["status"] in TERMINAL for t in rows)

    try:
        if out.is_terminal:
            with Live(render.tasks_table(items), console=out, auto_refresh=False) as live:
                while not ended(items):
                    time.sleep(seconds)
                    items = fetch()
                    live.update(render.tasks_table(items), refresh=True)
            return
        _print_tasks(items)
        while not ended(items):
            time.sleep(seconds)
            fresh = fetch()
            if [t["status"] for t in fresh] != [t["status"] for t in items]:
                out.print()
                _print_tasks(fresh)
            items = fresh
    except KeyboardInterrupt:
        pass  # the usual way to stop watching


# -- one task ------------------------------------------------------------------------


@app.command("info")
def info(
    task_id: str,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep it up to date until the task ends.")
    ] = False,
    as_json: JsonOption = False,
):
    """Status and guidance, timeline, time breakdown and outputs of a task."""
    task = Task(task_id)
    details = task.get_info()
    if as_json:
        print_json(details.to_dict())
        return
    if not watch or details.is_terminal:
        out.print(render.task_summary(details))
        return
    try:
        if out.is_terminal:
            with Live(render.task_summary(details), console=out, auto_refresh=False) as live:
                while not details.is_terminal:
                    time.sleep(2)
                    details = task.get_info()
                    live.update(render.task_summary(details), refresh=True)
            return
        last = None
        while True:
            if details.status != last:
                out.print(render.task_summary(details))
                last = details.status
            if details.is_terminal:
                return
            time.sleep(2)
            details = task.get_info()
    except KeyboardInterrupt:
        pass


@app.command("kill")
def kill(
    task_ids: Annotated[list[str] | None, typer.Argument(help="Tasks to kill.")] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option("--wait-timeout", "-w", help="Wait up to SECONDS for each task to be killed."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every task of yours that has not ended.")] = False,
    project: Annotated[
        str | None, typer.Option("--project-name", "-p", help="With --all: only this project.")
    ] = None,
):
    """Kill tasks: a queued one ends at once, a running one is stopped by its machine."""
    client = api.client()
    if all_ == bool(task_ids):
        raise InvalidInput("Name the tasks to kill, or give --all (not both).")
    if all_:
        params = {
            "status": sorted(ACTIVE_STATUSES - {"pending-kill"}),
            **({"project": project} if project else {}),
        }
        count = sum(1 for _ in client_tasks.summaries(params, None))
        if not count:
            note("You have no task to kill.")
            return
        confirm(f"Kill all {count} of your tasks that have not ended?", yes)
        results = client.post("/tasks/kill", json={"all": True, "project": project}, retry=True)
    else:
        tasks = [Task(i) for i in task_ids]
        what = f"task {tasks[0].id}" if len(tasks) == 1 else f"these {len(tasks)} tasks"
        confirm(f"Kill {what}?", yes)
        results = client.post("/tasks/kill", json={"ids": [t.id for t in tasks]}, retry=True)
    for result in results:
        note(result["message"])
    if wait_timeout is None:
        return
    not_killed = []
    for result in results:
        status = result["status"]
        deadline = time.monotonic() + wait_timeout
        while status == "pending-kill" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = Task(result["id"]).status
        if result["changed"] and status != "killed":
            not_killed.append(result["id"])
    if not_killed:
        note(f"Not killed within {wait_timeout:g} s: {', '.join(not_killed)}.", "yellow")
        raise typer.Exit(1)
    note("Killed.")


@app.command("download")
def download(
    task_ids: Annotated[list[str] | None, typer.Argument(help="Tasks to download.")] = None,
    filenames: Annotated[
        list[str] | None,
        typer.Option("--filenames", help="Only these files (of the outputs, or of the inputs with --input)."),
    ] = None,
    output_dir: Annotated[str | None, typer.Option("--dir", help="Folder to download into.")] = None,
    inputs: Annotated[bool, typer.Option("--input", "-i", help="Download the inputs.")] = False,
    outputs: Annotated[
        bool, typer.Option("--output", "-o", help="Download the outputs (the default).")
    ] = False,
):
    """Download the outputs (or inputs) of tasks, into simdeck_output/<task id>/ by default.

    With --dir and several tasks, each goes into its own folder inside it.
    """
    if not task_ids:
        raise InvalidInput("Name at least one task to download; 'simdeck tasks list' shows their ids.")
    tasks = [Task(i) for i in task_ids]
    for task in tasks:
        target = None
        if output_dir:
            target = output_dir if len(tasks) == 1 else f"{output_dir}/{task.id}"
        if outputs or not inputs:
            task.download_outputs(filenames=filenames, output_dir=target)
        if inputs:
            task.download_inputs(
                filenames=filenames, input_dir=f"{target}/inputs" if target and outputs else target
            )


# -- inside a running task --------------------------------------------------------------


def _ago(moment: dt.datetime) -> str:
    seconds = (dt.datetime.now(dt.UTC) - moment).total_seconds()
    return f"{render.duration(max(0.0, seconds))} ago"


@app.command("list-files")
def list_files(task_id: str, as_json: JsonOption = False):
    """The files of a running task, on its machine."""
    files = Task(task_id).list_files()
    if as_json:
        print_json([{"path": f.path, "size": f.size, "modified": f.modified.isoformat()} for f in files])
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("File", overflow="fold")
    table.add_column("Size", justify="right", no_wrap=True)
    table.add_column("Modified", no_wrap=True)
    for f in files:
        table.add_row(f.path, render.size(f.size), render.when(f.modified))
    out.print(table)
    out.print(f"{len(files)} files, {render.size(sum(f.size for f in files))}")


@app.command("tail")
def tail(
    task_id: str,
    files: Annotated[
        list[str], typer.Argument(help="Files of the task; stdout.txt and stderr.txt are its logs.")
    ],
    lines: Annotated[int, typer.Option("--lines", "-l", min=0, help="How many last lines.")] = 10,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines while it runs.")
    ] = False,
):
    """The last lines of files of a running task."""
    task = Task(task_id)
    last = None
    try:
        for path, text in task.iter_tail(files, lines, follow=follow):
            if len(files) > 1 and path != last:
                out.print(Text(f"==> {path} <==", style="bold"))
                last = path
            out.print(Text(text), end="", soft_wrap=True)
    except KeyboardInterrupt:
        return
    if follow:
        note(f"Task {task.id} is no longer running.")


@app.command("top")
def top(task_id: str, as_json: JsonOption = False):
    """The processes of a running task, with their CPU and memory use."""
    data = Task(task_id).top()
    if as_json:
        print_json(data)
        return
    # The machine's share of its host, as its type sizes it: what the task may use.
    machine = data["machine"]
    cpu = sum(p["cpu_percent"] for p in data["processes"])
    memory = sum(p["memory_bytes"] for p in data["processes"])
    memory_total = machine["memory_gb"] * 1000**3
    out.print(
        f"Machine {machine['name']} ({machine['machine_type']}): {machine['vcpus']} vCPUs, "
        f"{machine['memory_gb']:g} GB memory"
    )
    out.print(
        f"Task: {cpu:.0f}% CPU of {machine['vcpus'] * 100}%, {render.size(memory)} memory"
        + (f" ({100 * memory / memory_total:.0f}%)" if memory_total else "")
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name, justify in (("PID", "right"), ("CPU %", "right"), ("Memory", "right"), ("Threads", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Running", justify="right", no_wrap=True)
    table.add_column("Command", overflow="fold")
    for p in sorted(data["processes"], key=lambda p: -p["cpu_percent"]):
        table.add_row(
            str(p["pid"]),
            f"{p['cpu_percent']:.1f}",
            render.size(p["memory_bytes"]),
            str(p["threads"]),
            p["status"],
            render.duration(data["now"] - p["started"]),
            p["command"] or p["name"],
        )
    out.print(table)


@app.command("last-modified-file")
def last_modified_file(task_id: str, as_json: JsonOption = False):
    """The file a running task changed most recently."""
    f = Task(task_id).last_modified_file()
    if as_json:
        print_json(f and {"path": f.path, "size": f.size, "modified": f.modified.isoformat()})
        return
    if f is None:
        out.print("The task has no files yet.")
        return
    out.print(f"{f.path}  ({render.size(f.size)}, modified {_ago(f.modified)}, at {render.when(f.modified)})")


# -- metadata ------------------------------------------------------------------------------


@metadata_app.command("get")
def metadata_get(task_id: str, as_json: JsonOption = False):
    """Print a task's metadata."""
    data = Task(task_id).get_metadata()
    if as_json:
        print_json(data)
        return
    if not data:
        out.print("No metadata.")
    for key, value in sorted(data.items()):
        out.print(Text.assemble((key, "bold"), f" = {value}"))


@metadata_app.command("set")
def metadata_set(
    task_id: str,
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs.")],
    replace: Annotated[bool, typer.Option("--replace", help="Drop the keys not given.")] = False,
):
    """Set keys of a task's metadata (the others stay unless --replace)."""
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"Write metadata as KEY=VALUE, not {pair!r}.")
        metadata[key] = value
    task = Task(task_id)
    result = task.set_metadata(metadata) if replace else task.update_metadata(metadata)
    note(f"Task {task.id} now has {len(result)} metadata key{'s' if len(result) != 1 else ''}.")


@metadata_app.command("unset")
def metadata_unset(task_id: str, keys: Annotated[list[str], typer.Argument(help="Keys to remove.")]):
    """Remove keys from a task's metadata."""
    task = Task(task_id)
    result = task.unset_metadata(*keys)
    note(f"Task {task.id} now has {len(result)} metadata key{'s' if len(result) != 1 else ''}.")


# -- logs (a top-level command) ----------------------------------------------------------------


# Which task, as Inductiva's command line names one: the newest submitted, or the newest running
# ("-n" counts back from it); a task id names itself.
SELECTOR = re.compile(r"(submitted|started)(?:-(\d+))?", re.IGNORECASE)


def _select(which: str) -> Task:
    found = SELECTOR.fullmatch(which.strip())
    if not found:
        return Task(which)
    kind, back = found.group(1).lower(), int(found.group(2) or 0)
    params = {"status": sorted(client_tasks.RUNNING)} if kind == "started" else {}
    items = list(client_tasks.summaries(params, back + 1))
    if len(items) <= back:
        what = "running" if kind == "started" else "submitted"
        have = f"only {len(items)}" if items else "none"
        raise NotFound(
            f"{which.upper()} names your task number {back + 1} among those {what}; you have {have}."
        )
    return Task(items[back]["id"])


def logs(
    which: Annotated[
        str,
        typer.Argument(
            help="A task id, or SUBMITTED (your newest task), SUBMITTED-1 (the one before), "
            "STARTED, STARTED-1 … (among those running).",
            show_default=False,
        ),
    ] = "SUBMITTED",
    stdout: Annotated[bool, typer.Option("--stdout", help="Only stdout.")] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="Only stderr.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait for a task that has not started yet.")
    ] = False,
    attempt: Annotated[
        int | None,
        typer.Option(
            "--attempt", min=1, help="The stored logs of this attempt (a resubmitted task has several)."
        ),
    ] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="No red for stderr.")] = False,
):
    """Print a task's stdout and stderr, following them live until the task ends."""
    task = _select(which)
    streams = tuple(s for s, wanted in (("stdout", stdout), ("stderr", stderr)) if wanted) or (
        "stdout",
        "stderr",
    )
    colour = out.is_terminal and not no_color

    def show(stream: str, text: str) -> None:
        out.print(Text(text, style="red" if colour and stream == "stderr" else ""), end="", soft_wrap=True)

    if attempt is not None:
        for stream in streams:
            show(stream, _stored_log(task, stream, attempt))
        return
    details = task.get_info()
    if details.status in ("pending-input", "submitted"):
        if not wait:
            raise Refused(
                f"Task {task.id} is {details.status_label}: its logs begin when it starts. "
                f"Add --wait to wait for that: simdeck logs {task.id} --wait",
                code="not_running",
            )
        note(f"Task {task.id} is {details.status_label}; its logs appear once it starts.", "dim")
    # Whole lines only, so that a line of one stream never ends inside a line of the other.
    partial = dict.fromkeys(streams, "")
    try:
        for stream, text in task.stream_logs(streams):
            complete, newline, partial[stream] = (partial[stream] + text).rpartition("\n")
            if newline:
                show(stream, complete + newline)
    except KeyboardInterrupt:
        return
    for stream, rest in partial.items():
        if rest:
            show(stream, rest + "\n")
    final = task.status
    if final != "success":
        note(f"Task {task.id} ended as {final}.", "dim")


def _stored_log(task: Task, stream: str, attempt: int) -> str:
    sink = io.BytesIO()
    api.client().download(f"/tasks/{task.id}/logs/{stream}?attempt={attempt}", sink)
    return sink.getvalue().decode("utf-8", "replace")


__all__ = ["app", "logs"]
