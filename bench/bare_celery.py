"""The baseline: bare Celery running the same subprocess, on the same Redis, without Simdeck.

Workers start as ``celery -A bench.bare_celery worker`` with the broker URL
and queue in ``SIMDECK_BENCH_BROKER`` / ``SIMDECK_BENCH_QUEUE``: concurrency 1,
one message at a time, acknowledged after the task ran, in Celery's default
pool (prefork: the worker and one pool process) unless told otherwise (a
machine runs its task on a thread: ``--pool threads``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent


def make_app(broker: str, queue: str) -> Celery:
    app = Celery("bare", broker=broker, backend=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )

    @app.task(name="bare.run")
    def run(argv: list[str]) -> float:
        """Run the command; answer when it ended (epoch seconds)."""
        subprocess.run(argv, check=False, stdin=subprocess.DEVNULL)
        return time.time()

    return app


# The app the worker processes load.
app = make_app(
    os.environ.get("SIMDECK_BENCH_BROKER", "redis://127.0.0.1:6379/0"),
    os.environ.get("SIMDECK_BENCH_QUEUE", "bench-bare"),
)


class Workers:
    """``count`` bare Celery workers on ``queue``, each with a pool of one (``pool``); a context manager."""

    def __init__(self, broker: str, queue: str, count: int, log_dir: Path, pool: str = "prefork"):
        self.broker, self.queue, self.count, self.log_dir, self.pool = broker, queue, count, log_dir, pool
        self.procs: list[subprocess.Popen] = []
        # The one app of this module, pointed at the broker before its first connection.
        app.conf.broker_url = app.conf.result_backend = broker
        app.conf.task_default_queue = queue
        self.app = app

    def __enter__(self) -> Workers:
        env = dict(os.environ, SIMDECK_BENCH_BROKER=self.broker, SIMDECK_BENCH_QUEUE=self.queue)
        # Bare: with a Django settings module named, Celery's Django fixup
        # would set Django up in every worker and pool process.
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.app.connection_for_write().default_channel.queue_purge(self.queue)
        for i in range(self.count):
            with open(self.log_dir / f"bare-worker-{i}.log", "ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "bench.bare_celery", "worker"]
                        + ["--queues", self.queue, "--pool", self.pool, "--concurrency", "1"]
                        + ["--prefetch-multiplier", "1"]
                        + ["--hostname", f"bare{i}-{self.queue}@%h", "--without-gossip"]
                        + ["--without-mingle", "--loglevel", "WARNING"],
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every worker answers a ping: only then is the baseline idle and ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = self.app.control.ping(timeout=0.5) or []
            names = {name for reply in replies for name in reply}
            if sum(1 for n in names if n.endswith(self.queue) or self.queue in n) >= self.count:
                return
        raise RuntimeError(f"The bare Celery workers did not come up; see {self.log_dir}")

    def run(self, argv: list[str]):
        return self.app.tasks["bare.run"].delay(argv)

    def __exit__(self, *exc) -> None:
        import signal

        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.app.connection_for_write().default_channel.queue_purge(self.queue)
