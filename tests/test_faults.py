"""Faults on purpose: killed machines, garbage output, a web server restart.

Each test breaks a real running Simdeck the way life does and then checks
that nothing was lost: every task reaches a final status that says what
happened, no task runs to success twice, logs survive, clients carry on.
The longer versions (20 kills, Redis and PostgreSQL restarts, a flood of
1,000 submissions) are in ``bench/chaos.py`` (``make chaos``). Filling a
task's disk is covered in test_statuses_for_real.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import websockets
from asgiref.sync import async_to_sync
from django.utils import timezone

import simdeck
from tasks_app import lifecycle
from tasks_app.lifecycle import Status
from tasks_app.models import Machine, MachineGroup, Task, TaskEvent
from tasks_app.testing.clients import WATCHING_CLIENT
from tasks_app.testing.ledger import Ledger
from tasks_app.testing.stack import signal_group
from tests.helpers import ROOT, processes_of, task_status, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.faults, pytest.mark.timeout(300)]

INPUT = ROOT / "examples" / "commands-mesh-solve"


@pytest.fixture
def alice_client(client_for, alice_key):
    return client_for(alice_key)


def submit(mg, *commands: str, input_dir: Path = INPUT, **options) -> simdeck.tasks.Task:
    return simdeck.simulators.Commands().run(input_dir=input_dir, commands=list(commands), on=mg, **options)


def online(group_name: str) -> int:
    return Machine.objects.filter(group__name=group_name, state=Machine.State.ONLINE).count()


# -- machines killed mid-task ---------------------------------------------------------


async def frames_until_closed(url: str, key: str, attached: threading.Event, limit: float) -> tuple:
    """JSON log frames until the server closes the socket; ``attached`` once lines flow."""
    frames = []
    async with websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {key}"},
        origin=url.split("/ws/")[0].replace("ws", "http", 1),
    ) as ws:
        try:
            async with asyncio.timeout(limit):
                async for message in ws:
                    frames.append(json.loads(message))
                    if frames[-1]["type"] == "lines":
                        attached.set()
        except TimeoutError:
            return frames, None
        return frames, ws.close_code


class Followers:
    """A task followed as users follow it: its log socket, ``simdeck logs`` and ``wait()``."""

    def __init__(self, stack, task, key: str, tmp_path: Path):
        self.attached = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor()
        url = stack.url.replace("http://", "ws://") + f"/ws/tasks/{task.id}/logs/?format=json"
        self.socket = self.pool.submit(lambda: asyncio.run(frames_until_closed(url, key, self.attached, 150)))
        self.waiter = self.pool.submit(task.wait, polling_period=0.5, silent_mode=True)
        self.printed = tmp_path / "cli-logs.txt"
        with open(self.printed, "w") as out:
            self.cli = subprocess.Popen(
                [str(Path(sys.executable).parent / "simdeck"), "logs", task.id],
                env=dict(os.environ, NO_COLOR="1"),
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
            )

    def following(self) -> bool:
        return "tick-" in self.printed.read_text() and self.attached.is_set()

    def results(self) -> tuple:
        try:
            frames, code = self.socket.result(timeout=150)
            _, cli_err = self.cli.communicate(timeout=150)
            return frames, code, cli_err, self.waiter.result(timeout=150)
        finally:
            self.cli.kill()
            self.pool.shutdown(wait=False)


def test_sigkilled_machines_lose_no_task_run_none_twice_and_end_their_logs(
    stack, alice_client, alice_key, tmp_path
):
    from tasks_app.providers.local import kill_machine

    # Simulations write nowhere but their own folder: they report to a ledger
    # over the network, which an admin allowed their group.
    ledger = Ledger(tmp_path / "ledger.txt")
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=2).start(wait=False)
    MachineGroup.objects.filter(name=mg.name).update(allow_network=True)
    wait_for(lambda: online(mg.name) == 2, 60, message="two machines online")
    # Followed while its machine dies; not resubmitted, so its log must end.
    followed = submit(mg, "for i in $(seq 1 3000); do echo tick-$i; sleep 0.1; done")
    work = f"{ledger.note('start')}; sleep 2; {ledger.note('done')}"
    tasks = [followed] + [submit(mg, work, resubmit_on_preemption=i % 2 == 0) for i in range(10)]
    ids = [t.id for t in tasks]

    victims: dict[str, int] = {}  # task id -> the machine killed under it
    followed_row = wait_for(
        lambda: Task.objects.filter(pk=followed.id, status=Status.STARTED).select_related("machine").first(),
        90,
        message="the followed task to start",
    )
    followers = Followers(stack, followed, alice_key, tmp_path)
    wait_for(followers.following, 60, message="its log followed")
    kill_machine(followed_row.machine_id)  # the worker and the simulator at once
    victims[followed.id] = followed_row.machine_id
    for resubmitted in (True, False):  # one kill of each kind among the batch
        # A task that started a moment ago, so the kill lands well inside its sleep.
        running = wait_for(
            lambda resubmitted=resubmitted: (
                Task.objects.filter(
                    pk__in=ids,
                    status=Status.STARTED,
                    resubmit_on_preemption=resubmitted,
                    started_at__gt=timezone.now() - dt.timedelta(seconds=1),
                )
                .exclude(pk__in=victims)
                .select_related("machine")
                .first()
            ),
            90,
            interval=0.05,
            message="a task that just started",
        )
        os.kill(running.machine.pid, signal.SIGKILL)
        victims[running.id] = running.machine_id
    for machine_id in victims.values():
        wait_for(
            lambda m=machine_id: Machine.objects.get(pk=m).state == Machine.State.LOST,
            30,
            message="the killed machine to be found lost",
        )

    frames, code, cli_err, waited = followers.results()
    assert waited == Status.EXECUTOR_TERMINATED
    assert code == 1000, f"the log socket did not end: {[f['type'] for f in frames][-5:]}"
    # The mark is in the stream itself (not only inferred from the status), so
    # a follower resuming by entry id is told as well.
    assert frames[-1]["type"] == "end" and frames[-1]["id"] != "0-0"
    shown = "".join(text for f in frames if f["type"] == "lines" for _, text in f["parts"])
    assert shown.startswith("tick-1\n")
    assert followers.cli.returncode == 0, cli_err[-2000:]
    assert f"ended as {Status.EXECUTOR_TERMINATED.value}" in cli_err
    assert followers.printed.read_text().startswith("tick-1\n")

    final = wait_for(
        lambda: (
            (rows := dict(Task.objects.filter(pk__in=ids).values_list("id", "status")))
            and all(Status(s) in lifecycle.TERMINAL for s in rows.values())
            and rows
        ),
        180,
        message="every task to end",
    )
    done = re.findall(r"^done (\w+) ", ledger.text(), re.M)
    for task in tasks:
        row = Task.objects.get(pk=task.id)
        history = list(row.events.values_list("to_status", flat=True))
        if task.id not in victims:
            assert final[task.id] == Status.SUCCESS, (task.id, history)
            assert row.attempt == 1
        elif row.resubmit_on_preemption:
            assert final[task.id] == Status.SUCCESS, (task.id, history)
            assert row.attempt == 2
            assert row.machine_id != victims[task.id]
            assert Status.EXECUTOR_TERMINATED in history
        else:
            assert final[task.id] == Status.EXECUTOR_TERMINATED, (task.id, history)
            assert "exited" in row.error_detail or "gone" in row.error_detail
        assert history.count(Status.SUCCESS) <= 1
        assert done.count(task.id) == (1 if final[task.id] == Status.SUCCESS else 0), (task.id, done)
    assert TaskEvent.objects.filter(task_id__in=ids, to_status=Status.SUCCESS).count() == list(
        final.values()
    ).count(Status.SUCCESS)
    wait_for(lambda: online(mg.name) == 2, 60, message="the group back to its size")
    assert set(Machine.objects.filter(pk__in=victims.values()).values_list("state", flat=True)) == {
        Machine.State.LOST
    }
    wait_for(lambda: processes_of(set(ids)) == [], 20, message="no simulator left behind")


def started(task_id: str) -> Task:
    """The task once it runs, with its machine, and its simulation's processes there."""
    row = wait_for(
        lambda: Task.objects.filter(pk=task_id, status=Status.STARTED).select_related("machine").first(),
        90,
        message="the task to start",
    )
    wait_for(lambda: processes_of({task_id}), 30, message="its simulation")
    return row


