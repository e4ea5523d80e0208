"""Running a simulator's command lines as real subprocesses, each in the task's sandbox.

Each command runs in the task's sandbox (:mod:`tasks_app.sandbox`) over
the task's work folder: the machine's lasting sandbox, or one of its own.
Either way, when a command ends or is stopped, everything it started (MPI
ranks, shell pipelines, what it left in the background) ends too. Output is
read line by line, as bytes: a simulator may print anything, including
very long lines and invalid UTF-8, and the log keeps it exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tasks_app.sandbox import Box, Command
from tasks_app.simulators import Invocation

# ``should_stop(pid)`` is asked about once a second while a command runs; a
# non-empty answer stops the task and names why.
StopCheck = Callable[[int], str | None]


@dataclasses.dataclass
class Outcome:
    exit_code: int | None
    stopped: str | None = None  # why it was stopped, when it was


# Sink for complete lines as they arrive (the live log); see tasks_app.live.
Publish = Callable[[bytes], object]
# A line longer than this is published in pieces rather than held back.
MAX_PENDING = 1 << 20


class _Pump:
    """Copies a pipe to its log file byte for byte, publishing whole lines in batches.

    Reading whatever is available (not line by line) batches by itself: a
    quiet simulator's line goes out at once, a chatty one's thousands of
    lines a second go out a few dozen kilobytes at a time. It is driven by
    the thread that watches the command during its first look, then, if the
    pipe is still open, by a thread of its own (:meth:`run`).
    """

    def __init__(self, pipe: BinaryIO, sink: BinaryIO, publish: Publish | None):
        self.pipe, self.fd, self.sink, self.publish = pipe, pipe.fileno(), sink, publish
        self.pending = b""
        self.closed = False

    def read(self) -> bool:
        """Copy what the pipe holds (waiting for something, or its end); False once it ended."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.close()
            return False
        self.sink.write(chunk)
        self.sink.flush()
        if self.publish is not None:
            self.pending += chunk
            cut = self.pending.rfind(b"\n") + 1
            if cut == 0 and len(self.pending) > MAX_PENDING:
                cut = len(self.pending)
            if cut:
                self.publish(self.pending[:cut])
                self.pending = self.pending[cut:]
        return True

    def close(self) -> None:
        if self.pending and self.publish is not None:
            self.publish(self.pending + b"\n")
        self.pipe.close()
        self.closed = True

    def run(self) -> None:
        while self.read():
            pass


@functools.lru_cache(maxsize=256)
def _found(command: str, path: str | None) -> str | None:
    """Where ``command`` is on ``path``, or None to let the system look.

    The system tries every folder of the path in turn, one failed start
    each, for every command a machine runs; the answer is the same each time.
    """
    if os.sep in command:
        return None
    found = shutil.which(command, path=path)
    # A relative folder on the path means the work directory, which the command starts in.
    return found if found and os.path.isabs(found) else None


