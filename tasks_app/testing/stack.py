"""Start a whole Simdeck as real processes: daphne, the scheduler, the local provider.

The test suite's ``stack`` fixture and the benchmarks both run one of these
against the database Django is configured with, so what they measure and
check is what an operator runs with ``manage.py up``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
from django.conf import settings
from django.db import connection

from tasks_app import services
from tasks_app.models import MachineGroup
from tasks_app.providers.local import kill_marked

ROOT = Path(__file__).resolve().parent.parent.parent


def database_url() -> str:
    """The URL of the database this process uses, for the processes it starts."""
    d = connection.settings_dict
    user = quote(d.get("USER") or "", safe="")
    password = quote(d.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{d['PORT']}" if d.get("PORT") else ""
    # A unix-socket host (the embedded server) travels as ?host=, which
    # django-environ hands to psycopg unchanged.
    socket_dir = d.get("OPTIONS", {}).get("host") or (
        d.get("HOST") if (d.get("HOST") or "").startswith("/") else ""
    )
    if socket_dir:
        return f"postgres://{auth}/{d['NAME']}?host={quote(socket_dir)}"
    return f"postgres://{auth}{d.get('HOST') or ''}{port}/{d['NAME']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


class ProcessStack:
    """A running Simdeck: web server, scheduler and local provider as real processes.

    Its queues carry a prefix of their own (``queue_prefix``), so several
    stacks can share one Redis; the process that drives the stack must use
    the same prefix for what it sends to the machines.
    """

    def __init__(self, home: Path, env: dict[str, str] | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        # A caller that must name the address before the stack starts chooses its port.
        self.port = int((env or {}).get("SIMDECK_STACK_PORT") or 0) or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queue_prefix = f"test{self.port}"
        self.env = dict(
            os.environ,
            DATABASE_URL=database_url(),
            REDIS_URL=settings.REDIS_URL,
            SIMDECK_HOME=str(self.home),
            SECRET_KEY=settings.SECRET_KEY,
            CONN_MAX_AGE="0",
            SIMDECK_KILL_GRACE_SECONDS="3",
            SIMDECK_HEARTBEAT_SECONDS="1",
            SIMDECK_HOUSEKEEPING_SECONDS="1",
            SIMDECK_RESOURCE_SAMPLE_SECONDS="1",
            SIMDECK_MACHINE_LOST_SECONDS="6",
            SIMDECK_QUEUE_PREFIX=self.queue_prefix,
            # One web server process boots faster; tests need no second core.
            SIMDECK_WEB_PROCESSES="1",
        ) | (env or {})
        self.procs: list[subprocess.Popen] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env | (env or {}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group, with whatever it forked
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_provider(self, **env: str) -> None:
        argv = [sys.executable, "manage.py", "runprovider", "--interval", "0.5"]
        self.provider = self.spawn("provider", argv, env)

    def restart_provider(self, **env: str) -> None:
        """A new provider whose machines get ``env`` added to their environment."""
        signal_group(self.provider, signal.SIGTERM)
        self.provider.wait(timeout=60)
        self.procs.remove(self.provider)
        self.start_provider(**env)

    def start(self, timeout: float = 30) -> ProcessStack:
        py = sys.executable
        self.spawn("web", [py, "-m", "console.webserver", "--host", "127.0.0.1", "--port", str(self.port)])
        self.start_provider()
        self.spawn(
            "scheduler",
            [py, "-m", "celery", "-A", "console", "worker", "--beat"]
            + ["--queues", f"{self.queue_prefix}.control", "--concurrency", "1"]
            + ["--hostname", f"scheduler-{self.port}@%h", "--without-gossip"]
            + ["--without-mingle", "--loglevel", "INFO"],
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/api/v1/statuses", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"The web server did not come up; see {self.home / 'web.log'}")

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        """Run a management command against the stack, as an operator would."""
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )

    def logs(self, tail: int = 4000) -> str:
        """The end of each process' log: the stack's own, then its machines'."""
        files = [*sorted(self.home.glob("*.log")), *sorted(self.home.glob("logs/machines/*.log"))]
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in files)

    def kill(self) -> None:
        """Stop at once, as a power cut would: every process of the stack and of its machines.

        For tests' teardown, where nothing is left to observe: a graceful
        stop waits for every machine's worker to shut down, seconds per test.
        """
        for proc in self.procs:
            signal_group(proc, signal.SIGKILL)
        # Machines run in sessions of their own; their environment names this stack's home.
        kill_marked({"SIMDECK_INSTANCE": str(self.home.resolve())})
        for proc in self.procs:
            proc.wait()

    def stop(self, groups=None) -> None:
        """Terminate ``groups`` (default: every live group) so their machines stop, then the processes."""
        live = MachineGroup.objects.exclude(state=MachineGroup.State.TERMINATED)
        if groups is not None:
            live = live.filter(pk__in=[g.pk for g in groups])
        try:
            for group in live.all():  # .all(): a copy, so live.exists() asks the database again
                services.terminate_group(group, reason="Stopped with its stack.")
            deadline = time.monotonic() + 40
            while live.exists() and time.monotonic() < deadline and self.provider.poll() is None:
                time.sleep(0.3)
        finally:
            self._stop_processes()

    def _stop_processes(self) -> None:
        """Whatever happened to the groups, no process of the stack outlives it."""
        for proc in reversed(self.procs):
            signal_group(proc, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            signal_group(proc, signal.SIGKILL)  # e.g. Celery's embedded beat