def test_a_machine_whose_process_dies_leaves_no_simulator_and_its_group_runs_the_next(stack, alice_client):
    """A machine is one process: its SIGKILL (the OOM killer's, say) loses the machine, not only the task."""
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start()
    task = submit(mg, "sleep 300")
    machine = started(task.id).machine
    os.kill(machine.pid, signal.SIGKILL)
    wait_for(lambda: processes_of({task.id}) == [], 30, message="the orphaned simulation ended")
    wait_for(lambda: task_status(task.id) == Status.EXECUTOR_TERMINATED, 30, message="the task to end")
    assert "exited" in Task.objects.get(pk=task.id).error_detail
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.LOST

    after = submit(mg, "echo next")
    assert after.wait(polling_period=0.5, silent_mode=True) == "success"
    assert Task.objects.get(pk=after.id).machine_id != machine.pk


def stop_with_its_machine(task_id: str) -> Machine:
    """SIGTERM to a machine's worker and every process under it at once, as Slurm signals a job it cancels."""
    row = started(task_id)
    worker = psutil.Process(row.machine.pid)
    signal_all([worker, *worker.children(recursive=True)], signal.SIGTERM)
    return row.machine


def signal_all(procs: list[psutil.Process], signum: int) -> None:
    """Signal each of ``procs``; one may end before its turn (a sandbox ends with its first process)."""
    for proc in procs:
        try:
            proc.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def test_a_task_stopped_with_its_machine_ends_as_the_machines_loss_and_a_new_machine_runs_the_next(
    stack, alice_client
):
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start()
    task = submit(mg, "sleep 300")
    machine = stop_with_its_machine(task.id)
    wait_for(lambda: task_status(task.id) == Status.EXECUTOR_TERMINATED, 30, message="the task to end")
    assert (
        "SIGTERM reached its worker and the simulation together" in Task.objects.get(pk=task.id).error_detail
    )
    # Told to stop, it stopped: nothing of it is left running.
    wait_for(
        lambda: Machine.objects.get(pk=machine.pk).state == Machine.State.STOPPED, 30, message="it stopped"
    )
    wait_for(lambda: not psutil.pid_exists(machine.pid), 30, message="its worker gone")

    after = submit(mg, "echo next")
    assert after.wait(polling_period=0.5, silent_mode=True) == "success"
    assert Task.objects.get(pk=after.id).machine_id != machine.pk


