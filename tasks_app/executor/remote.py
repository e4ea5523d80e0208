"""A machine on another host: ``simdeck-machine join URL --token …``.

The host holds a join token and asks the server for a machine to run
(``POST /api/machine/v1/join``, a long poll). When a started ``hosts``
group wants one, the server answers with the machine's description and a
token of its own; from then on that token is all the machine holds. It
goes online, sends a heartbeat every few seconds, and asks for tasks (a
long poll again), running each with the same executor as a machine on the
server's host (:class:`tasks_app.executor.run.Execution`), in the same
sandbox. Only the way to the platform differs: :class:`Remote` sends over
HTTP what :class:`tasks_app.executor.plane.Direct` writes to the database,
storage and Redis.

A machine stops when the server says so at a heartbeat (its group ended,
an elastic group shrinks), when its token stops working (revoked, or the
machine found lost), or on SIGTERM/SIGINT to the host's process; the host
then asks for another machine, except after a signal or a revoked join
token. It runs with ``console.machine_settings``: no database, no broker,
no secret of the server's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import io
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx

from simdeck import api
from simdeck.errors import SimdeckError
from tasks_app.executor import PlaneError

log = logging.getLogger("simdeck.machine")

API = "/api/machine/v1"
# A machine outlives a server restart this long: its calls wait for the server to come back.
OUTAGE_SECONDS = 600.0
# The longest a long poll is asked to wait.
POLL_SECONDS = 20.0
# Lines of the live log go out at most this often, together.
LOG_FLUSH_SECONDS = 0.25
# Outputs this big go straight to the server's bucket, where it has one.
DIRECT_PUT_MIN_BYTES = 8 * 1024 * 1024
CHUNK = 1 << 20


class MachineRevoked(Exception):
    """The server no longer knows this machine's token: it stops at once."""


class StopMachine(Exception):
    """The server says this machine is no longer wanted (its group ended, or it shrinks)."""


class JoinRevoked(Exception):
    """The server no longer knows the host's join token: the host stops."""


class Connection:
    """HTTP to the machine interface, retried while the server is away (a restart)."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url + API,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
        )

    def call(self, method: str, path: str, *, patience: float = OUTAGE_SECONDS, **kwargs) -> httpx.Response:
        deadline, pause = time.monotonic() + patience, 0.5
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 401:
                    raise MachineRevoked(_message(response))
                if response.status_code not in (502, 503, 504):
                    return response
                problem = f"{response.status_code} {response.reason_phrase}"
            if time.monotonic() + pause > deadline:
                raise PlaneError(f"The server at {self.url} did not answer {method} {path}: {problem}")
            log.warning(
                "The server at %s did not answer %s %s (%s); trying again", self.url, method, path, problem
            )
            time.sleep(pause)
            pause = min(pause * 2, 10.0)

    def json(self, method: str, path: str, **kwargs) -> dict:
        response = self.call(method, path, **kwargs)
        if response.status_code == 204:
            return {}
        if not response.is_success:
            raise PlaneError(f"{method} {path}: {response.status_code} {_message(response)}")
        return response.json()

    def download(self, path: str, sink: BinaryIO) -> None:
        """A stored file into ``sink``: from the server, or from the bucket's URL it redirects to."""
        with self.http.stream("GET", path, timeout=httpx.Timeout(300.0, connect=10.0)) as response:
            if response.status_code == 401:
                response.read()
                raise MachineRevoked(_message(response))
            if response.is_redirect:
                location = response.headers["Location"]
            elif not response.is_success:
                response.read()
                raise OSError(f"the server answered {response.status_code}: {_message(response)}")
            else:
                for chunk in response.iter_bytes(CHUNK):
                    sink.write(chunk)
                return
        # The bucket's URL carries its own signature: the machine's token is not sent there.
        try:
            api.fetch_presigned(location, sink, None)
        except SimdeckError as exc:
            raise OSError(str(exc)) from None


def _message(response: httpx.Response) -> str:
    """The server's message, or what the status says (a proxy's or Django's HTML page is no message)."""
    try:
        return response.json().get("message") or response.reason_phrase
    except (ValueError, AttributeError):
        return response.reason_phrase


