"""Keep a few processes running: restart one that dies, stop them all on request.

``manage.py up`` runs the web server, the scheduler and the local provider
under a :class:`Supervisor`, and ``console.webserver`` runs its daphne
processes under one too. A process that dies (a task gone wild, the OOM
killer) is started again after a backoff that doubles with each exit; only
a stop request (Ctrl+C, SIGTERM) stops everything, or a crash loop: a
process that exits ``CRASH_LOOP_EXITS`` times within ``CRASH_LOOP_SECONDS``
will not get better by being restarted, and the message says which one and
where its log is.

Honcho (Foreman's model) stops everything when one process ends, the very
behaviour this replaces; circus restarts, but brings ZeroMQ, a daemon and a
control socket for what is one loop here.

No process may outlive whoever started it. Every child gets the kernel's
parent-death signal (SIGTERM when its parent dies, however it dies), and
:func:`guard` watches the launcher from outside: when the launcher is gone
without having stopped everything, it stops what is left, the embedded
PostgreSQL and Redis included, which run as daemons of their own.

No Django here: ``python -m console.supervisor guard`` and the web server
import this without settings.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CRASH_LOOP_EXITS = 5
CRASH_LOOP_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# How long the guard lets the children of a killed launcher stop on their own
# before it kills them: short, since nobody is waiting for a graceful end.
GUARD_GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1
# Where the supervisors publish what they run, in SIMDECK_HOME, for the guard,
# `manage.py processes` and `manage.py health`, and the staff's health page.
LAUNCHER_STATE = "processes.json"
WEB_STATE = "web-processes.json"


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to send ``sig`` to the child when its parent dies.

    Linux only (elsewhere None: the guard still cleans up). The parent's pid
    is checked after the call, as the parent may have died before it.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Program:
    """A process to keep running, and what happened to it so far."""

    name: str
    argv: list[str]
    log: Path | None = None  # None: write to our own stdout
    grace: float = 15.0  # between SIGTERM and SIGKILL when stopping it
    own_session: bool = True  # stopped as a group, with whatever it forked
    pass_fds: tuple[int, ...] = ()
    proc: subprocess.Popen | None = None
    started_at: str = ""
    restarts: int = 0
    last_exit: str = ""
    last_exit_at: str = ""
    restart_at: float | None = None  # monotonic time of the next start, while it is down
    exits: collections.deque = field(default_factory=collections.deque)  # monotonic times, last minute

    @property
    def where(self) -> str:
        return str(self.log) if self.log else "the lines above"


class CrashLoop(Exception):
    """A program kept dying: restarting it again would not help."""


class Supervisor:
    def __init__(
        self,
        programs: list[Program],
        *,
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
        say: Callable[[str], None] = print,
        state_file: Path | None = None,
        first_backoff: float = FIRST_BACKOFF_SECONDS,
    ) -> None:
        self.programs = programs
        self.cwd = cwd
        self.env = env
        self.say = say
        self.state_file = state_file
        self.first_backoff = first_backoff
        self.started = False

    def start(self) -> None:
        self.started = True
        for program in self.programs:
            self._spawn(program)
        self.write_state()

    def run(self, stopping: Callable[[], bool], poll: float = 0.5) -> None:
        """Keep the programs running until ``stopping()``; raise :class:`CrashLoop` if one keeps dying."""
        while not stopping():
            self.check()
            time.sleep(poll)

    def check(self) -> None:
        """One look at every program: note the ones that exited, start the ones due."""
        changed = False
        for program in self.programs:
            if program.proc is not None and program.proc.poll() is not None:
                self._exited(program)
                changed = True
            elif program.proc is None and program.restart_at is not None:
                if time.monotonic() >= program.restart_at:
                    program.restarts += 1
                    self._spawn(program)
                    self.say(f"Restarted the {program.name} (restart {program.restarts}).")
                    changed = True
        if changed:
            self.write_state()

    def _exited(self, program: Program) -> None:
        assert program.proc is not None
        code = program.proc.returncode
        if program.own_session:
            # Whatever it forked (Celery's pool and embedded beat) goes with it:
            # two schedulers' beats would send every periodic job twice.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(program.proc.pid, signal.SIGKILL)
        program.proc = None
        program.last_exit, program.last_exit_at = describe_exit(code), _now()
        now = time.monotonic()
        program.exits.append(now)
        while program.exits and program.exits[0] < now - CRASH_LOOP_SECONDS:
            program.exits.popleft()
        if len(program.exits) >= CRASH_LOOP_EXITS:
            self.write_state()
            raise CrashLoop(
                f"The {program.name} exited {len(program.exits)} times within "
                f"{CRASH_LOOP_SECONDS:.0f} s ({program.last_exit} the last time); see {program.where}."
            )
        delay = min(self.first_backoff * 2 ** (len(program.exits) - 1), MAX_BACKOFF_SECONDS)
        program.restart_at = now + delay
        self.say(
            f"The {program.name} stopped ({program.last_exit}); see {program.where}. "
            f"Restarting it in {delay:g} s."
        )

    def _spawn(self, program: Program) -> None:
        log = open(program.log, "ab") if program.log else None
        try:
            program.proc = subprocess.Popen(
                program.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log else None,
                start_new_session=program.own_session,  # Ctrl+C reaches us; we stop them
                pass_fds=program.pass_fds,
                preexec_fn=die_with_parent(),
            )
        finally:
            if log:
                log.close()
        program.started_at = _now()
        program.restart_at = None

    def stop(self) -> None:
        """SIGTERM every program at once, then SIGKILL what is left after each one's grace period."""
        for program in self.programs:
            program.restart_at = None
            if program.proc is not None:
                self._signal(program, signal.SIGTERM)
        start = time.monotonic()
        for program in self.programs:
            if program.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                program.proc.wait(timeout=max(0.1, start + program.grace - time.monotonic()))
            # Even when the leader obeyed, children it left behind are still in the group.
            self._signal(program, signal.SIGKILL)
            program.proc.wait()
            program.proc = None

    def _signal(self, program: Program, sig: int) -> None:
        assert program.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if program.own_session:
                os.killpg(program.proc.pid, sig)
            elif program.proc.poll() is None:
                program.proc.send_signal(sig)

    # -- what `manage.py processes`, the health page and the guard read -------------------

    def write_state(self, stopped: bool = False) -> None:
        """Replace the state file at once: its readers are other processes, and never see half of it."""
        if self.state_file is None:
            return
        state = {
            "launcher": os.getpid(),
            "stopped": stopped,
            "processes": [
                {
                    "name": p.name,
                    "pid": p.proc.pid if p.proc else None,
                    "group": p.own_session,
                    "started_at": p.started_at,
                    "restarts": p.restarts,
                    "last_exit": p.last_exit,
                    "last_exit_at": p.last_exit_at,
                    "log": str(p.log) if p.log else "",
                }
                for p in self.programs
            ],
        }
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- the guard -------------------------------------------------------------------------


