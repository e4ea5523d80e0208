"""Many at once against a running Simdeck: bounded database connections, no deadlock.

A burst of concurrent API requests must not leave the web server holding
more database connections than its pool allows, nor answer any of them
with a 500. Terminating a group while its machines claim and finish short
tasks, and while new tasks arrive, must end every task without any process
running into a deadlock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
import threading
import time

import httpx
import pytest
from django.db import connection

from tasks_app import services
from tasks_app.lifecycle import TERMINAL
from tasks_app.models import Machine, MachineGroup, Task
from tests.helpers import wait_for, zipped

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

POOL_SIZE = 4
WEB_PROCESSES = 2
INPUT = zipped({"input.txt": b"tiny\n"})


# The web server under test names its connections (libpq reads PGAPPNAME),
# so they are told apart from the scheduler's, the provider's and ours.
WEB_APP_NAME = "simdeck-web-under-test"


def web_server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [WEB_APP_NAME],
        )
        return cursor.fetchone()[0]


def body(group: str, commands: list[str], inline: bool = True) -> dict:
    task = {
        "simulator": "commands",
        "machine_group": group,
        "input_files": ["input.txt"],
        "parameters": {"commands": commands},
    }
    if inline:
        task |= {
            "input_archive": base64.b64encode(INPUT).decode(),
            "input_sha256": hashlib.sha256(INPUT).hexdigest(),
        }
    return task


@pytest.fixture
def pooled_stack(stack):
    """The stack's web server restarted as an operator runs it (two processes), with small pools."""
    stack.procs[0].terminate()
    stack.procs[0].wait(timeout=30)
    stack.procs.pop(0)
    # Persistent connections, as the settings default to: the pool must win over them.
    stack.env |= {"CONN_MAX_AGE": "60", "SIMDECK_DB_POOL_SIZE": str(POOL_SIZE)}
    web = ["-m", "console.webserver", "--host", "127.0.0.1", "--port", str(stack.port)]
    argv = [sys.executable, *web, "--processes", str(WEB_PROCESSES)]
    stack.spawn("web-pooled", argv, env={"PGAPPNAME": WEB_APP_NAME})
    wait_for(lambda: _up(stack.url), timeout=60, message="the web server to come back")
    return stack


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/statuses", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_burst_of_requests_keeps_database_connections_bounded(pooled_stack, alice, alice_key):
    group = services.create_group(alice, machine_type="c2-standard-4", name="burst", max_idle_time=None)
    statuses: list[int] = []
    most = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most.append(web_server_connections())
            time.sleep(0.05)

    async def burst() -> None:
        headers = {"Authorization": f"Bearer {alice_key}"}
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(
            base_url=pooled_stack.url, headers=headers, timeout=120, limits=limits
        ) as c:
            created = await c.post("/api/v1/tasks", json=body(group.name, ["true"], inline=False))
            task_id = created.json()["id"]

            async def one(i: int) -> None:
                if i % 3 == 0:
                    response = await c.post("/api/v1/tasks", json=body(group.name, ["true"], inline=False))
                elif i % 3 == 1:
                    response = await c.get("/api/v1/tasks")
                else:
                    response = await c.get(f"/api/v1/tasks/{task_id}")
                statuses.append(response.status_code)

            await asyncio.gather(*(one(i) for i in range(240)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        asyncio.run(burst())
    finally:
        stop.set()
        watcher.join()
    assert len(statuses) == 240
    assert set(statuses) <= {200, 201}, sorted(set(statuses))
    # Used, they were: never more than the pools hold, and still no more after.
    assert 0 < max(most) <= WEB_PROCESSES * POOL_SIZE, most
    assert web_server_connections() <= WEB_PROCESSES * POOL_SIZE
    assert "too many clients" not in pooled_stack.logs()


def submit_until(url: str, key: str, group: str, stop: threading.Event, outcomes: list) -> None:
    """Keep submitting (half inline, half with an upload) until ``stop``; record every answer."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
        i = 0
        while not stop.is_set():
            i += 1
            created = c.post("/api/v1/tasks", json=body(group, ["true"], inline=i % 2 == 0))
            outcomes.append(created.status_code)
            if created.status_code == 201 and created.json()["upload_url"]:
                uploaded = c.put(
                    created.json()["upload_url"],
                    content=INPUT,
                    headers={
                        "X-Archive-Size": str(len(INPUT)),
                        "X-Content-SHA256": hashlib.sha256(INPUT).hexdigest(),
                    },
                )
                outcomes.append(uploaded.status_code)


def test_terminating_a_busy_group_never_deadlocks(stack, alice, alice_key):
    for round_ in range(3):
        group = services.start_group(
            services.create_group(
                alice, machine_type="n2-standard-2", name=f"busy-{round_}", num_machines=2, max_idle_time=None
            )
        )
        wait_for(
            lambda g=group: Machine.objects.filter(group=g, state=Machine.State.ONLINE).count() == 2,
            timeout=120,
            message="both machines online",
        )
        stop, outcomes = threading.Event(), []
        submitters = [
            threading.Thread(target=submit_until, args=(stack.url, alice_key, group.name, stop, outcomes))
            for _ in range(3)
        ]
        for t in submitters:
            t.start()
        try:
            # Machines busy claiming and finishing, submitters busy uploading.
            wait_for(
                lambda g=group: Task.objects.filter(machine_group=g, status="success").count() >= 4,
                timeout=120,
                message="the machines to finish a few tasks",
            )
            services.terminate_group(group, reason="Terminated while busy.")
        finally:
            stop.set()
            for t in submitters:
                t.join(timeout=120)
        # Refused once the group is terminating (409), never a server error.
        assert set(outcomes) <= {200, 201, 409}, sorted(set(outcomes))
        wait_for(
            lambda g=group: not Task.objects.filter(machine_group=g).exclude(status__in=TERMINAL).exists(),
            timeout=120,
            message="every task of the group to end",
        )
        wait_for(
            lambda g=group: MachineGroup.objects.get(pk=g.pk).state == MachineGroup.State.TERMINATED,
            timeout=120,
            message="the group to be terminated",
        )
    # Every log in full: the web server's, the scheduler's, the provider's and each machine's.
    for log in stack.home.rglob("*.log"):
        text = log.read_text(errors="replace")
        assert "deadlock" not in text.lower(), f"{log.name}:\n{text[-4000:]}"
        assert "Internal Server Error" not in text, f"{log.name}:\n{text[-4000:]}"
