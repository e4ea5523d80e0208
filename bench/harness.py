"""What every benchmark shares: Django set up on a database of its own, a running stack, figures.

A benchmark is a module ``bench/<name>.py`` with ``TITLE`` and
``run(quick=False) -> list[dict]`` returning :func:`result` dicts; the
runner (``python -m bench``) finds it by that shape.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from console import servers

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "simdeck_bench"

_ready = False
TEST_TUNING = (
    "SIMDECK_KILL_GRACE_SECONDS",
    "SIMDECK_HEARTBEAT_SECONDS",
    "SIMDECK_HOUSEKEEPING_SECONDS",
    "SIMDECK_MACHINE_LOST_SECONDS",
    "SIMDECK_RESOURCE_SAMPLE_SECONDS",
    "SIMDECK_WEB_PROCESSES",
)


def home() -> Path:
    """Where benchmarks keep their data: never the instance's nor the tests' home."""
    return Path(os.environ.get("SIMDECK_BENCH_HOME") or ROOT / ".simdeck-bench").resolve()


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``pkill``) stop a run as Ctrl+C does: through its cleanups.

    Left to its default, SIGTERM ends the process at once and leaves the
    stack it started (web server, scheduler, provider, machines) running on
    the benchmark database, where the next run's provider competes with it.
    """
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def setup_django() -> None:
    """Configure Django for benchmarks on their own database, migrate it, and set it up.

    With ``DATABASE_URL`` set, the same server with the database
    ``simdeck_bench`` (``SIMDECK_BENCH_DB`` overrides the name), created if
    missing; otherwise the embedded PostgreSQL under the benchmark home.
    Redis is the configured one, else the embedded one. Safe to call twice.
    """
    global _ready
    if _ready:
        return
    os.environ["SIMDECK_HOME"] = str(home())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    # Benchmarks measure the product as deployed, not a debug build.
    os.environ["DEBUG"] = "false"
    if os.environ.get("DATABASE_URL"):
        os.environ["DATABASE_URL"] = _ensure_database(
            os.environ["DATABASE_URL"], os.environ.get("SIMDECK_BENCH_DB") or DB_NAME
        )
    servers.start_embedded(home())
    import django
    from django.core.management import call_command

    django.setup()
    # A line per HTTP request would drown the figures.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    call_command("migrate", interactive=False, verbosity=0)
    atexit.register(_stop_embedded)
    _ready = True


def _ensure_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name`` on the same server, which is created if missing."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    target = urlunsplit(parts._replace(path="/" + name))
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return target


def _stop_embedded() -> None:
    """Stop the embedded servers the benchmarks started; configured ones are not ours."""
    from django.db import connections

    connections.close_all()
    for failure in servers.stop_embedded(home()):
        print(failure, file=sys.stderr)


class Stack:
    """A running Simdeck for a benchmark: daphne, scheduler, local provider, one started group.

    ``with Stack(machines=2) as s:`` gives ``s.url``, ``s.api_key`` (of
    ``s.user``) and ``s.group_name``, a group whose machines are all online.
    One stack at a time per benchmark database: the provider of a stack
    runs the machines of every started group it finds there.
    """

    def __init__(
        self,
        machines: int = 2,
        machine_type: str | None = None,
        env: dict[str, str] | None = None,
        username: str = "bench",
        group_name: str | None = None,
    ):
        setup_django()
        from django.conf import settings

        from tasks_app.testing.stack import ProcessStack

        self.machines = machines
        self.machine_type = machine_type or settings.SIMDECK_DEFAULT_MACHINE_TYPE
        # (A port the caller chose, SIMDECK_STACK_PORT, is taken here.)
        self._processes = ProcessStack(
            home(), env={k: v for k, v in (env or {}).items() if k == "SIMDECK_STACK_PORT"}
        )
        # The test suite's short timings and fresh connections per request
        # are not what an operator runs; benchmarks measure the defaults.
        for name in TEST_TUNING:
            if name in os.environ:
                self._processes.env[name] = os.environ[name]
            else:
                self._processes.env.pop(name, None)
        # The defaults: the web server pools its connections, the others keep theirs.
        self._processes.env.pop("CONN_MAX_AGE", None)
        self._processes.env.update(env or {})
        self.url = self._processes.url
        self.env = self._processes.env
        self.home = self._processes.home
        self.port = self._processes.port
        self.group_name = group_name or f"bench-{self.port}-{secrets.token_hex(2)}"
        self.api_key = ""
        self.username = username
        self.user = None
        self.group = None

    def __enter__(self) -> Stack:
        from django.conf import settings
        from django.contrib.auth import get_user_model

        from tasks_app import services
        from tasks_app.models import APIKey, Machine, MachineGroup

        # What this process sends to the machines must reach this stack's queues.
        self._prefix = settings.SIMDECK_QUEUE_PREFIX
        settings.SIMDECK_QUEUE_PREFIX = self._processes.queue_prefix
        # Groups an interrupted run left started would get machines from our provider.
        # The console benchmark's generated groups hold no machines: they are put back as they were.
        from bench.console_pages import PREFIX

        MachineGroup.objects.filter(name__startswith=f"{PREFIX}-").update(state=MachineGroup.State.TERMINATED)
        for group in MachineGroup.objects.filter(
            state__in=[MachineGroup.State.CREATED, MachineGroup.State.STARTED]
        ):
            services.terminate_group(group, reason="Left over by an interrupted benchmark.")
        self.user, _ = get_user_model().objects.get_or_create(username=self.username)
        self.api_key = APIKey.issue(self.user, f"benchmark {self.group_name}")[1]
        self.group = services.create_group(
            self.user,
            machine_type=self.machine_type,
            name=self.group_name,
            num_machines=self.machines,
            max_idle_time=None,
        )
        # Started first, its machines boot while the web server does.
        services.start_group(self.group)
        try:
            self._processes.start(timeout=60)
            deadline = time.monotonic() + 120
            while (
                Machine.objects.filter(group=self.group, state=Machine.State.ONLINE).count() < self.machines
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"The machines of {self.group_name} did not come online; logs:\n"
                        + self._processes.logs()
                    )
                time.sleep(0.2)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        from django.conf import settings

        try:
            self._processes.stop(groups=[self.group])
        finally:
            settings.SIMDECK_QUEUE_PREFIX = self._prefix

    def logs(self) -> str:
        return self._processes.logs()