def test_a_task_stopped_with_its_machine_runs_again_when_resubmission_is_on(stack, alice_client, tmp_path):
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start(wait=False)
    MachineGroup.objects.filter(name=mg.name).update(allow_network=True)  # for the ledger
    ledger = Ledger(tmp_path / "ledger.txt")
    task = submit(
        mg,
        f'if [ "$({ledger.note("run")})" = 0 ]; then sleep 300; else echo second run; fi',
        resubmit_on_preemption=True,
    )
    wait_for(
        lambda: "run " in ledger.text(), 90, message="the first attempt noted"
    )  # else it is not the first
    machine = stop_with_its_machine(task.id)
    assert task.wait(polling_period=0.5, silent_mode=True) == "success"
    ended = Task.objects.get(pk=task.id)
    assert ended.attempt == 2
    assert ended.machine_id != machine.pk, "a machine told to stop took its task again"
    assert Status.EXECUTOR_TERMINATED in TaskEvent.objects.filter(task=ended).values_list(
        "to_status", flat=True
    )


def test_a_machine_told_to_stop_alone_finishes_its_task_and_a_simulation_killed_alone_fails(
    stack, alice_client
):
    """SIGTERM to the worker alone is a stop: the task runs to its end; to the simulation alone, it fails."""
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start()
    task = submit(mg, "sleep 4; echo finished")
    machine = started(task.id).machine
    os.kill(machine.pid, signal.SIGTERM)
    assert task.wait(polling_period=0.5, silent_mode=True) == "success"
    assert Task.objects.get(pk=task.id).machine_id == machine.pk
    wait_for(
        lambda: Machine.objects.get(pk=machine.pk).state == Machine.State.STOPPED, 30, message="it stopped"
    )

    killed = submit(mg, "sleep 300")
    row = started(killed.id)
    assert row.machine_id != machine.pk
    signal_all(processes_of({killed.id}), signal.SIGTERM)
    assert killed.wait(polling_period=0.5, silent_mode=True) == "failed"
    assert Machine.objects.get(pk=row.machine_id).state == Machine.State.ONLINE


