"""Fault runs too long for the test suite: ``python -m bench.chaos [NAMES...]`` (``make chaos``).

Each scenario runs a real Simdeck (daphne, scheduler, local provider and its
machines) on a PostgreSQL and a Redis of its own, started for the run under
a temporary ``SIMDECK_HOME`` (the embedded servers of ``console/embedded/``),
so restarting them never disturbs another user of the machine. A scenario
breaks something mid-batch, then checks that nothing was lost: every task
ended, the right ones succeeded, none succeeded twice (each task appends its
id to a ledger on the host over the network), the group is back to its size.

    kills      SIGKILL a machine mid-task 20 times over a batch (40 tasks and more)
    redis      restart Redis in the middle of a 200-task batch
    postgres   restart PostgreSQL in the middle of a 200-task batch
    flood      1,000 submissions fired within one second

The shorter versions are in ``tests/test_faults.py``. Not a benchmark: the
runner of ``python -m bench`` skips this module (it has no ``run``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from console import servers
from tasks_app.testing.clients import WATCHING_CLIENT
from tasks_app.testing.ledger import Ledger

SCENARIOS = ("kills", "redis", "postgres", "flood")


class Failed(AssertionError):
    pass


def check(condition, message: str) -> None:
    if not condition:
        raise Failed(message)


def wait(predicate, timeout: float, message: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # e.g. the database is restarting; ask again
            from django.db import close_old_connections

            close_old_connections()
            print(f"    (waiting: {type(exc).__name__})", flush=True)
            value = None
        if value:
            return value
        time.sleep(interval)
    raise Failed(f"Timed out after {timeout:.0f} s waiting for {message}")


class Run:
    """A private Simdeck: its own home, database, Redis and processes."""

    def __init__(self, home: Path):
        self.home = home

    def __enter__(self) -> Run:
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from tasks_app.models import APIKey
        from tasks_app.testing.stack import ProcessStack

        self.stack = ProcessStack(self.home / "stack")
        settings.SIMDECK_QUEUE_PREFIX = self.stack.queue_prefix
        self.user, _ = get_user_model().objects.get_or_create(username="chaos")
        self.key = APIKey.issue(self.user, "chaos")[1]
        self.stack.start(timeout=90)
        # Simulations report over the network (their groups are allowed it): they write nowhere else.
        self.ledger = Ledger(self.home / "ledger.txt")
        return self

    def __exit__(self, *exc) -> None:
        self.stack.stop()

    def group(self, machines: int = 2) -> str:
        from tasks_app import services

        group = services.create_group(
            self.user, machine_type="n2-standard-2", num_machines=machines, max_idle_time=None
        )
        group.allow_network = True  # for the ledger, as an admin would allow it
        group.save(update_fields=["allow_network"])
        group = services.start_group(group)
        wait(lambda: online(group.name) == machines, 120, "the machines to come online")
        return group.name

    def client(self, cls=None, **options):
        import httpx

        options.setdefault("timeout", 120)
        return (cls or httpx.Client)(
            base_url=self.stack.url, headers={"Authorization": f"Bearer {self.key}"}, **options
        )

    def work(self, seconds: float) -> list[str]:
        start, done = self.ledger.note("start"), self.ledger.note("done")
        return [f"{start}; sleep {seconds}; {done}" if seconds else f"{start}; {done}"]

    def submit(
        self, group: str, count: int, seconds: float = 0, resubmit_every: int = 0, commands=None
    ) -> list[str]:
        """Submit through the API as a client does; every ``resubmit_every``-th asks for resubmission."""
        from bench.harness import INPUT_NAME, input_archive

        data, digest = input_archive()
        ids = []
        with self.client() as http:
            for i in range(count):
                created = http.post(
                    "/api/v1/tasks",
                    json={
                        "simulator": "commands",
                        "machine_group": group,
                        "input_files": [INPUT_NAME],
                        "parameters": {"commands": commands or self.work(seconds)},
                        "resubmit_on_preemption": bool(resubmit_every) and i % resubmit_every == 0,
                    },
                )
                check(created.status_code == 201, f"submission refused: {created.text[:300]}")
                uploaded = http.put(
                    created.json()["upload_url"],
                    content=data,
                    headers={"X-Archive-Size": str(len(data)), "X-Content-SHA256": digest},
                )
                check(uploaded.status_code == 200, f"upload refused: {uploaded.text[:300]}")
                ids.append(created.json()["id"])
        return ids

    def settle(self, ids: list[str], timeout: float) -> dict[str, str]:
        """Wait until every task has ended; their final statuses."""
        from tasks_app.lifecycle import TERMINAL
        from tasks_app.models import Task

        def ended():
            rows = dict(Task.objects.filter(pk__in=ids).values_list("id", "status"))
            left = [i for i in ids if rows.get(i) not in TERMINAL]
            return rows if not left else None

        return wait(ended, timeout, f"{len(ids)} tasks to end")

    def audit(self, final: dict[str, str], expect_success: set[str]) -> None:
        """No task lost, none run to success twice, the right ones succeeded."""
        from tasks_app.models import TaskEvent

        done = self.ledger.reports("done")
        at_once, _again = self.ledger.doubled()
        succeeded = {i for i, s in final.items() if s == "success"}
        check(succeeded == expect_success, f"unexpected endings: {_tally(final)}")
        never = [i for i in succeeded if not done.get(i)]
        check(not never, f"tasks that succeeded without their work done: {never}")
        check(not at_once, f"tasks whose work ran twice at once: {sorted(at_once)}")
        events = collections.Counter(
            TaskEvent.objects.filter(task_id__in=final, to_status="success").values_list("task_id", flat=True)
        )
        check(all(n == 1 for n in events.values()), "a task reached success twice")


def online(group_name: str) -> int:
    from tasks_app.models import Machine

    return Machine.objects.filter(group__name=group_name, state=Machine.State.ONLINE).count()


def _tally(final: dict[str, str]) -> dict[str, int]:
    return dict(collections.Counter(final.values()))


# -- scenarios ---------------------------------------------------------------------------


def kills(run: Run, times: int = 20) -> str:
    import datetime as dt

    from django.utils import timezone

    from tasks_app.models import Machine, Task

    group = run.group(2)
    ids = run.submit(group, 2 * times, seconds=1.5, resubmit_every=2)
    resubmitted = set(ids[::2])
    victims: dict[str, int] = {}
    for n in range(times):
        if Task.objects.filter(pk__in=ids, status="submitted").count() < 4:
            more = run.submit(group, 10, seconds=1.5, resubmit_every=2)  # keep the machines busy
            ids += more
            resubmitted |= set(more[::2])
        task = wait(
            lambda ids=ids: (
                Task.objects.filter(
                    pk__in=ids, status="started", started_at__gt=timezone.now() - dt.timedelta(seconds=0.8)
                )
                .exclude(pk__in=victims)
                .select_related("machine")
                .first()
            ),
            120,
            "a task that just started",
            interval=0.05,
        )
        os.kill(task.machine.pid, signal.SIGKILL)
        victims[task.id] = task.machine_id
        wait(lambda m=task.machine_id: Machine.objects.get(pk=m).state == "lost", 30, "the machine lost")
        # No wait for its replacement: the other machine goes on, and the next
        # kill waits for a task that just started, wherever it runs.
        print(f"    kill {n + 1}/{times}: machine of task {task.id}", flush=True)
    final = run.settle(ids, 300)
    lost_for_good = {i for i in victims if i not in resubmitted}
    for task_id in lost_for_good:
        check(final[task_id] == "executor-terminated", f"{task_id} ended {final[task_id]}")
    run.audit(final, set(ids) - lost_for_good)
    from tasks_app import live
    from tasks_app.live import publishing

    for task_id in lost_for_good:  # followers of their logs were told they ended
        last = publishing.redis_client().xrevrange(live.log_stream_key(task_id), count=1)
        check(last and last[0][1][b"s"] == b"end", f"the log of {task_id} never got its end mark")
    again = Task.objects.filter(pk__in=set(victims) & resubmitted, attempt=2).count()
    check(again == len(set(victims) & resubmitted), "a resubmitted task did not run a second time")
    wait(lambda: online(group) == 2, 60, "the group back to its size")
    return f"{times} kills; {_tally(final)}; {again} tasks ran again on another machine"


# The watched task prints until told to stop (by a file outside its work
# directory), so it runs across the restart however slow the machine is.
WATCHED_MAX_LINES = 20_000


def _restart_midway(run: Run, restart, name: str) -> str:
    """A 200-task batch and a watched task with two clients; ``restart`` strikes mid-batch."""
    import subprocess

    from tasks_app.lifecycle import TERMINAL
    from tasks_app.models import Task

    group = run.group(2)
    stop = run.home / "stop-printing"
    printing = (
        f"i=0; while [ ! -e {stop} ] && [ $i -lt {WATCHED_MAX_LINES} ]; "
        "do i=$((i+1)); echo line-$i; sleep 0.05; done"
    )
    watched = run.submit(group, 1, commands=[printing, *run.work(0)])[0]
    followed = run.home / "followed.txt"
    env = dict(
        os.environ,
        SIMDECK_API_URL=run.stack.url,
        SIMDECK_API_KEY=run.key,
        SIMDECK_CONFIG=str(run.home / "client.json"),
    )
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", WATCHING_CLIENT, what, watched, str(followed), "0.5"],
            cwd=run.home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for what in ("wait", "logs")
    ]
    try:
        ids = run.submit(group, 200, seconds=0.2)
        wait(
            lambda: followed.exists() and followed.read_text().count("\n") >= 30,
            180,
            "the watched task's log to be followed",
        )
        check(Task.objects.get(pk=watched).status == "started", "the watched task is no longer running")
        left = Task.objects.filter(pk__in=ids).exclude(status__in=TERMINAL).count()
        check(left >= 50, f"only {left} tasks of the batch left: the restart would not be midway")
        started = time.monotonic()
        restart()
        print(
            f"    {name} restarted in {time.monotonic() - started:.1f} s, {left} of 200 tasks to go",
            flush=True,
        )
        before = followed.read_text().count("\n")
        wait(
            lambda: followed.read_text().count("\n") >= before + 30,
            180,
            "the log follower to carry on after the restart",
        )
        stop.touch()
        final = run.settle([*ids, watched], 420)
        waiter, follower = (c.communicate(timeout=120) for c in clients)
    finally:
        for c in clients:
            c.kill()
    run.audit(final, {*ids, watched})
    check(waiter[0].strip() == "success", f"the waiting client ended with {waiter[0]!r} {waiter[1][-1500:]}")
    check(clients[1].returncode == 0, f"the log follower failed: {follower[1][-1500:]}")
    lines = followed.read_text().splitlines()
    with run.client() as http:
        stored = http.get(f"/api/v1/tasks/{watched}/logs/stdout").text.splitlines()
    check(
        lines == stored == [f"line-{i}" for i in range(1, len(stored) + 1)],
        f"the followed log differs from the stored one: {len(lines)} lines against {len(stored)}",
    )
    wait(lambda: online(group) == 2, 60, "the group back to its size")
    return f"200 tasks and a watched one, {name} restarted, {left} to go; {_tally(final)}; clients carried on"


def redis(run: Run) -> str:
    from django.conf import settings

    from console import embedded

    def restart():
        embedded.stop_redis(settings.SIMDECK_HOME)
        time.sleep(2)
        embedded.start_redis(settings.SIMDECK_HOME)

    return _restart_midway(run, restart, "Redis")


def postgres(run: Run) -> str:
    from django.conf import settings
    from django.db import connections

    from console import embedded

    def restart():
        connections.close_all()
        embedded.stop_postgres(settings.SIMDECK_HOME)
        time.sleep(2)
        embedded.start_postgres(settings.SIMDECK_HOME)

    return _restart_midway(run, restart, "PostgreSQL")


def flood(run: Run, count: int = 1000, ran: int = 150) -> str:
    """1,000 submissions within a second, each with its input inline as the client sends it.

    Every one must be answered (no 5xx, every refusal explained) and queued.
    Two machines would need many minutes for all of them, so once ``ran``
    have succeeded the group is terminated: the rest must end as zombies
    that never ran, none left behind, none run twice.
    """
    import base64

    import httpx

    from bench.harness import INPUT_NAME, input_archive
    from tasks_app import services
    from tasks_app.models import MachineGroup, Task

    group = run.group(2)
    data, digest = input_archive()
    body = {
        "simulator": "commands",
        "machine_group": group,
        "input_files": [INPUT_NAME],
        "parameters": {"commands": run.work(0)},
        "input_archive": base64.b64encode(data).decode(),
        "input_sha256": digest,
    }

    busy = 0

    async def one(http, delay: float):
        nonlocal busy
        await asyncio.sleep(delay)  # spread evenly over one second
        for _ in range(30):
            answer = await http.post("/api/v1/tasks", json=body)
            if answer.status_code != 503:
                return answer
            # Too busy for now, and nothing was done: ask again when told to, as the client does.
            busy += 1
            await asyncio.sleep(float(answer.headers.get("Retry-After", "5")))
        return answer

    async def fire():
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        # The server answers one request after another: the last waits for all the others.
        async with run.client(httpx.AsyncClient, limits=limits, timeout=600) as http:
            return await asyncio.gather(*(one(http, i / count) for i in range(count)))

    started = time.monotonic()
    answers = asyncio.run(fire())
    took = time.monotonic() - started
    codes = collections.Counter(r.status_code for r in answers)
    check(all(c < 500 for c in codes), f"server errors among the final answers: {dict(codes)}")
    for response in answers:
        if response.status_code >= 400:
            check("message" in response.json(), f"a refusal without a message: {response.text[:200]}")
    ids = [r.json()["id"] for r in answers if r.status_code == 201]
    check(len(ids) == len(set(ids)), "two submissions got the same id")
    unqueued = Task.objects.filter(pk__in=ids, status="pending-input").count()
    check(unqueued == 0, f"{unqueued} accepted submissions never joined the queue")
    wait(
        lambda: Task.objects.filter(pk__in=ids, status="success").count() >= ran,
        300,
        f"{ran} of the flood to succeed",
    )
    services.terminate_group(MachineGroup.objects.get(name=group), reason="The flood was sampled enough.")
    final = run.settle(ids, 180)
    endings = {"success", "zombie", "executor-terminated-by-user"}
    check(set(final.values()) <= endings, f"unexpected endings: {_tally(final)}")
    run.audit(final, {i for i, s in final.items() if s == "success"})
    ledger = run.ledger.text()
    ran_anyway = [i for i, s in final.items() if s == "zombie" and i in ledger]
    check(not ran_anyway, f"tasks ended as zombies that ran all the same: {ran_anyway[:5]}")
    return (
        f"{count} submissions answered in {took:.1f} s: {dict(codes)} after {busy} 'too busy' answers "
        f"(503, asked again); {_tally(final)}"
    )


# -- running -----------------------------------------------------------------------------


def setup(home: Path) -> None:
    """Django on a private embedded PostgreSQL and Redis under ``home``, migrated."""
    os.environ["SIMDECK_HOME"] = str(home)
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    servers.start_embedded(home)
    import logging

    import django
    from django.core.management import call_command

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    call_command("migrate", interactive=False, verbosity=0)


def teardown(home: Path) -> None:
    from django.db import connections

    from console import embedded

    connections.close_all()
    embedded.stop_redis(home)
    embedded.stop_postgres(home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"scenarios: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home for inspection")
    args = parser.parse_args(argv)
    names = args.names or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    from bench.harness import stop_on_sigterm

    stop_on_sigterm()
    home = Path(tempfile.mkdtemp(prefix="simdeck-chaos-"))
    os.chmod(home, 0o755)  # the embedded PostgreSQL runs as its own user
    failures = 0
    try:
        setup(home)
        for name in names:
            print(f"== {name}", flush=True)
            started = time.monotonic()
            run = Run(home / f"run-{name}")
            run_home = run.home
            run_home.mkdir()
            try:
                with run:
                    summary = globals()[name](run)
                print(f"   ok in {time.monotonic() - started:.0f} s: {summary}", flush=True)
            except Exception as exc:
                failures += 1
                print(
                    f"   FAILED after {time.monotonic() - started:.0f} s: {type(exc).__name__}: {exc}",
                    flush=True,
                )
                if hasattr(run, "stack"):
                    print(run.stack.logs()[-6000:], flush=True)
    finally:
        teardown(home)
        if args.keep or failures:
            print(f"Kept {home} for inspection.")
        else:
            shutil.rmtree(home, ignore_errors=True)
    print(f"{len(names) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
