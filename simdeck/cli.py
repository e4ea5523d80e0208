"""The ``simdeck`` command line.

Results go to stdout (tables on a terminal, ``--json`` for scripts),
messages to stderr. Every failure is one line starting with ``Error:`` and
an exit code that says what kind it was:

    0  done                         4  no valid API key, or not allowed
    1  done, but not as hoped       5  the server cannot be reached
       (e.g. a kill not confirmed   6  refused: e.g. the task is not running
       within --wait-timeout)       7  the server failed
    2  bad usage or invalid input  130 interrupted (Ctrl+C)
    3  no such task, group or file

``SIMDECK_DEBUG=1`` shows the traceback of unexpected errors.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from simdeck import (
    api,
    cli_notifications,
    cli_resources,
    cli_storage,
    cli_tasks,
    config,
    projects,
    render,
    users,
)
from simdeck.cli_common import err, note, out, print_json
from simdeck.errors import SimdeckError

app = typer.Typer(
    help="Submit, follow and collect Simdeck simulation tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
auth_app = typer.Typer(help="Which server and API key the command line uses.", no_args_is_help=True)
projects_app = typer.Typer(help="Projects your tasks are filed in.", no_args_is_help=True)
simulators_app = typer.Typer(help="Simulators the server offers.", no_args_is_help=True)
quotas_app = typer.Typer(help="Your limits, and what you use of them.", no_args_is_help=True)
user_app = typer.Typer(help="You as a user of the server.", no_args_is_help=True)


def _print_version(asked: bool) -> None:
    if asked:
        from simdeck import __version__

        out.print(f"simdeck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the client's version and stop."
        ),
    ] = False,
) -> None:
    """Submit, follow and collect Simdeck simulation tasks."""


app.add_typer(cli_tasks.app, name="tasks")
app.add_typer(cli_resources.app, name="resources")
app.add_typer(cli_storage.app, name="storage")
app.add_typer(projects_app, name="projects")
app.add_typer(simulators_app, name="simulators")
app.add_typer(auth_app, name="auth")
app.add_typer(quotas_app, name="quotas")
app.add_typer(user_app, name="user")
app.add_typer(cli_notifications.app, name="notifications")
app.command("logs")(cli_tasks.logs)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]


# -- projects and simulators ---------------------------------------------------------


@projects_app.command("list")
def list_projects(as_json: JsonOption = False):
    """Projects you have tasks or machine groups in."""
    items = api.client().get("/projects")
    if as_json:
        print_json(items)
        return
    if not items:
        out.print("No projects yet; a task or machine group that names a project creates it.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Project", overflow="fold")
    for column in ("Tasks", "Not ended", "Succeeded", "Failed"):
        table.add_column(column, justify="right", no_wrap=True)
    for p in items:
        table.add_row(p["name"], str(p["num_tasks"]), str(p["active"]), str(p["succeeded"]), str(p["failed"]))
    out.print(table)


@projects_app.command("download")
def download_project(
    name: str,
    output_dir: Annotated[str | None, typer.Option("--dir", help="Folder to download into.")] = None,
):
    """Download the outputs of a project's successful tasks, each into its own folder."""
    projects.Project(name, create=False).download_outputs(output_dir=output_dir)