# -- what a simulator may print ---------------------------------------------------------

GARBAGE_SCRIPT = """\
import sys
out = sys.stdout.buffer
out.write(bytes(range(256)) * 4 + b"\\n")
out.write(b"invalid \\xff\\xfe\\xc3\\x28 utf-8 and \\x00\\x00 nuls\\n")
out.write(b"A" * 10_000_000 + b"\\n")
out.write(b"done\\n")
out.flush()
sys.stderr.buffer.write(b"\\x80\\x81 warning \\x00\\n")
"""
EXPECTED_STDOUT = (
    bytes(range(256)) * 4
    + b"\n"
    + b"invalid \xff\xfe\xc3\x28 utf-8 and \x00\x00 nuls\n"
    + b"A" * 10_000_000
    + b"\n"
    + b"done\n"
)


def logged_in(stack, user) -> httpx.Client:
    """A browser's session on the stack's console, made the way a login makes it."""
    from django.conf import settings
    from django.test import Client

    session = Client()
    session.force_login(user)
    cookie = session.cookies[settings.SESSION_COOKIE_NAME].value
    return httpx.Client(base_url=stack.url, timeout=60, cookies={settings.SESSION_COOKIE_NAME: cookie})


async def follow_log(url: str, key: str, limit: float = 120, reconnects: int = 0) -> list:
    """Every frame of a log socket until the server ends it.

    With ``reconnects`` (JSON frames only), a connection dropped midway is
    opened again with ``?after=`` the last entry id, as the client does.
    """
    frames = []
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        after = next((json.loads(f)["id"] for f in reversed(frames) if "id" in json.loads(f)), None)
        resumed = f"{url}&after={after}" if after else url
        try:
            async with websockets.connect(
                resumed,
                additional_headers={"Authorization": f"Bearer {key}"},
                origin=url.split("/ws/")[0].replace("ws", "http", 1),
                max_size=None,  # a browser takes frames of any size
            ) as ws:
                try:
                    async with asyncio.timeout_at(deadline):
                        async for message in ws:
                            frames.append(message)
                except TimeoutError:
                    return [frames, None]
                return [frames, ws.close_code]
        except websockets.ConnectionClosedError:
            if reconnects == 0:
                raise
            reconnects -= 1


