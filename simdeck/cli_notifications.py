"""``simdeck notifications …``: where you hear that tasks, batches and groups ended, or budgets ran low."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from simdeck import api
from simdeck.cli_common import confirm, note, out, print_json

app = typer.Typer(
    help="Where you hear that tasks, batches and machine groups ended, or a budget ran low.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
TASKS = ("ended", "failed", "none")


def _tells_of(rule: dict) -> str:
    parts = {"ended": "tasks ended", "failed": "tasks failed", "none": ""}[rule["tasks"]]
    parts = [parts] if parts else []
    parts += [
        name
        for key, name in (
            ("batches", "batches"),
            ("groups_terminated", "groups terminated"),
            ("budgets", "budgets"),
        )
        if rule[key]
    ]
    whose = f"project {rule['project']}" if rule["project"] else "yours"
    return f"{', '.join(parts) or 'nothing'} ({whose})"


@app.command("list")
def list_notifications(as_json: JsonOption = False):
    """Your destinations and whether messages reach them."""
    rules = api.client().get("/notifications")
    if as_json:
        print_json(rules)
        return
    if not rules:
        out.print("No destinations. Add one with: simdeck notifications add URL")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Id", justify="right", no_wrap=True)
    table.add_column("Name", overflow="fold")
    table.add_column("URL", overflow="fold")
    table.add_column("Tells of", overflow="fold")
    table.add_column("State", overflow="fold")
    for rule in rules:
        if rule["failing"]:
            state = Text(f"failing: {rule['last_error']}", style="red")
        elif rule["last_sent_at"]:
            state = Text(f"delivered {rule['last_sent_at'][:16].replace('T', ' ')}")
        else:
            state = Text("nothing sent yet", style="dim")
        table.add_row(str(rule["id"]), rule["label"], rule["url"], _tells_of(rule), state)
    out.print(table)


@app.command("add")
def add_notification(
    url: Annotated[
        str, typer.Argument(help="An Apprise URL, e.g. json://hooks.example.org/x, or an e-mail address.")
    ],
    label: Annotated[str, typer.Option("--name", help="A name to know it by.")] = "",
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Hear of this project's; yours otherwise.")
    ] = None,
    tasks: Annotated[str, typer.Option("--tasks", help="Tasks to hear of: ended, failed or none.")] = "ended",
    batches: Annotated[
        bool, typer.Option("--batches", help="Batches whose tasks all ended, groups with no task left.")
    ] = False,
    groups_terminated: Annotated[
        bool, typer.Option("--groups-terminated", help="Machine groups terminated.")
    ] = False,
    budgets: Annotated[bool, typer.Option("--budgets", help="Monthly budgets at 80 % and 100 %.")] = False,
    as_json: JsonOption = False,
):
    """Add a destination; then check it with 'simdeck notifications test ID'."""
    if tasks not in TASKS:
        raise typer.BadParameter(f"choose {', '.join(TASKS)}.", param_hint="--tasks")
    rule = api.client().post(
        "/notifications",
        json={
            "url": url,
            "label": label,
            "project": project,
            "tasks": tasks,
            "batches": batches,
            "groups_terminated": groups_terminated,
            "budgets": budgets,
        },
    )
    if as_json:
        print_json(rule)
        return
    note(f"Added destination {rule['id']} ({rule['label']}): {_tells_of(rule)}.")


@app.command("test")
def test_notification(rule_id: Annotated[str, typer.Argument(help="The destination's id.")]):
    """Send a test message now; exits 1 when it did not arrive."""
    answer = api.client().post(f"/notifications/{rule_id}/test")
    note(answer["message"], "" if answer["delivered"] else "red")
    if not answer["delivered"]:
        raise typer.Exit(1)


@app.command("remove")
def remove_notification(
    rule_id: Annotated[str, typer.Argument(help="The destination's id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
):
    """Remove a destination: nothing more is sent to it."""
    confirm(f"Remove notification destination {rule_id}?", yes)
    api.client().delete(f"/notifications/{rule_id}")
    note(f"Removed destination {rule_id}.")
