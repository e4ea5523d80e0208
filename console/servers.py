"""Which PostgreSQL and Redis an instance reaches, and the one way to start the embedded ones.

``DATABASE_URL`` and ``REDIS_URL`` name configured servers; whichever is
unset is the embedded one under ``SIMDECK_HOME`` (console/embedded/). The
settings only read where the servers are (``database_url``, ``redis_url``):
importing them starts nothing, so a web server, a Celery worker or a test's
subprocess reaches the servers that run and never brings up one of its own.

``start_embedded`` is for the entry points that need the servers, and runs
before Django reads its settings: ``manage.py`` for ``up`` and the commands
that reach the database, the test run (tests/servers.py) and the benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from console import embedded

BASE_DIR = Path(__file__).resolve().parent.parent

_START = {"postgres": embedded.start_postgres, "redis": embedded.start_redis}
_STOP = {"postgres": embedded.stop_postgres, "redis": embedded.stop_redis}


def instance_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``SIMDECK_HOME``, where an instance keeps everything (``.simdeck`` in the checkout unless set)."""
    return Path(environ.get("SIMDECK_HOME") or BASE_DIR / ".simdeck").resolve()


def embedded_in_use(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The embedded servers this instance uses, in the order they stop.

    Redis goes first: the processes that still run while the servers stop
    lose their broker, not a transaction half written.
    """
    return [
        name for name, url in (("redis", "REDIS_URL"), ("postgres", "DATABASE_URL")) if not environ.get(url)
    ]


def database_url(home: Path, environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("DATABASE_URL") or embedded.postgres_url(home)


def redis_url(home: Path, environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("REDIS_URL") or embedded.redis_url(home)


def start_embedded(home: Path, environ: Mapping[str, str] = os.environ) -> None:
    """Start the embedded servers this instance uses; those already running are kept."""
    for name in reversed(embedded_in_use(environ)):
        _START[name](home)


def stop_embedded(home: Path, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Stop the embedded servers this instance uses (configured ones are not ours); what failed.

    Each is stopped even when the other fails, so that a failure leaves
    as little running as it can.
    """
    failures = []
    for name in embedded_in_use(environ):
        try:
            _STOP[name](home)
        except embedded.EmbeddedServiceError as exc:
            failures.append(f"Could not stop the embedded {name}: {exc}")
    return failures
