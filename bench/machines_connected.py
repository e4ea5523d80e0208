"""A hundred machines on other hosts connected at once: what the control plane pays for them.

A stack (web server, scheduler, local provider with one machine) serves
``hosts`` groups of 100 machines in all. Hosts join with a token
(``simdeck-machine join --machines 50``, two processes of 50 machines on
this host, each machine with its own token), go online and wait for work:
a long poll for a task and a heartbeat every ``SIMDECK_HEARTBEAT_SECONDS``
(the default, 5 s), which is all an idle machine does. Over ``WINDOW``
seconds, before the hosts join and once all their machines are online:

* the CPU time of the control plane (web server, scheduler, provider; not
  the machines, which run elsewhere in a real deployment),
* its PostgreSQL connections (``pg_stat_activity`` on the benchmark's
  database, less this process' own and the local machine's), sampled
  every second.

A local machine holds a database connection and broker connections of its
own for as long as it lives; a machine elsewhere holds none.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time

import psutil

from bench import harness
from bench.harness import percentiles, result
from bench.idle import cpu_seconds, role_processes

TITLE = "Machines on other hosts"
NAME = "machines_connected"
PER_HOST = 50
DISPATCHES = 30
WINDOW = 30.0
JOIN = [sys.executable, "-m", "tasks_app.executor.remote", "join"]
SECRETS = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    count, window = (10, 5.0) if quick else (100, WINDOW)
    with harness.Stack(machines=1) as stack:
        groups, secret = _groups(stack, count)
        time.sleep(3)  # past the start's own work
        idle = _measure(stack, window)
        hosts = _join(stack, count, secret)
        try:
            _until_online(stack, groups, count)
            time.sleep(5)  # past the machines' own start
            loaded = _measure(stack, window)
            local, remote = _dispatch(stack, groups[0], 3 if quick else DISPATCHES)
        finally:
            for proc in hosts:
                proc.send_signal(signal.SIGTERM)
            for proc in hosts:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    p_remote, p_local = percentiles(remote), percentiles(local)
    note = f"{count} machines waiting for work (long poll and a heartbeat every 5 s) over {window:.0f} s"
    return [
        result(
            NAME,
            f"control plane CPU with {count} machines connected",
            "% of a core",
            loaded["cpu"],
            idle["cpu"],
            baseline_name="the same stack with none",
            note=note,
        ),
        result(
            NAME,
            f"PostgreSQL connections with {count} machines connected (mean)",
            "connections",
            loaded["db"],
            idle["db"],
            baseline_name="the same stack with none",
            note="a local machine holds one of its own as long as it lives",
        ),
        *(
            result(
                NAME,
                f"submit to simulator start on a machine of a joined host, {p}",
                "ms",
                p_remote[p] * 1000,
                p_local[p] * 1000,
                baseline_name="the same on a local machine",
                note="queued_at to started_at of a one-line task, one at a time, turn about",
            )
            for p in ("p50", "p95")
        ),
    ]


def _groups(stack: harness.Stack, count: int) -> tuple[list, str]:
    """Started ``hosts`` groups of ``count`` machines in all, and the join token their hosts use."""
    from tasks_app import services
    from tasks_app.services import hosts

    _, secret = hosts.issue_token(f"{stack.group_name}-hosts")  # before the groups start: they check one
    groups, left, n = [], count, 0
    while left:
        size = min(left, 50)  # a group has at most 64 machines
        group = services.create_group(
            stack.user,
            machine_type="n2-standard-2",
            name=f"{stack.group_name}-h{n}",
            num_machines=size,
            provider="hosts",
            max_idle_time=None,
        )
        groups.append(services.start_group(group))
        left, n = left - size, n + 1
    return groups, secret


def _join(stack: harness.Stack, count: int, secret: str) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("SIMDECK_")}
    procs, left, n = [], count, 0
    while left:
        size = min(left, PER_HOST)
        folder = harness.home() / "hosts" / f"{stack.port}-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "host.log", "ab")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tasks_app.executor.remote",
                    "join",
                    stack.url,
                    "--machines",
                    str(size),
                ],
                cwd=harness.ROOT,
                env=env | {"SIMDECK_HOME": str(folder), "SIMDECK_JOIN_TOKEN": secret},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
        left, n = left - size, n + 1
    return procs


def _dispatch(stack: harness.Stack, remote_group, count: int) -> tuple[list[float], list[float]]:
    """Seconds from queued to started of one-line tasks, on the local group and on a hosts group."""
    from tasks_app.lifecycle import TERMINAL
    from tasks_app.models import Task

    times: dict[str, list[float]] = {"local": [], "remote": []}
    with harness.api_client(stack) as client:
        for i in range(count + 1):  # the first of each warms up
            for where, name in (("local", stack.group_name), ("remote", remote_group.name)):
                task_id = harness.submit_commands(client, name, ["true"])
                deadline = time.monotonic() + 60
                while (task := Task.objects.get(pk=task_id)).status not in TERMINAL:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"Task {task_id} did not end; logs:\n{stack.logs()}")
                    time.sleep(0.01)
                if task.status != "success":
                    raise RuntimeError(f"Task {task_id} ended {task.status}: {task.error_detail}")
                if i:
                    times[where].append((task.started_at - task.queued_at).total_seconds())
    return times["local"], times["remote"]


def _until_online(stack: harness.Stack, groups: list, count: int) -> None:
    from tasks_app.models import Machine

    deadline = time.monotonic() + 300
    while Machine.objects.filter(group__in=groups, state=Machine.State.ONLINE).count() < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Not all {count} machines came online; logs:\n{stack.logs()}")
        time.sleep(0.5)


def db_port() -> int:
    from django.conf import settings

    return int(settings.DATABASES["default"].get("PORT") or 5432)


def _measure(stack: harness.Stack, window: float) -> dict:
    from django.db import connection

    roles = role_processes(stack._processes.procs)
    plane = roles["web"] + roles["scheduler"] + roles["provider"]
    cpu0, began = cpu_seconds(plane), time.monotonic()
    db = []
    while time.monotonic() - began < window:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            db.append(cursor.fetchone()[0])
        time.sleep(1.0)
    elapsed = time.monotonic() - began
    # The local machine's own connections are not the control plane's.
    local_machine = _connections_to(roles["machines"], db_port())
    return {
        "cpu": (cpu_seconds(plane) - cpu0) / elapsed * 100,
        "db": statistics.mean(db) - local_machine,
    }


def _connections_to(procs: list[psutil.Process], port: int) -> int:
    """How many TCP connections ``procs`` hold to ``port`` on any host."""
    total = 0
    for proc in procs:
        try:
            total += sum(1 for c in proc.net_connections("tcp") if c.raddr and c.raddr.port == port)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


if __name__ == "__main__":
    from bench.__main__ import main

    raise SystemExit(main([NAME]))
