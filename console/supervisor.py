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

No Django here: the web server imports this without settings.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CRASH_LOOP_EXITS = 5
CRASH_LOOP_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0


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

    def start(self) -> None:
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

    # -- what `manage.py processes` reads -------------------------------------

    def write_state(self, stopped: bool = False) -> None:
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