def stop_process_group(proc: subprocess.Popen, grace_seconds: float, box: Box | None = None) -> None:
    """SIGTERM everything the command started, then SIGKILL what is left after the grace period."""
    if box is not None:
        box.stop(proc, grace_seconds)
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    # Even when the leader obeyed, children it left behind are still in the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_invocations(
    invocations: list[Invocation],
    cwd: Path,
    stdout_path: Path,
    stderr_path: Path,
    should_stop: StopCheck,
    *,
    base_env: dict[str, str] | None = None,
    box: Box | None = None,
    grace_seconds: float = 10.0,
    poll_seconds: float = 1.0,
    first_look_seconds: float | None = None,
    publish: Callable[[str, bytes], object] | None = None,
) -> Outcome:
    """Run the command lines in order, stopping at the first that fails.

    ``should_stop`` is asked every ``poll_seconds`` while a command runs,
    the first time ``first_look_seconds`` after its spawn when given.
    With a ``box`` each command runs in it, with the box's environment
    and its own; ``base_env`` is then only the sandbox's launcher's.
    """
    env = dict(os.environ if base_env is None else base_env)
    with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
        exit_code: int | None = 0
        for inv in invocations:
            # No preexec_fn: without one the worker starts the command with
            # vfork, not a fork of its whole memory. What ends a command whose
            # machine died is the provider's sweep (providers.local).
            pipes = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if box is None:
                command_env = env | inv.env
                executable = _found(inv.argv[0], command_env.get("PATH"))
                proc = subprocess.Popen(
                    inv.argv, executable=executable, cwd=cwd, env=command_env, start_new_session=True, **pipes
                )
            else:
                proc = box.start(inv.argv, inv.env, cwd=cwd, env=env, start_new_session=True, **pipes)
            pumps = [
                _Pump(pipe, sink, _for(publish, name))
                for pipe, sink, name in ((proc.stdout, out, "stdout"), (proc.stderr, err, "stderr"))
            ]
            stopped, threads = None, []
            try:
                with _exit_watch(proc) as watch:
                    # The first look copies the output in this thread while it
                    # waits: a command over by then (most of a sweep of tiny
                    # tasks) costs no thread at all.
                    wait = poll_seconds if first_look_seconds is None else first_look_seconds
                    exit_code = watch.ended(wait, pumps) if watch.inline else None
                    threads = [threading.Thread(target=p.run, daemon=True) for p in pumps if not p.closed]
                    for t in threads:
                        t.start()
                    if not watch.inline:
                        exit_code = watch.ended(wait)
                    while exit_code is None:
                        stopped = should_stop(proc.pid)
                        if stopped:
                            stop_process_group(proc, grace_seconds, box)
                            exit_code = proc.wait()
                            break
                        exit_code = watch.ended(poll_seconds)
            except BaseException:
                # Whatever went wrong here, the simulation must not run on unwatched.
                stop_process_group(proc, 0, box)
                raise
            finally:
                if isinstance(proc, Command):
                    proc.close()
            deadline = time.monotonic() + 5
            for t in threads:
                # A grandchild may still hold the pipe open; do not hang on it.
                t.join(timeout=max(0.0, deadline - time.monotonic()))
            if stopped:
                return Outcome(exit_code, stopped)
            if exit_code != 0:
                return Outcome(exit_code)
    return Outcome(exit_code)


class _ExitWatch:
    """Waits for a command to end, noticing it the moment it does where the system allows.

    ``Popen.wait(timeout)`` polls with growing sleeps, so a command of a few
    milliseconds is noticed up to several milliseconds late. A pidfd (Linux
    5.3 and later) becomes readable the moment the process exits, and can be
    waited on together with the command's pipes (``inline``).
    """

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        try:
            # A command of a machine's lasting sandbox comes with one (its pid is not ours to open).
            own = getattr(proc, "pidfd", None)
            self.pidfd: int | None = os.dup(own) if own is not None else os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None

    @property
    def inline(self) -> bool:
        return self.pidfd is not None

    def ended(self, timeout: float, pumps: list[_Pump] = ()) -> int | None:
        """The exit code once the command ends within ``timeout`` seconds, else None.

        With ``pumps`` (``inline`` only) their pipes are copied meanwhile; it
        then returns once the command and its pipes have all ended, or when
        the time is up.
        """
        if self.pidfd is None:
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        deadline = time.monotonic() + timeout
        by_fd = {p.fd: p for p in pumps}
        exit_code = None
        while True:
            fds = [fd for fd, p in by_fd.items() if not p.closed]
            if exit_code is None:
                fds.append(self.pidfd)
            remaining = deadline - time.monotonic()
            if not fds or remaining <= 0:
                return exit_code
            for fd in select.select(fds, [], [], remaining)[0]:
                if fd == self.pidfd:
                    exit_code = self.proc.wait()
                else:
                    by_fd[fd].read()

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)


@contextlib.contextmanager
def _exit_watch(proc: subprocess.Popen):
    watch = _ExitWatch(proc)
    try:
        yield watch
    finally:
        watch.close()


def _for(publish: Callable[[str, bytes], object] | None, stream: str) -> Publish | None:
    return None if publish is None else (lambda data: publish(stream, data))


def tail(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file, decoded leniently."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