@app.command("costs")
def costs(
    project: Annotated[str | None, typer.Option("--project", "-p", help="Only this project.")] = None,
    month: Annotated[
        str | None, typer.Option("--month", "-m", help="The month, YYYY-MM (UTC); this one by default.")
    ] = None,
    by: Annotated[str, typer.Option("--by", help="Rows by 'project', 'user' or 'day'.")] = "project",
    as_json: JsonOption = False,
):
    """What your projects' tasks and machines used in a month, and its estimated cost."""
    if by not in ("project", "user", "day"):
        raise typer.BadParameter("choose 'project', 'user' or 'day'.", param_hint="--by")
    params = {k: v for k, v in (("project", project), ("month", month)) if v}
    report = api.client().get("/usage", params=params)
    if as_json:
        print_json(report)
        return
    currency = report["currency"]
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title=f"Usage in {report['month']} (UTC)"
    )
    table.add_column(by.capitalize(), overflow="fold")
    for column in ("Tasks", "Core-hours", "Memory GB-h", f"Est. cost ({currency})"):
        table.add_column(column, justify="right", no_wrap=True)
    with_machines = by == "project"
    if with_machines:
        table.add_column("Machine-hours", justify="right", no_wrap=True)
        table.add_column(f"Machine cost ({currency})", justify="right", no_wrap=True)
    rows = report[by + "s"] + [{by: "Total", **report["total"]}]
    for row in rows:
        cells = [
            str(row[by]),
            str(row["tasks"]),
            f"{row['core_hours']:.3f}",
            f"{row['memory_gb_hours']:.3f}",
            f"{row['estimated_cost']:.2f}",
        ]
        if with_machines:
            cells += [f"{row['machine_hours']:.3f}", f"{row['machine_cost']:.2f}"]
        table.add_row(*cells, end_section=row is rows[-2] if len(rows) > 1 else False)
    out.print(table)


@simulators_app.command("list")
def list_simulators(as_json: JsonOption = False):
    """The simulators this server offers, and whether its own host has them."""
    items = api.client().get("/simulators")
    if as_json:
        print_json(items)
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Name", no_wrap=True)
    table.add_column("Simulator", no_wrap=True)
    table.add_column("Version on the server", no_wrap=True)
    for s in items:
        version = s["version"] if s["available"] else Text(f"missing: {s['problem']}", style="yellow")
        table.add_row(s["name"], s["label"], version)
    out.print(table)


# -- you: quotas and who you are ------------------------------------------------------


def _quotas_table(me: users.User) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("Whose", overflow="fold")
    table.add_column("Limit")
    table.add_column("In use", justify="right", no_wrap=True)
    table.add_column("Allowed", justify="right", no_wrap=True)
    holders = [("You", me.quotas)] + [(f"{p.name} ({p.role})", p.quotas) for p in me.projects]
    for i, (whose, quotas) in enumerate(holders):
        for j, q in enumerate(quotas.values()):
            if q.in_use is None:
                used = "each group" if q.id == "max_group_ttl_minutes" else "each task"
            elif q.unit == "GB":
                used = render.size(round(q.in_use * 1000**3))
            else:
                used = f"{q.in_use:g}"
            allowed = "no limit" if q.max_allowed is None else f"{q.max_allowed:g} {q.unit}"
            table.add_row(
                whose if j == 0 else "",
                q.label,
                used,
                allowed,
                end_section=j == len(quotas) - 1 and i < len(holders) - 1,
            )
    return table


def _as_json(me: users.User) -> dict:
    return dataclasses.asdict(me)


@quotas_app.command("list")
def list_quotas(as_json: JsonOption = False):
    """Your quotas and your projects', with what is in use now; a machine group needs room under both."""
    me = users.get_info()
    if as_json:
        print_json({k: v for k, v in _as_json(me).items() if k in ("username", "quotas", "projects")})
        return
    out.print(_quotas_table(me))


@user_app.command("info")
def user_info(as_json: JsonOption = False):
    """Who you are on this server: your projects, quotas and this month's use."""
    me = users.get_info()
    if as_json:
        print_json(_as_json(me))
        return
    email = f" <{me.email}>" if me.email else ""
    out.print(f"{me.name or me.username}{email}" + (" (staff)" if me.is_staff else ""))
    out.print(f"Username  {me.username}")
    out.print(f"Server    {config.load().url}")
    roles = ", ".join(f"{p.name} ({p.role})" for p in me.projects) or "none yet"
    out.print(f"Projects  {roles}")
    u = me.usage
    out.print(
        f"This month ({u['month']}, UTC): {u['tasks']} tasks, {u['core_hours']:.3f} core-hours, "
        f"{u['memory_gb_hours']:.3f} memory GB-hours, estimated {u['estimated_cost']:.2f} {u['currency']}; "
        f"machines {u['machine_hours']:.3f} hours, {u['machine_cost']:.2f} {u['currency']}"
    )
    out.print()
    out.print(_quotas_table(me))


# -- auth ------------------------------------------------------------------------------