def test_binary_garbage_and_a_10_mb_line_are_logged_whole(stack, alice, alice_client, alice_key, tmp_path):
    scene = tmp_path / "garbage"
    scene.mkdir()
    (scene / "garbage.py").write_text(GARBAGE_SCRIPT)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = submit(mg, "python garbage.py", "echo second command", input_dir=scene)
    ws = stack.url.replace("http://", "ws://") + f"/ws/tasks/{task.id}/logs/"
    wait_for(
        lambda: Task.objects.get(pk=task.id).status != Status.SUBMITTED, 60, message="a machine to take it"
    )
    frames, code = async_to_sync(follow_log)(ws + "?format=json", alice_key, limit=60, reconnects=2)
    parsed = [json.loads(f) for f in frames]
    assert code == 1000, f"the log socket stalled after {[(f['type'], len(str(f))) for f in parsed]}"
    assert parsed[-1]["type"] == "end"
    stdout = "".join(t for f in parsed if f["type"] == "lines" for s, t in f["parts"] if s == "stdout")
    assert stdout.count("A") >= 10_000_000
    assert stdout.endswith("done\nsecond command\n")
    assert "\ufffd" in stdout  # invalid bytes shown as replacement characters, not an error

    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    stored = alice_client.http.get(f"/tasks/{task.id}/logs/stdout")
    assert stored.status_code == 200
    assert stored.content == EXPECTED_STDOUT + b"second command\n"
    assert alice_client.http.get(f"/tasks/{task.id}/logs/stderr").content == b"\x80\x81 warning \x00\n"
    outputs = Path(task.download_outputs())
    assert (outputs / "stdout.txt").read_bytes() == EXPECTED_STDOUT + b"second command\n"

    web = logged_in(stack, alice)
    for path in (
        f"/tasks/{task.id}/",
        f"/tasks/{task.id}/logs?stream=stdout",
        f"/tasks/{task.id}/logs?stream=stdout&offset=1030",
        f"/tasks/{task.id}/logs?stream=stdout&q=done",
        f"/tasks/{task.id}/logs?stream=stderr",
    ):
        page = web.get(path)
        assert page.status_code == 200, (path, page.text[:300])
    assert "done" in web.get(f"/tasks/{task.id}/logs?stream=stdout&q=done").text
    download = web.get(f"/tasks/{task.id}/logs/stdout.txt")
    assert download.status_code == 200 and download.content == EXPECTED_STDOUT + b"second command\n"
    # The page's own socket (HTML fragments) replays the ended log without breaking.
    html, code = async_to_sync(follow_log)(ws, alice_key)
    assert code == 1000 and "log-end" in html[-1]
    assert sum(frame.count("A") for frame in html) >= 1000


# -- the web server restarts under its clients ------------------------------------------


def restart_web(stack) -> None:
    web = next(p for p in stack.procs if "daphne" in p.args or "console.webserver" in p.args)
    signal_group(web, signal.SIGTERM)
    try:
        web.wait(timeout=20)
    except subprocess.TimeoutExpired:
        signal_group(web, signal.SIGKILL)
        web.wait(timeout=10)
    stack.procs.remove(web)
    py = sys.executable
    argv = [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(stack.port), "console.asgi:application"]
    proc = stack.spawn("web", argv)
    stack.procs.remove(proc)
    stack.procs.insert(0, proc)  # stopped last, as before


def test_clients_carry_on_through_a_web_server_restart(stack, alice_client, alice_key, tmp_path):
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = submit(mg, "for i in $(seq 1 300); do echo line-$i; sleep 0.04; done")
    env = dict(os.environ, SIMDECK_API_URL=stack.url, SIMDECK_API_KEY=alice_key)
    followed = tmp_path / "followed.txt"
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", WATCHING_CLIENT, what, task.id, str(followed), "0.3"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for what in ("wait", "logs")
    ]
    try:
        wait_for(
            lambda: "line-20\n" in followed.read_text() if followed.exists() else False,
            60,
            message="the follower to get going",
        )
        restart_web(stack)
        wait_for(lambda: _up(stack.url), 60, message="the web server back")
        waiter, follower = (c.communicate(timeout=120) for c in clients)
    finally:
        for c in clients:
            c.kill()
    assert waiter[0].strip() == "success", waiter[1][-2000:]
    assert clients[1].returncode == 0, follower[1][-2000:]
    assert followed.read_text().splitlines() == [f"line-{i}" for i in range(1, 301)]
    assert Task.objects.get(pk=task.id).status == Status.SUCCESS
    assert MachineGroup.objects.get(name=mg.name).state == MachineGroup.State.STARTED


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/statuses", timeout=2).status_code == 200
    except httpx.TransportError:
        time.sleep(0.2)
        return False