def percentiles(values: list[float], ps=(50, 95, 99)) -> dict[str, float]:
    """Percentiles of ``values`` (linear interpolation), keyed "p50", "p95", ..."""
    if not values:
        raise ValueError("No values to take percentiles of.")
    ordered = sorted(float(v) for v in values)
    out = {}
    for p in ps:
        rank = (len(ordered) - 1) * min(max(p, 0), 100) / 100
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        out[f"p{p}"] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return out


def result(
    benchmark: str,
    metric: str,
    unit: str,
    simdeck: float,
    baseline: float | None = None,
    baseline_name: str = "",
    note: str = "",
    lower_is_better: bool = True,
) -> dict:
    """One figure: Simdeck's value, its baseline's, and their ratio (simdeck / baseline)."""
    ratio = simdeck / baseline if baseline else None
    return {
        "benchmark": benchmark,
        "metric": metric,
        "unit": unit,
        "simdeck": float(simdeck),
        "baseline": None if baseline is None else float(baseline),
        "baseline_name": baseline_name,
        "ratio": ratio,
        "lower_is_better": lower_is_better,
        "note": note,
    }


# -- submitting through the API, as a client does --------------------------------

INPUT_NAME = "input.txt"


def input_archive() -> tuple[bytes, str]:
    """A tiny input folder zipped: one small file. Returns the bytes and their SHA-256."""
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(INPUT_NAME, "benchmark input\n")
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def submit_commands(client, group: str, commands: list[str], metadata: dict | None = None) -> str:
    """Create a ``commands`` task with an ``httpx.Client``; returns its id.

    The tiny input travels inside the request, as the client sends small
    inputs; should the server ask for an upload, it follows.
    """
    data, digest = input_archive()
    created = client.post("/api/v1/tasks", json=_task_body(group, commands, metadata, data, digest))
    _check(created, 201)
    if created.json()["upload_url"]:
        uploaded = client.put(
            created.json()["upload_url"], content=data, headers=_upload_headers(data, digest)
        )
        _check(uploaded, 200)
    return created.json()["id"]


async def submit_commands_async(client, group: str, commands: list[str], metadata: dict | None = None) -> str:
    """:func:`submit_commands` with an ``httpx.AsyncClient``."""
    data, digest = input_archive()
    created = await client.post("/api/v1/tasks", json=_task_body(group, commands, metadata, data, digest))
    _check(created, 201)
    if created.json()["upload_url"]:
        uploaded = await client.put(
            created.json()["upload_url"], content=data, headers=_upload_headers(data, digest)
        )
        _check(uploaded, 200)
    return created.json()["id"]


def api_client(stack: Stack, cls=None, **kwargs):
    """An httpx client (``cls``, default ``httpx.Client``) authenticated as the stack's user."""
    import httpx

    cls = cls or httpx.Client
    return cls(
        base_url=stack.url,
        headers={"Authorization": f"Bearer {stack.api_key}"},
        timeout=kwargs.pop("timeout", 60),
        **kwargs,
    )


def _task_body(group: str, commands: list[str], metadata: dict | None, data: bytes, digest: str) -> dict:
    import base64

    body = {
        "simulator": "commands",
        "machine_group": group,
        "input_files": [INPUT_NAME],
        "parameters": {"commands": commands},
        "input_archive": base64.b64encode(data).decode(),
        "input_sha256": digest,
    }
    if metadata:
        body["metadata"] = metadata
    return body


def _upload_headers(data: bytes, digest: str) -> dict[str, str]:
    return {
        "X-Archive-Size": str(len(data)),
        "X-Content-SHA256": digest,
        "Content-Type": "application/zip",
    }


def _check(response, expected: int) -> None:
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} answered {response.status_code}: "
            f"{response.text[:500]}"
        )