class LogSender:
    """The live log's lines, sent together every ``LOG_FLUSH_SECONDS`` by a thread of their own.

    A simulation that prints thousands of lines a second costs a few
    requests a second; the marks (begin, end, close) go in order with them.
    """

    def __init__(self, connection: Connection):
        self.connection = connection
        # (task id, stream, data); a stream of None is the log's beginning.
        self.pending: list[tuple[str, str | None, bytes]] = []
        self.lock = threading.Lock()
        self.sending = threading.Lock()  # one sender at a time: batches go out in order
        self.wake = threading.Event()
        threading.Thread(target=self.loop, name="log-sender", daemon=True).start()

    def add(self, task_id: str, stream: str | None, data: bytes = b"") -> None:
        with self.lock:
            self.pending.append((task_id, stream, data))
        self.wake.set()

    def loop(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(LOG_FLUSH_SECONDS)
            self.wake.clear()
            with contextlib.suppress(Exception):  # a missed batch is in the stored log
                self.flush()

    def flush(self) -> None:
        with self.sending:
            with self.lock:
                pending, self.pending = self.pending, []
            batch: list = []
            for i, (task_id, stream, data) in enumerate(pending):
                if stream is None:
                    self.connection.json("POST", f"/tasks/{task_id}/log", json={"op": "begin"})
                    continue
                batch.append([stream, base64.b64encode(data).decode()])
                if i + 1 == len(pending) or pending[i + 1][0] != task_id or pending[i + 1][1] is None:
                    body = {"op": "append", "entries": batch}
                    self.connection.json("POST", f"/tasks/{task_id}/log", json=body)
                    batch = []


class Remote:
    """The platform through its machine interface (see :class:`tasks_app.executor.plane.Direct`)."""

    remote = True

    def __init__(self, connection: Connection):
        self.connection = connection
        self.logs = LogSender(connection)
        self.inline: dict[str, bytes] = {}  # a small input that came with its task's claim
        self.has_assets = True
        self.polling = False  # whether a claim waits at the server now

    # -- claims and moves ----------------------------------------------------

    def claim(self, wait: float = POLL_SECONDS):
        from tasks_app.models import Task

        self.polling = True  # the poll beats for the machine meanwhile
        try:
            answer = self.connection.json("POST", "/claim", json={"wait": wait}, timeout=wait + 30)
        finally:
            self.polling = False
        if answer.get("stop"):
            raise StopMachine(answer["stop"])
        if not answer.get("task"):
            return None
        fields = dict(answer["task"])
        started_at = fields.pop("started_at", None)
        inline, has_assets = fields.pop("input", None), fields.pop("has_assets", True)
        allow_network = fields.pop("allow_network", None)
        task = Task(**fields)
        if allow_network is not None:
            task.allow_network = allow_network
        task.started_at = started_at and dt.datetime.fromisoformat(started_at)
        self.inline = {task.id: base64.b64decode(inline)} if inline is not None else {}
        self.has_assets = has_assets
        return task

    def move(self, task, new, reason: str, *, machine, expected, at=None, passing=(), **fields) -> bool:
        body = {
            "attempt": task.attempt,
            "status": str(new.value),
            "expected": str(expected.value),
            "reason": reason,
            "at": at and at.isoformat(),
            "passing": [[str(s.value), why, when and when.isoformat()] for s, why, when in passing],
            "fields": {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in fields.items()},
        }
        response = self.connection.call("POST", f"/tasks/{task.id}/move", json=body)
        if response.status_code == 404:
            task.status = _GONE
            return False
        if not response.is_success:
            raise PlaneError(f"Moving task {task.id}: {response.status_code} {_message(response)}")
        answer = response.json()
        task.status = answer["status"]
        if answer.get("started_at"):
            task.started_at = dt.datetime.fromisoformat(answer["started_at"])
        # A move whose answer was lost, sent again, finds the task where it took it.
        return answer["moved"] or answer["status"] == str(new.value)

    def refresh_status(self, task) -> None:
        task.status = self.status(task) or _GONE

    def status(self, task) -> str | None:
        return self.connection.json("GET", f"/tasks/{task.id}/status", params={"attempt": task.attempt})[
            "status"
        ]

    def runner_lost(self, task, machine, reason: str) -> None:
        self.connection.json("POST", f"/tasks/{task.id}/lost", json={"reason": reason})

    # -- while it runs ---------------------------------------------------------

    def record_progress(self, task, fraction, eta) -> None:
        body = {"attempt": task.attempt, "progress": fraction, "eta": eta and eta.isoformat()}
        self.connection.json("POST", f"/tasks/{task.id}/progress", json=body, patience=5.0)

    def record_sample(self, task_id: str, cpu_percent: float, memory_bytes: int, disk_bytes: int) -> None:
        body = {"cpu_percent": cpu_percent, "memory_bytes": memory_bytes, "disk_bytes": disk_bytes}
        self.connection.json("POST", f"/tasks/{task_id}/sample", json=body, patience=5.0)

    def disk_resized(self, task, machine, old_gb: int, new_gb: int, used: int) -> None:
        body = {"from_gb": old_gb, "to_gb": new_gb, "used_bytes": used}
        self.connection.json("POST", f"/tasks/{task.id}/disk", json=body)

    # -- the live log ----------------------------------------------------------

    def _mark(self, task, op: str) -> None:
        self.logs.flush()
        try:
            self.connection.json("POST", f"/tasks/{task.id}/log", json={"op": op}, patience=30.0)
        except PlaneError:  # followers miss a mark; the stored log is whole
            log.warning("Could not send the %s of task %s's log", op, task.id, exc_info=True)

    def begin_log(self, task) -> None:
        self.logs.add(task.id, None)  # sent with the first lines, ahead of them

    def append_log(self, task, stream: str, data: bytes) -> None:
        self.logs.add(task.id, stream, data)

    def end_log(self, task) -> None:
        self._mark(task, "end")

    def close_log(self, task) -> None:
        self._mark(task, "close")

    def release(self) -> None:
        """Nothing is held back: every word to the server goes out at once."""

    # -- files ---------------------------------------------------------------

    @contextlib.contextmanager
    def open_input(self, task) -> Iterator[BinaryIO]:
        if task.id in self.inline:  # it came with the claim
            yield io.BytesIO(self.inline.pop(task.id))
            return
        with self._fetched(f"/tasks/{task.id}/input") as f:
            yield f

    @contextlib.contextmanager
    def _fetched(self, path: str, **params) -> Iterator[BinaryIO]:
        from django.conf import settings

        with tempfile.TemporaryFile(dir=settings.SIMDECK_WORK_DIR) as f:
            self.connection.download(httpx.URL(path, params=params) if params else path, f)
            f.seek(0)
            yield f

    def stage_assets(self, task, workdir: Path) -> list[Path]:
        from tasks_app.services import remote_assets

        if not self.has_assets:
            return []
        response = self.connection.call("GET", f"/tasks/{task.id}/assets")
        if response.status_code == 409:
            raise remote_assets.AssetMissing(_message(response))
        if not response.is_success:
            raise OSError(f"the server answered {response.status_code}: {_message(response)}")
        steps = response.json()["steps"]

        def opener(name: str):
            return self._fetched(f"/tasks/{task.id}/assets/file", name=name)

        return remote_assets.place(steps, workdir, opener)

    def store_outputs(self, task, archive: Path, size: int, count: int) -> dict:
        """Send the outputs' archive: a big one to the server's bucket where it has one, else to the server.

        The server records where they are as it stores them: a machine never
        names a stored file. Nothing is left for the caller to write.
        """
        archive_size = archive.stat().st_size
        meta = {"attempt": task.attempt, "size": size, "files": count}
        if archive_size >= DIRECT_PUT_MIN_BYTES:
            response = self.connection.call(
                "POST", f"/tasks/{task.id}/outputs/direct", json={**meta, "archive_size": archive_size}
            )
            if response.is_success:
                plan = response.json()
                try:
                    parts = [
                        {"number": p["number"], "etag": api.put_part(p, archive, what="the outputs")}
                        for p in plan["parts"]
                    ]
                except SimdeckError as exc:
                    raise OSError(str(exc)) from None
                done = {**meta, "archive_size": archive_size, "upload_id": plan["upload_id"], "parts": parts}
                self.connection.json("POST", f"/tasks/{task.id}/outputs/direct/done", json=done)
                return {}
        self._put(f"/tasks/{task.id}/outputs", archive, meta)
        return {}

    def record_outputs(self, task, fields: dict) -> None:
        """What the final move would have carried, when another ending came first (a kill).

        The outputs' place the server recorded itself when it stored them
        (see :meth:`store_outputs`); the simulator's exit code is sent.
        """
        if fields.get("exit_code") is not None:
            body = {"attempt": task.attempt, "exit_code": fields["exit_code"]}
            self.connection.json("POST", f"/tasks/{task.id}/exit-code", json=body)

    def store_log(self, task, stream: str, path: Path) -> None:
        self._put(f"/tasks/{task.id}/logs/{stream}", path, {"attempt": task.attempt})

    def _put(self, path: str, file: Path, params: dict) -> None:
        size = file.stat().st_size
        response = self.connection.call(
            "PUT",
            path,
            params=params,
            content=api.read_file(file, 0, size),
            headers={"Content-Length": str(size)},
            timeout=httpx.Timeout(600.0, connect=10.0),
            patience=0.0,  # a stream is sent once; the task's move says what became of it
        )
        if not response.is_success:
            raise OSError(f"the server refused {file.name} ({response.status_code}: {_message(response)})")


# What a task that was taken from this machine (ended, or requeued for another) is to it.
_GONE = "executor-terminated"


# -- running machines ------------------------------------------------------------


class Stop:
    """Why this host's machines should stop, once one is known; set from any thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


def machine_from(described: dict):
    """The machine and its group as the executor reads them, from the server's description."""
    from tasks_app.models import Machine, MachineGroup

    group = MachineGroup(**described["group"])
    machine = Machine(id=described["id"], name=described["name"], group=group)
    return machine


def apply_settings(values: dict) -> None:
    """What the server says of its machine types and limits is this machine's too."""
    from django.conf import settings

    for name, value in values.items():
        if name == "SIMDECK_MACHINE_TYPES":
            settings.SIMDECK_MACHINE_TYPES = {**settings.SIMDECK_MACHINE_TYPES, **value}
        elif name.startswith("SIMDECK_"):
            setattr(settings, name, value)


def serve(url: str, token: str, host_stop: Stop) -> str:
    """Run the machine of ``token`` until it is told to stop; returns why it stopped."""
    from tasks_app import simulators
    from tasks_app.executor import run
    from tasks_app.executor.run import Execution

    connection = Connection(url, token)
    plane = Remote(connection)
    stop = Stop()
    try:
        described = connection.json(
            "POST",
            "/online",
            json={"simulators": simulators.installed(), "hostname": socket.gethostname(), "pid": os.getpid()},
        )["machine"]
    except MachineRevoked:
        return "its token was revoked before it went online"
    apply_settings(described.get("settings", {}))
    machine = machine_from(described)
    run.warm_up(machine)
    log.info("Machine %s is online (group %s)", machine.name, machine.group.name)

    finished = threading.Event()

    def beat() -> None:
        # Until the machine is done, told to stop or not: one that winds down is not a lost one.
        from django.conf import settings

        every = settings.SIMDECK_HEARTBEAT_SECONDS
        while not finished.wait(every):
            if plane.polling:
                continue  # the server counts each look of a waiting claim as a heartbeat
            try:
                answer = connection.json("POST", "/heartbeat", json={}, patience=every)
            except MachineRevoked:
                stop.set("its token was revoked")
                return
            except PlaneError:
                log.warning("Machine %s: a heartbeat went unanswered", machine.name)
                continue
            if answer.get("stop"):
                stop.set(answer["stop"])

    threading.Thread(target=beat, name=f"heartbeat-{machine.name}", daemon=True).start()
    answers = Answering(url, token, machine)
    try:
        while not stop and not host_stop:
            try:
                task = plane.claim()
            except StopMachine as exc:
                stop.set(str(exc))
                break
            except PlaneError:
                log.warning("Machine %s: could not ask for a task", machine.name, exc_info=True)
                stop.event.wait(2.0)
                continue
            if task is None:
                continue
            log.info("Machine %s runs task %s", machine.name, task.id)
            with answers.during_task():
                Execution(task, machine, plane).run()
    except MachineRevoked:
        stop.set("its token was revoked")
    finally:
        finished.set()
        answers.close()
        stop.set(host_stop.reason or "its host stops")
        with contextlib.suppress(MachineRevoked, PlaneError):
            connection.json("POST", "/offline", json={}, patience=10.0)
        run.forget_machine(machine.name)
    log.info("Machine %s stopped: %s", machine.name, stop.reason)
    return stop.reason


# A question about a running task waits this long at the server before it is asked again.
QUESTIONS_POLL_SECONDS = 15.0
# Questions are asked for once a task has run this long: none come sooner, and a task's start
# is not slowed by the poll.
QUESTIONS_AFTER_SECONDS = 1.0


class Answering:
    """Answers what people ask about the task the machine runs (its files, its processes).

    One thread per machine; it asks the machine interface for questions
    (a long poll) while a task runs, and posts :mod:`tasks_app.executor.inspect`'s
    answers, as a local machine gives them.
    """

    def __init__(self, url: str, token: str, machine):
        self.connection, self.machine = Connection(url, token), machine
        self.running, self.stopped = threading.Event(), threading.Event()
        threading.Thread(target=self.loop, name=f"questions-{machine.name}", daemon=True).start()

    @contextlib.contextmanager
    def during_task(self) -> Iterator[None]:
        self.running.set()
        try:
            yield
        finally:
            self.running.clear()

    def close(self) -> None:
        self.stopped.set()
        self.running.set()  # (wakes the thread, which then ends)

    def loop(self) -> None:
        while not self.stopped.is_set():
            self.running.wait()
            if self.stopped.wait(QUESTIONS_AFTER_SECONDS):
                return
            while self.running.is_set() and not self.stopped.is_set():
                try:
                    self.answer_some()
                except MachineRevoked:
                    return
                except PlaneError:
                    self.stopped.wait(2.0)

    def answer_some(self) -> None:
        from tasks_app.executor import inspect

        asked = self.connection.json(
            "POST",
            "/questions",
            json={"wait": QUESTIONS_POLL_SECONDS},
            timeout=QUESTIONS_POLL_SECONDS + 30,
            patience=10.0,
        )
        for question in asked.get("questions", []):
            task_id, op = question.get("task_id", ""), question.get("op", "")
            answer = inspect.answer(self.machine.name, task_id, op, question.get("params"))
            self.connection.json(
                "POST", "/answers", json={"id": question.get("id"), "answer": answer}, patience=5.0
            )


def join(url: str, join_token: str, host_stop: Stop, *, once: bool = False) -> None:
    """Ask the server for machines to run, one after another, until stopped or the join token is revoked."""
    from tasks_app import simulators

    connection = Connection(url, join_token)
    installed = simulators.installed()
    hostname = socket.gethostname()
    log.info("Joined %s as %s, with %s", url, hostname, ", ".join(installed) or "no simulator")
    while not host_stop:
        try:
            answer = connection.json(
                "POST",
                "/join",
                json={"hostname": hostname, "simulators": installed, "wait": POLL_SECONDS},
                timeout=POLL_SECONDS + 30,
            )
        except MachineRevoked as exc:
            raise JoinRevoked(str(exc)) from None
        if not answer:
            continue
        serve(url, answer["token"], host_stop)
        if once:
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simdeck-machine",
        description="Run Simdeck machines on this host for a server's 'hosts' machine groups.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    joining = sub.add_parser(
        "join", help="Join a server with a join token an admin gave you, and run its machines."
    )
    joining.add_argument("url", help="The server's address, e.g. https://simdeck.example.org")
    joining.add_argument(
        "--token",
        default=os.environ.get("SIMDECK_JOIN_TOKEN"),
        help="The join token (or set SIMDECK_JOIN_TOKEN, which keeps it out of the process list).",
    )
    joining.add_argument(
        "--machines", type=int, default=1, help="How many machines to run at once (default 1)."
    )
    running = sub.add_parser(
        "run", help="Run the one machine whose token is in SIMDECK_MACHINE_TOKEN (a Slurm pilot does)."
    )
    running.add_argument("url", help="The server's address as this host reaches it.")
    args = parser.parse_args(argv)
    token = os.environ.get("SIMDECK_MACHINE_TOKEN") if args.command == "run" else args.token
    if not token:
        parser.error(
            "a machine token is needed in SIMDECK_MACHINE_TOKEN."
            if args.command == "run"
            else "a join token is needed: --token, or SIMDECK_JOIN_TOKEN. An admin issues one."
        )
    machines = args.machines if args.command == "join" else 1
    if not 1 <= machines <= 64:
        parser.error("--machines is from 1 to 64.")

    # Never the server's settings: a machine here has no database, broker or secret of the server's.
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.machine_settings"
    import django

    django.setup()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from django.conf import settings

    from tasks_app import sandbox
    from tasks_app.executor.machine import note_signal

    if sandbox.enabled():
        try:
            sandbox.check()
        except sandbox.SandboxUnavailable as exc:
            print(f"simdeck-machine: this host cannot run simulations in a sandbox: {exc}", file=sys.stderr)
            if args.command == "run":  # the machine was made for this host: it stops, and says why
                with contextlib.suppress(Exception):
                    Connection(args.url, token).json("POST", "/offline", json={"why": str(exc)}, patience=10)
            return 2
    else:
        log.warning("SIMDECK_SANDBOX is off: simulations run WITHOUT a sandbox on this host")
    Path(settings.SIMDECK_WORK_DIR).mkdir(parents=True, exist_ok=True)

    host_stop = Stop()

    def stopping(signum, _frame) -> None:
        name = signal.Signals(signum).name
        note_signal(name)
        host_stop.set(f"{name} reached the host")

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopping)

    failures: list[str] = []

    def run_one() -> None:
        try:
            if args.command == "run":
                serve(args.url, token, host_stop)
            else:
                join(args.url, token, host_stop)
        except JoinRevoked as exc:
            failures.append(f"the join token was refused: {exc}")
            host_stop.set("the join token was revoked")
        except PlaneError as exc:  # the server would not have it (or never answered)
            failures.append(str(exc))
            host_stop.set("the server refused it")

    threads = [threading.Thread(target=run_one, name=f"host-{n}", daemon=True) for n in range(machines)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(0.5)
    if failures:
        print(f"simdeck-machine: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
