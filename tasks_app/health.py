"""Is everything up? What runs, and whether what the platform depends on answers.

Read by the staff's health page and ``manage.py health``. The processes come
from the state files the supervisors keep in ``SIMDECK_HOME``
(console/supervisor.py): the launcher's (web server, scheduler, provider)
and the web server's own (its daphne processes). Where something else runs
the processes (systemd, a Procfile) there is no such file, and only the
checks are shown. Each check asks its service for real, once per report.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count, Q
from django.utils import timezone

from console.supervisor import LAUNCHER_STATE, WEB_STATE, read_state
from tasks_app import sandbox, storage
from tasks_app.models import Machine, MachineGroup

# A service that does not answer within this many seconds is down for the report.
TIMEOUT_SECONDS = 3
LIVE = [Machine.State.PROVISIONING, Machine.State.ONLINE, Machine.State.STOPPING]
MACHINES_SHOWN = 200


@dataclass(frozen=True)
class Process:
    """One supervised process as its supervisor last wrote it, checked against the system."""

    name: str
    pid: int | None
    state: str  # "running", "restarting" (its supervisor starts it again) or "gone"
    started_at: str
    restarts: int
    last_exit: str
    last_exit_at: str
    log: str

    @property
    def ok(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    supervisor: str  # one sentence: who runs the processes
    supervisor_ok: bool
    processes: list[Process] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    machines: list[Machine] = field(default_factory=list)
    machines_live: int = 0

    @property
    def ok(self) -> bool:
        return self.supervisor_ok and all(p.ok for p in self.processes) and all(c.ok for c in self.checks)

    @property
    def down(self) -> list[str]:
        """The names of what is not well, for a one-line summary."""
        names = [] if self.supervisor_ok else ["launcher"]
        names += [p.name for p in self.processes if not p.ok]
        return names + [c.name for c in self.checks if not c.ok]


def report() -> Report:
    home = Path(settings.SIMDECK_HOME)
    out = supervised(home)
    database = check_database()
    out.checks = [database, *check_redis_and_broker(), check_storage(), check_sandbox()]
    if not database.ok:
        return out  # the providers' groups and the machines are read from it
    out.checks += check_providers()
    machines = Machine.objects.filter(state__in=LIVE).select_related("group").order_by("group__name", "name")
    out.machines = list(machines[:MACHINES_SHOWN])
    out.machines_live = len(out.machines) if len(out.machines) < MACHINES_SHOWN else machines.count()
    return out


# -- processes ----------------------------------------------------------------------------


def supervised(home: Path) -> Report:
    """The launcher's processes, with the web server's daphne processes after the web server."""
    state = read_state(home / LAUNCHER_STATE)
    if state is None:
        return Report(
            f"No launcher runs from {home} (no {LAUNCHER_STATE}): the processes are run by "
            "something else, such as systemd, and only the services are checked here.",
            True,
        )
    if state["stopped"]:
        return Report(f"The launcher (pid {state['launcher']}) has stopped everything it ran.", True)
    if not alive(state["launcher"]):
        return Report(f"The launcher (pid {state['launcher']}) is gone without stopping what it ran.", False)
    out = Report(f"Run by the launcher (manage.py up, pid {state['launcher']}).", True)
    web = read_state(home / WEB_STATE)
    for entry in state["processes"]:
        process = as_process(entry)
        out.processes.append(process)
        if (
            process.name == "web server"
            and process.ok
            and web is not None
            and web["launcher"] == process.pid
            and not web["stopped"]
        ):
            # Its daphne processes write to its own log.
            out.processes += [as_process(e | {"log": e["log"] or process.log}) for e in web["processes"]]
    return out


def as_process(entry: dict) -> Process:
    pid = entry["pid"]
    if pid is None:
        state = "restarting"
    else:
        state = "running" if alive(pid) else "gone"
    return Process(
        name=entry["name"],
        pid=pid,
        state=state,
        started_at=entry["started_at"],
        restarts=entry["restarts"],
        last_exit=entry["last_exit"],
        last_exit_at=entry["last_exit_at"],
        log=entry["log"],
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a process killed a moment ago is a zombie until its supervisor looks."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- services -----------------------------------------------------------------------------


def check_database() -> Check:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('server_version')")
            (version,) = cursor.fetchone()
    except (DatabaseError, OSError) as exc:
        return Check("database", False, first_line(exc))
    where = connection.settings_dict.get("HOST") or "a local socket"
    name = connection.settings_dict["NAME"]
    return Check("database", True, f"PostgreSQL {version} at {where}, database {name}")


def check_redis_and_broker() -> list[Check]:
    """Redis carries live updates and login throttling; the broker (Redis too, unless RabbitMQ) the tasks."""
    checks = [check_redis()]
    if settings.CELERY_BROKER_URL == settings.REDIS_URL:
        return [Check("Redis and broker", checks[0].ok, checks[0].detail)]
    return [*checks, check_broker()]


def check_redis() -> Check:
    import redis

    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS
    )
    try:
        version = client.info("server")["redis_version"]
    except (redis.RedisError, OSError) as exc:
        return Check("Redis", False, first_line(exc))
    finally:
        client.close()
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return Check("Redis", True, f"Redis {version} at {where}")


def check_broker() -> Check:
    from console.celery import app

    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=0, timeout=TIMEOUT_SECONDS)
            where = conn.as_uri()  # without the password
    except Exception as exc:  # kombu raises the transport's own errors
        return Check("broker", False, first_line(exc))
    return Check("broker", True, where)


def check_storage() -> Check:
    try:
        return Check("file storage", True, f"stored {storage.check()}")
    except storage.StorageUnavailable as exc:
        return Check("file storage", False, first_line(exc))


def check_sandbox() -> Check:
    """Made anew for each report: a host that lost its sandbox must show it, not an old success."""
    if not sandbox.enabled():
        return Check("sandbox", True, "OFF (SIMDECK_SANDBOX=off): simulations run with the machines' rights")
    sandbox.check.cache_clear()
    try:
        return Check("sandbox", True, sandbox.check())
    except sandbox.SandboxUnavailable as exc:
        return Check("sandbox", False, f"no machine will start: {exc}")


def check_providers() -> list[Check]:
    """Per provider: its started groups and live machines; a machine silent past the lost limit is a fault.

    The scheduler marks such a machine lost within seconds; one that stays
    silent and live means the scheduler's housekeeping is not running.
    """
    silent_seconds = settings.SIMDECK_MACHINE_LOST_SECONDS * 2
    silent_since = timezone.now() - dt.timedelta(seconds=silent_seconds)
    groups = dict(
        MachineGroup.objects.filter(state=MachineGroup.State.STARTED)
        .values_list("provider")
        .annotate(n=Count("pk"))
        .order_by()
    )
    rows = (
        Machine.objects.filter(state__in=LIVE)
        .values("group__provider")
        .annotate(
            live=Count("pk"),
            online=Count("pk", filter=Q(state=Machine.State.ONLINE)),
            silent=Count("pk", filter=Q(state=Machine.State.ONLINE, last_heartbeat_at__lt=silent_since)),
        )
        .order_by()
    )
    machines = {r["group__provider"]: r for r in rows}
    checks = []
    # Each provider this server runs, and any other that still has groups or machines.
    for provider in sorted(set(settings.SIMDECK_PROVIDERS) | groups.keys() | machines.keys()):
        m = machines.get(provider, {"live": 0, "online": 0, "silent": 0})
        detail = (
            f"{plural(groups.get(provider, 0), 'started group')}, "
            f"{plural(m['live'], 'live machine')} ({m['online']} online)"
        )
        if m["silent"]:
            detail += f"; {plural(m['silent'], 'machine')} silent for over {silent_seconds:g} s"
        checks.append(Check(f"{provider} provider", not m["silent"], detail))
    return checks


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