# -- the database connection breaks under a machine -------------------------------------


class Claims:
    """Tells which database backend claimed a task, the moment its claim commits.

    A trigger notifies at the move to preparing-to-compute, and PostgreSQL
    delivers a notification when its transaction commits: the listener hears
    of the claim right after it is durable, before the machine goes on.
    """

    def __init__(self):
        import psycopg
        from django.db import connection

        self.table = connection.ops.quote_name(Task._meta.db_table)
        self.conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
        self.conn.execute(
            "CREATE OR REPLACE FUNCTION simdeck_test_claimed() RETURNS trigger AS $$ BEGIN "
            "PERFORM pg_notify('simdeck_test_claimed', pg_backend_pid()::text); RETURN NULL; END $$ "
            "LANGUAGE plpgsql"
        )
        self.conn.execute(
            f"CREATE TRIGGER simdeck_test_claimed AFTER UPDATE OF status ON {self.table} FOR EACH ROW "
            f"WHEN (NEW.status = '{Status.PREPARING.value}') EXECUTE FUNCTION simdeck_test_claimed()"
        )
        self.conn.execute("LISTEN simdeck_test_claimed")

    def next_backend(self, timeout: float) -> int:
        for note in self.conn.notifies(timeout=timeout, stop_after=1):
            return int(note.payload)
        raise AssertionError("no claim within the time")

    def close(self) -> None:
        self.conn.execute(f"DROP TRIGGER IF EXISTS simdeck_test_claimed ON {self.table}")
        self.conn.execute("DROP FUNCTION IF EXISTS simdeck_test_claimed()")
        self.conn.close()


@pytest.fixture
def claims(stack):
    watcher = Claims()
    yield watcher
    watcher.close()


def machines_through(stack, relay) -> None:
    """Machines started from now on reach PostgreSQL through ``relay``."""
    from django.db import connection

    from tasks_app.testing.stack import database_url

    d = connection.settings_dict
    if not d.get("PORT") or (d.get("HOST") or "").startswith("/"):
        pytest.skip("PostgreSQL is reached over a unix socket; the relay speaks TCP")
    url = database_url().replace(f"@{d['HOST']}:{d['PORT']}/", f"@127.0.0.1:{relay.port}/")
    assert url != database_url()
    stack.restart_provider(DATABASE_URL=url)


def test_a_claim_whose_answer_is_lost_with_its_connection_still_runs(stack, alice_client, claims):
    """The claim commits, then the connection breaks before the machine hears back: the machine runs it."""
    from django.db import connection

    from tasks_app.testing.netcut import Relay

    d = connection.settings_dict
    relay = Relay((d["HOST"] or "127.0.0.1", int(d["PORT"] or 5432)))
    try:
        machines_through(stack, relay)
        mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start()
        task = submit(mg, "echo computed")
        backend = claims.next_backend(60)
        port = claims.conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE pid = %s", [backend]
        ).fetchone()
        # The answer to the claim is still in the relay: it is lost with the connection.
        assert port and relay.cut(port[0])
        claims.conn.execute("SELECT pg_terminate_backend(%s)", [backend])
        ended = wait_for(
            lambda: Status(task_status(task.id)) in lifecycle.TERMINAL and task_status(task.id),
            30,
            message="the task to end",
        )
        row = Task.objects.get(pk=task.id)
        history = list(row.events.values_list("to_status", flat=True))
        assert ended == Status.SUCCESS, (row.error_detail, history)
        assert row.attempt == 1

        # The machine carries on with the next task on a fresh connection.
        after = submit(mg, "echo next")
        assert after.wait(polling_period=0.5, silent_mode=True) == "success"
    finally:
        relay.close()


