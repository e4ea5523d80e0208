"""``simdeck resources …``: machine groups and machine types."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from simdeck import api, render, resources
from simdeck.cli_common import confirm, note, out, print_json
from simdeck.errors import InvalidInput

app = typer.Typer(help="Start, inspect and terminate machine groups.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]

STATE_STYLE = {"created": "cyan", "started": "green", "terminating": "yellow", "terminated": "dim"}


def _machines(g: dict) -> str:
    if g.get("max_machines") is not None:
        return f"{g['machines_online']} of {g['min_machines']}–{g['max_machines']}"
    return f"{g['machines_online']} of {g['num_machines']}"


@app.command("list")
def list_groups(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include terminated groups.")] = False,
    as_json: JsonOption = False,
):
    """Your machine groups, newest first."""
    groups = api.client().get("/machine-groups", params={"include_terminated": all_})
    if as_json:
        print_json(groups)
        return
    if not groups:
        out.print("No machine groups. Start one with: simdeck resources start MACHINE_TYPE")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Name", no_wrap=True)
    table.add_column("Machine type", no_wrap=True)
    table.add_column("Online", justify="right", no_wrap=True)
    table.add_column("Spot", no_wrap=True)
    table.add_column("Disk", justify="right", no_wrap=True)
    table.add_column("Queue", justify="right", no_wrap=True)
    table.add_column("State", no_wrap=True)
    table.add_column("Project", overflow="fold")
    table.add_column("Created", no_wrap=True)
    for g in groups:
        table.add_row(
            g["name"],
            g["machine_type"],
            _machines(g),
            "yes" if g["spot"] else "no",
            f"{g['data_disk_gb']} GB",
            str(g["queue_length"]),
            Text(g["state"], style=STATE_STYLE.get(g["state"], "")),
            g["project"],
            render.when(render.parse_time(g["created_at"])),
        )
    out.print(table)


@app.command("info")
def info(name: str, as_json: JsonOption = False):
    """Everything about one machine group, with its machines."""
    g = api.client().get(f"/machine-groups/{name}")
    if as_json:
        print_json(g)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row("Name", g["name"])
    grid.add_row("State", Text(g["state"], style=STATE_STYLE.get(g["state"], "")))
    if g["termination_reason"]:
        grid.add_row("", g["termination_reason"])
    grid.add_row("Machine type", f"{g['machine_type']} ({g['n_vcpus']} vCPUs, {g['memory_gb']:g} GB)")
    grid.add_row(
        "Machines online", _machines(g) + (" (elastic)" if g.get("max_machines") is not None else "")
    )
    grid.add_row("Spot", "yes" if g["spot"] else "no")
    if g.get("provider", "local") != "local":
        options = ", ".join(f"{k} {v}" for k, v in g.get("provider_options", {}).items())
        grid.add_row("Provider", g["provider"] + (f" ({options})" if options else ""))
    disk = f"{g['data_disk_gb']} GB"
    if g["auto_resize_disk_max_gb"]:
        disk += f", grows up to {g['auto_resize_disk_max_gb']} GB"
    grid.add_row("Disk", disk)
    limits = []
    if g["max_idle_time"] is not None:
        limits.append(f"stops after {g['max_idle_time']:g} min idle")
    if g["auto_terminate_minutes"] is not None:
        limits.append(f"stops after {g['auto_terminate_minutes']:g} min in all")
    grid.add_row("Limits", ", ".join(limits) or "none")
    grid.add_row("Queue", f"{g['queue_length']} task{'s' if g['queue_length'] != 1 else ''} waiting")
    grid.add_row("Project", g["project"])
    grid.add_row("Created", render.when(render.parse_time(g["created_at"])))
    if g["started_at"]:
        grid.add_row("Started", render.when(render.parse_time(g["started_at"])))
    if g["terminated_at"]:
        grid.add_row("Terminated", render.when(render.parse_time(g["terminated_at"])))
    out.print(grid)
    if g["machines"]:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for column in ("Machine", "State", "Host", "Last heartbeat"):
            table.add_column(column, no_wrap=True)
        for m in g["machines"]:
            beat = render.when(render.parse_time(m["last_heartbeat_at"]))
            host = m["hostname"] or "—"
            if m.get("job_id"):
                why = m["job_reason"] or "waiting"
                queued = f", queued: {why}" if m.get("job_state") == "PENDING" else ""
                host += f" (Slurm job {m['job_id']}{queued})"
            table.add_row(m["name"], m["state"], host, beat)
        out.print(table)


@app.command("start")
def start(
    machine_type: str,
    num_machines: Annotated[int, typer.Option("--num-machines", "-n", min=1, help="How many machines.")] = 1,
    spot: Annotated[bool, typer.Option("--spot", help="Spot machines: cheaper, may be reclaimed.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="A name; one is made up otherwise.")] = None,
    data_disk_gb: Annotated[int, typer.Option("--disk", help="Disk per machine, GB.")] = 10,
    max_idle_time: Annotated[
        float, typer.Option("--max-idle", help="Stop after this many minutes without a task.")
    ] = 3,
    auto_terminate: Annotated[
        float | None, typer.Option("--auto-terminate", help="Stop after this many minutes in all.")
    ] = None,
    max_machines: Annotated[
        int | None, typer.Option("--max-machines", help="Elastic: grow up to this many while tasks wait.")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the machines are online.")
    ] = True,
    provider: Annotated[
        str, typer.Option("--provider", help="What runs the machines: local or slurm.")
    ] = "local",
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm: the partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm: the account.")] = None,
    qos: Annotated[str | None, typer.Option("--qos", help="Slurm: the QOS.")] = None,
):
    """Start a machine group of MACHINE_TYPE ('simdeck resources available' lists them)."""
    given = {"partition": partition, "account": account, "qos": qos}
    options = dict(
        spot=spot,
        data_disk_gb=data_disk_gb,
        max_idle_time=max_idle_time,
        auto_terminate_minutes=auto_terminate,
        name=name,
        provider=provider,
        provider_options={key: value for key, value in given.items() if value is not None},
    )
    if max_machines is not None:
        group = resources.ElasticMachineGroup(
            machine_type, min_machines=num_machines, max_machines=max_machines, **options
        )
    else:
        group = resources.MachineGroup(machine_type, num_machines=num_machines, **options)
    group.start(wait=wait)
    out.print(group.name)


@app.command("terminate")
def terminate(
    names: Annotated[list[str] | None, typer.Argument(help="Machine groups to terminate.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every machine group of yours that runs.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
):
    """Terminate machine groups: queued tasks end, running ones are stopped."""
    client = api.client()
    if all_ == bool(names):
        raise InvalidInput("Name the machine groups to terminate, or give --all (not both).")
    if all_:
        # Only the caller's own: teammates' groups in shared projects are theirs to stop.
        names = [g["name"] for g in client.get("/machine-groups", params={"mine": True})]
        if not names:
            note("You have no machine group to terminate.")
            return
    groups = [client.get(f"/machine-groups/{n}") for n in names]
    busy = sum(g["queue_length"] for g in groups)
    question = f"Terminate {', '.join(g['name'] for g in groups)}?"
    if busy:
        question = f"{question} {busy} queued task{'s' if busy != 1 else ''} will end."
    confirm(question, yes)
    for g in groups:
        client.post(f"/machine-groups/{g['name']}/terminate", retry=True)
        note(f"Machine group {g['name']} is terminating.")


@app.command("available")
def available(as_json: JsonOption = False):
    """The machine types groups can be made of, and the simulators your started groups' machines have."""
    client = api.client()
    types = resources.machine_types()
    groups = [g for g in client.get("/machine-groups") if g["state"] == "started"]
    if as_json:
        print_json({"machine_types": types, "simulators": {g["name"]: g["simulators"] for g in groups}})
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Machine type", no_wrap=True)
    table.add_column("vCPUs", justify="right")
    table.add_column("Memory", justify="right")
    for t in types:
        table.add_row(t["name"], str(t["vcpus"]), f"{t['memory_gb']:g} GB")
    out.print(table)
    if not groups:
        return
    labels = {s["name"]: s["label"] for s in client.get("/simulators")}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Machine group", no_wrap=True)
    table.add_column("Simulator", no_wrap=True)
    table.add_column("Versions")
    for g in groups:
        if not g["simulators"]:
            table.add_row(g["name"], Text("no machine online yet", style="dim"), "")
        for i, (name, versions) in enumerate(g["simulators"].items()):
            table.add_row(g["name"] if i == 0 else "", labels.get(name, name), ", ".join(versions))
    out.print()
    out.print(table)
