"""What the embedded servers share: locks, pid checks, logs, private files, the secret key."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 180.0  # s to wait for another process starting/stopping a server
START_TIMEOUT = 120.0  # s for a server to become ready (crash recovery can be slow)
STOP_TIMEOUT = 60.0
MAX_LOG_BYTES = 10 * 1024 * 1024
_HAVE_PROC = Path("/proc/self/stat").exists()


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be started or stopped."""


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