@auth_app.command("login")
def login(
    url: Annotated[str | None, typer.Option(help="The server's address.")] = None,
    api_key: Annotated[str | None, typer.Option(help="Your API key (asked for when left out).")] = None,
):
    """Check an API key against the server and store both for later commands."""
    url = (url or config.load().url).rstrip("/")
    if not api_key:
        if not sys.stdin.isatty():
            api_key = sys.stdin.readline().strip()
        else:
            api_key = typer.prompt("API key", hide_input=True, err=True).strip()
    who = api.Client(url=url, api_key=api_key, retries=api.DEFAULT_RETRIES).get("/whoami")
    path = config.save(url, api_key)
    note(f"Logged in to {url} as {who['username']}; saved in {path}.")


@auth_app.command("logout")
def logout():
    """Forget the stored API key."""
    path = config.forget_key()
    if path is None:
        note("No API key was stored.")
    else:
        note(f"Removed the API key from {path}.")
    if os.environ.get("SIMDECK_API_KEY"):
        note("SIMDECK_API_KEY is still set in this shell; unset it too.", "yellow")


@auth_app.command("whoami")
def whoami(as_json: JsonOption = False):
    """Who the API key belongs to, on which server."""
    settings = config.load()
    who = api.client().get("/whoami")
    if as_json:
        print_json(
            {**who, "url": settings.url, "url_from": settings.url_source, "key_from": settings.key_source}
        )
        return
    out.print(f"{who['username']}{' (staff)' if who['is_staff'] else ''} at {settings.url}")
    note(f"Address from {settings.url_source}, API key from {settings.key_source}.", "dim")


# -- running it ----------------------------------------------------------------------------


def _fail(message: str, code: int) -> None:
    err.print(Text.assemble(("Error: ", "bold red"), message), soft_wrap=True)
    sys.exit(code)


def _with_watch_default(argv: list[str]) -> list[str]:
    """Give ``tasks list -w`` its default period when no number follows.

    Click cannot parse an option whose value is optional, so the command
    line is completed before it parses it.
    """
    if argv[:2] != ["tasks", "list"]:
        return argv
    done = []
    for i, arg in enumerate(argv):
        done.append(arg)
        if arg in ("-w", "--watch"):
            try:
                float(argv[i + 1] if i + 1 < len(argv) else "")
            except ValueError:
                done.append("5")
    return done


# Options that take several values after one flag, as Inductiva's command line writes them
# (`tasks list -i A B`, `tasks download ID --filenames a b`). Click takes an option's values
# only one per flag, so each following word is given its own flag before Click parses it.
MULTI_VALUE = {
    ("tasks", "list"): {"--id", "-i", "--status", "-s"},
    ("tasks", "download"): {"--filenames"},
}


def _spread_values(argv: list[str]) -> list[str]:
    """``--filenames a b`` becomes ``--filenames a --filenames b``, up to the next option."""
    options = MULTI_VALUE.get(tuple(argv[:2]))
    if not options:
        return argv
    done: list[str] = []
    flag = None
    for arg in argv:
        if arg == "--":
            flag = None
        elif arg.startswith("-") and len(arg) > 1:
            flag = arg if arg in options else None
        elif flag is not None and done[-1] != flag:
            done.append(flag)  # a further value of the same option
        done.append(arg)
    return done


def main() -> None:
    api.DEFAULT_RETRIES = 3  # report a dead server in about a second, not ten
    debug = bool(os.environ.get("SIMDECK_DEBUG"))
    try:
        code = app(args=_spread_values(_with_watch_default(sys.argv[1:])), standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # bad usage: the command line's own message, exit code 2
        show = getattr(exc, "show", None)
        if show:
            show()
        else:
            _fail(exc.format_message(), exc.exit_code)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("Interrupted.")
        sys.exit(130)
    except SimdeckError as exc:
        _fail(str(exc), exc.exit_code)
    except (TypeError, ValueError) as exc:
        # Raised by the client's own checks (metadata, ids, names) before any request.
        if debug:
            raise
        _fail(str(exc), 2)
    except OSError as exc:
        if debug:
            raise
        _fail(str(exc), 1)
    except Exception as exc:
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc}. Run with SIMDECK_DEBUG=1 to see where.", 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