# -- a machine thought gone wakes up ------------------------------------------------------


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie whose parent has yet to reap it."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def machine_processes(machine: Machine) -> list[psutil.Process]:
    worker = psutil.Process(machine.pid)
    return [worker, *worker.children(recursive=True)]


def test_a_reclaimed_machine_that_wakes_up_keeps_its_logs_off_the_next_attempt(stack, alice_client, tmp_path):
    """A spot machine out of reach (its host hung) is reclaimed; it wakes up after the next attempt ran."""
    ledger = Ledger(tmp_path / "ledger.txt")
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=2, spot=True).start(wait=False)
    MachineGroup.objects.filter(name=mg.name).update(allow_network=True)  # for the ledger
    wait_for(lambda: online(mg.name) == 2, 60, message="two machines online")
    # Each attempt prints how many ran before it.
    task = submit(mg, f"echo attempt-$({ledger.note('run')}); sleep 4", resubmit_on_preemption=True)
    wait_for(lambda: "run " in ledger.text(), 90, message="the first attempt to run")
    time.sleep(0.3)  # its line printed
    old = Task.objects.select_related("machine").get(pk=task.id).machine
    # The machine and the provider that would kill it lose touch: both stand still.
    provider = psutil.Process(stack.provider.pid)
    frozen = machine_processes(old)
    for proc in [provider, *frozen]:
        proc.suspend()
    try:
        assert stack.manage("reclaim", old.name).returncode == 0
        assert task.wait(polling_period=0.3, silent_mode=True) == "success"
        for proc in frozen:
            proc.resume()
        # Awake, the old machine finds it was reclaimed: it stops its
        # simulation, stores what it logged and shuts down.
        wait_for(lambda: not any(map(alive, frozen)), 40, message="the old machine to stop")
    finally:
        for proc in [*frozen, provider]:
            try:
                proc.resume()
            except psutil.NoSuchProcess:
                pass

    row = Task.objects.get(pk=task.id)
    assert row.attempt == 2 and row.machine_id != old.pk
    assert alice_client.http.get(f"/tasks/{task.id}/logs/stdout").text == "attempt-1\n"
    outputs = Path(task.download_outputs())
    assert (outputs / "stdout.txt").read_text() == "attempt-1\n"
    [first] = stack.home.rglob(f"tasks/{task.id}/logs/stdout.txt")
    assert first.read_text() == "attempt-0\n", "the first attempt's log is its own"


# -- a fault of the machine itself ------------------------------------------------------


def test_a_fault_of_the_machine_ends_its_task_and_the_machine_runs_the_next(stack, alice_client, tmp_path):
    """The sandbox program vanishes under a running machine, as an upgrade could remove it."""
    from tasks_app import sandbox

    bwrap = tmp_path / "bwrap"
    bwrap.symlink_to(sandbox.bwrap_path())
    stack.restart_provider(SIMDECK_SANDBOX_BWRAP=str(bwrap))
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start(wait=False)
    wait_for(lambda: online(mg.name) == 1, 60, message="a machine online")
    bwrap.rename(tmp_path / "bwrap-away")
    task = submit(mg, "echo never")
    assert task.wait(polling_period=0.3, silent_mode=True) == "executor-failed"
    detail = task.get_info()["error_detail"]
    assert "The machine failed while running this task" in detail and str(bwrap) in detail, detail
    (tmp_path / "bwrap-away").rename(bwrap)
    after = submit(mg, "echo next")
    assert after.wait(polling_period=0.3, silent_mode=True) == "success"
    assert Task.objects.get(pk=after.id).machine_id == Task.objects.get(pk=task.id).machine_id