def start_guard(state_file: Path, home: Path, *, embedded: list[str], sweep: dict[str, str]) -> int:
    """Start the guard of this process; return the pipe end to keep open for as long as we live.

    The guard reads its end of the pipe until end of file, which comes when
    this process exits, however it exits. It runs in a session of its own,
    so a Ctrl+C in the terminal does not reach it.
    """
    read_end, write_end = os.pipe()
    argv = [
        sys.executable,
        "-m",
        "console.supervisor",
        "guard",
        "--state",
        str(state_file),
        "--home",
        str(home),
    ]
    argv += [f"--embedded={name}" for name in embedded]
    argv += [f"--sweep={key}={value}" for key, value in sweep.items()]
    log = open(home / "logs" / "guard.log", "ab")
    subprocess.Popen(
        argv,
        stdin=read_end,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    log.close()
    os.close(read_end)
    return write_end


def guard(state_file: Path, home: Path, embedded: list[str], sweep: dict[str, str]) -> None:
    """Wait for the launcher to end; if it did not stop everything itself, do it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.read(0, 4096):
        pass
    state = read_state(state_file) or {}
    if state.get("stopped"):
        return
    print(
        f"{_now()} The launcher (pid {state.get('launcher')}) ended without stopping; stopping what is left."
    )
    groups = [p["pid"] for p in state.get("processes", []) if p.get("pid") and p.get("group")]
    # They had SIGTERM from the kernel already (die_with_parent); this reaches what they forked.
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GUARD_GRACE_SECONDS
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        time.sleep(0.1)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if sweep:
        _kill_marked(sweep)
    if embedded:
        from console import embedded as servers

        stops = {"redis": servers.stop_redis, "postgres": servers.stop_postgres}
        for name in embedded:
            try:
                stops[name](home)
            except Exception as exc:  # stop the other one regardless
                print(f"Could not stop the embedded {name}: {exc}")
    print(f"{_now()} Stopped.")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_marked(marker: dict[str, str]) -> None:
    """SIGKILL every process whose environment holds ``marker``: machines live in sessions of their own."""
    import psutil

    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if all(env.get(k) == v for k, v in marker.items()):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console.supervisor")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("guard", help="stop what a launcher left running when it ends (reads stdin to EOF)")
    g.add_argument("--state", type=Path, required=True)
    g.add_argument("--home", type=Path, required=True)
    g.add_argument("--embedded", action="append", default=[], choices=["postgres", "redis"])
    g.add_argument("--sweep", action="append", default=[], help="KEY=VALUE of the environment to kill by")
    args = parser.parse_args(argv)
    guard(args.state, args.home, args.embedded, dict(s.split("=", 1) for s in args.sweep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
