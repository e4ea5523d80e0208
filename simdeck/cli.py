"""The ``simdeck`` command line."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from simdeck import api, config
from simdeck.errors import SimdeckError
from simdeck.tasks import Task

app = typer.Typer(help="Submit, follow and collect Simdeck simulation tasks.", no_args_is_help=True)
tasks_app = typer.Typer(help="List, inspect, kill and download tasks.", no_args_is_help=True)
auth_app = typer.Typer(help="Which server and API key the client uses.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(auth_app, name="auth")
out = Console()
err = Console(stderr=True)


@tasks_app.command("list")
def list_tasks(
    last_n: Annotated[int, typer.Option("--last-n", "-n", help="How many recent tasks.")] = 10,
    task_id: Annotated[list[str] | None, typer.Option("--id", "-i", help="Show these tasks only.")] = None,
    status: Annotated[str | None, typer.Option("--status", "-s")] = None,
    project: Annotated[str | None, typer.Option("--project-name", "-p")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
):
    """The most recent tasks with their status."""
    client = api.client()
    if task_id:
        items = [client.get(f"/tasks/{i}") for i in task_id]
    else:
        params = {
            "limit": last_n,
            **({"status": status} if status else {}),
            **({"project": project} if project else {}),
        }
        items = client.get("/tasks", params=params)["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table("Simulator", "Status", "Machine group", "Created", "Ended")
    table.columns.insert(0, Column("ID", no_wrap=True, min_width=25))
    for t in items:
        table.add_row(
            t["id"],
            t["simulator"],
            t["status_label"],
            t["machine_group"],
            t["created_at"][:19],
            (t["ended_at"] or "")[:19],
        )
    out.print(table)


@tasks_app.command("info")
def info(task_id: str, as_json: Annotated[bool, typer.Option("--json")] = False):
    """Status, guidance and timeline of one task."""
    data = Task(task_id).get_info()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    out.print(f"[bold]{data['id']}[/bold]  {data['status_label']} ({data['status']})")
    out.print(f"  What happened: {data['guidance']['what_happened']}")
    out.print(f"  Why:           {data['guidance']['why']}")
    out.print(f"  What to do:    {data['guidance']['what_to_do']}")
    if data["error_detail"]:
        out.print(f"  Error: {data['error_detail']}", markup=False)
    table = Table("When", "Status", "Reason")
    for e in data["events"]:
        table.add_row(e["at"][:19], e["label"], e["reason"])
    out.print(table)


@tasks_app.command("kill")
def kill(task_id: str, wait_timeout: Annotated[float | None, typer.Option("--wait-timeout", "-w")] = None):
    """Kill a task."""
    result = Task(task_id).kill(wait_timeout=wait_timeout)
    if wait_timeout is not None and not result:
        raise typer.Exit(1)


@tasks_app.command("download")
def download(
    task_id: str,
    filenames: Annotated[list[str] | None, typer.Option("--filenames", help="Only these files.")] = None,
    output_dir: Annotated[str | None, typer.Option("--dir")] = None,
):
    """Download a task's outputs."""
    target = Task(task_id).download_outputs(filenames=filenames, output_dir=output_dir)
    err.print(f"Outputs of {task_id} are in {target}")


@app.command("logs")
def logs(
    task_id: str,
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr instead of stdout.")] = False,
):
    """Print a finished task's log."""
    api.client().download(f"/tasks/{task_id}/logs/{'stderr' if stderr else 'stdout'}", sys.stdout.buffer)


@auth_app.command("login")
def login(
    api_key: Annotated[str, typer.Option(prompt=True, hide_input=True)],
    url: Annotated[str, typer.Option(help="The server's address.")] = config.DEFAULT_URL,
):
    """Store the server address and API key for later commands."""
    who = api.Client(url=url, api_key=api_key).get("/whoami")
    path = config.save(url, api_key)
    err.print(f"Logged in to {url} as {who['username']}; settings saved in {path}.")


@auth_app.command("whoami")
def whoami():
    who = api.client().get("/whoami")
    out.print(f"{who['username']} at {api.client().url}")


def main() -> None:
    try:
        app()
    except SimdeckError as exc:
        err.print(f"[red]Error:[/red] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
