"""The launcher behind `make run`: a process that dies is restarted, nothing outlives the launcher.

The supervisor's tests run small real processes; the launcher's start
``manage.py up`` for real, with the embedded PostgreSQL and Redis in a home
of their own, and kill what a task or the OOM killer would kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from console.supervisor import CrashLoop, Program, Supervisor, read_state
from tasks_app.testing.stack import free_port
from tests.helpers import ROOT, wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def supervisor(tmp_path):
    programs = [
        Program("sleeper", SLEEPER, log=tmp_path / "sleeper.log"),
        Program("crasher", [sys.executable, "-c", "raise SystemExit(3)"], log=tmp_path / "crasher.log"),
    ]
    said = []
    s = Supervisor(programs, say=said.append, state_file=tmp_path / "processes.json", first_backoff=0.05)
    s.said = said
    yield s
    s.stop()


def test_a_process_that_dies_is_restarted_and_counted(supervisor, tmp_path):
    supervisor.programs.pop()  # the sleeper alone
    supervisor.start()
    first = supervisor.programs[0].proc.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: supervisor.check() or supervisor.programs[0].restarts == 1, 10, 0.05, "a restart")
    assert running(supervisor.programs[0].proc.pid) and supervisor.programs[0].proc.pid != first
    assert supervisor.said == [
        f"The sleeper stopped (killed by SIGKILL); see {tmp_path / 'sleeper.log'}. Restarting it in 0.05 s.",
        "Restarted the sleeper (restart 1).",
    ]
    [kept] = read_state(tmp_path / "processes.json")["processes"]
    assert (kept["pid"], kept["restarts"], kept["last_exit"]) == (
        supervisor.programs[0].proc.pid,
        1,
        "killed by SIGKILL",
    )


def test_a_process_that_keeps_dying_stops_the_supervisor_naming_it_and_its_log(supervisor, tmp_path):
    supervisor.start()
    with pytest.raises(CrashLoop) as crash:
        supervisor.run(lambda: False, poll=0.02)
    assert str(crash.value) == (
        f"The crasher exited 5 times within 60 s (exit code 3 the last time); see {tmp_path / 'crasher.log'}."
    )
    sleeper = supervisor.programs[0].proc
    assert running(sleeper.pid)  # the others ran on; the launcher stops them
    supervisor.stop()
    assert not running(sleeper.pid)


def test_a_child_dies_with_a_supervisor_killed_outright(tmp_path):
    """The kernel's parent-death signal: no child outlives its supervisor, however it ends."""
    script = (
        "import sys, time\n"
        "from console.supervisor import Program, Supervisor\n"
        f"s = Supervisor([Program('sleeper', {SLEEPER!r})])\n"
        "s.start()\n"
        "print(s.programs[0].proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert running(child)
    parent.kill()
    parent.wait()
    wait_for(lambda: not running(child), 10, 0.05, "the child to end")


# -- `manage.py up`, for real -------------------------------------------------------


class Launcher:
    def __init__(self, home: Path):
        self.home = home
        home.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")
        }
        env |= {
            "SIMDECK_HOME": str(home),
            "SIMDECK_CONFIG": str(home / "client.json"),
            "SIMDECK_WEB_PROCESSES": "2",
        }
        self.env = env
        self.output = home / "up.out"
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "up", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_up(self) -> Launcher:
        wait_for(self.answers, 240, 0.5, f"the console to answer; see {self.output}")
        return self

    def answers(self) -> bool:
        assert self.proc.poll() is None, self.output.read_text()
        try:
            return httpx.get(self.url + "/api/v1/statuses", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def said(self) -> str:
        return self.output.read_text()

    def pid_of(self, name: str) -> int | None:
        state = read_state(self.home / "processes.json")
        return next(p["pid"] for p in state["processes"] if p["name"] == name)

    def everything(self) -> list[int]:
        """The launcher's processes, its machines' and the embedded servers'."""
        pids = [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        pids.append(int((self.home / "postgres" / "postmaster.pid").read_text().split()[0]))
        pids.append(int((self.home / "redis" / "redis.pid").read_text()))
        return pids

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )


@pytest.fixture
def launcher(tmp_path):
    launcher = Launcher(tmp_path / "home")
    left = []
    try:
        left = launcher.wait_up().everything()
        yield launcher
    finally:
        if launcher.proc.poll() is None:
            launcher.proc.send_signal(signal.SIGINT)
            launcher.proc.wait(timeout=120)
        for pid in left:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_launcher_restarts_a_killed_scheduler_and_web_server_process(launcher):
    scheduler = launcher.pid_of("scheduler")
    os.kill(scheduler, signal.SIGKILL)
    daphne = psutil.Process(launcher.pid_of("web server")).children()[0].pid
    os.kill(daphne, signal.SIGKILL)

    wait_for(lambda: "Restarted the scheduler (restart 1)." in launcher.said(), 60, message="a restart")
    assert running(launcher.pid_of("scheduler"))
    assert launcher.answers()
    web_log = (launcher.home / "logs" / "web-server.log").read_text()
    assert "Restarted the web server process" in web_log
    shown = launcher.manage("processes")
    assert shown.returncode == 0, shown.stderr
    assert "scheduler: pid" in shown.stdout and "restarted 1 times, last killed by SIGKILL" in shown.stdout
    health = launcher.manage("health")
    assert health.returncode == 0, health.stdout + health.stderr
    assert "  scheduler: pid" in health.stdout
    assert "restarted 1 times, last killed by SIGKILL" in health.stdout
    # The web server's daphne processes, one of them restarted, under the web server.
    assert "  web server process 2: pid" in health.stdout
    assert health.stdout.count("last killed by SIGKILL") == 2, health.stdout

    launcher.proc.send_signal(signal.SIGINT)
    assert launcher.proc.wait(timeout=120) == 0
    assert "Stopped." in launcher.said()


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_nothing_outlives_a_launcher_killed_outright(launcher):
    provider = psutil.Process(launcher.pid_of("local provider"))
    wait_for(provider.children, 120, message="the default group's machine")
    everything = launcher.everything()
    # The web server and its daphnes, the scheduler, the provider and its machine, the guard, the servers.
    assert len(everything) >= 9, everything
    launcher.proc.kill()
    launcher.proc.wait()
    wait_for(
        lambda: not [pid for pid in everything if running(pid)],
        60,
        message="every process of the launcher to end",
    )


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_stop_while_the_launcher_sets_up_ends_it_at_once_with_its_servers(tmp_path):
    launcher = Launcher(tmp_path / "home")
    try:
        # The guard starts just before the migrations: stop in the middle of them.
        wait_for(lambda: guarded(launcher.proc.pid), 120, 0.05, "the setup to begin")
        postgres = int((launcher.home / "postgres" / "postmaster.pid").read_text().split()[0])
        launcher.proc.send_signal(signal.SIGINT)

        assert launcher.proc.wait(timeout=60) == 0, launcher.said()
        assert launcher.said().endswith("Stopped.\n"), launcher.said()
        assert not running(postgres)
    finally:
        if launcher.proc.poll() is None:
            launcher.proc.send_signal(signal.SIGINT)
            launcher.proc.wait(timeout=120)


def guarded(pid: int) -> bool:
    """Whether the launcher ``pid`` started its guard yet."""
    for child in psutil.Process(pid).children():
        try:
            if "console.supervisor" in child.cmdline():
                return True
        except psutil.Error:  # a short-lived child, gone or a zombie
            continue
    return False


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_data_folder_is_private_and_a_piped_start_does_not_print_the_password(launcher):
    home = launcher.home
    password = (home / "admin-password.txt").read_text().strip()
    said = launcher.said()
    assert password and password not in said  # its output went to a file, not a terminal
    assert str(home / "admin-password.txt") in said
    for path in (home / "admin-password.txt", home / "postgres-password"):
        assert path.stat().st_mode & 0o077 == 0, path
    # No other account may pass through; the embedded PostgreSQL's user passes by its group only.
    assert home.stat().st_mode & 0o007 == 0
    assert home.stat().st_mode & 0o060 == 0
    ran = launcher.manage(
        "shell",
        "-c",
        "from django.core.files.base import ContentFile; "
        "from django.core.files.storage import default_storage as s; "
        "print(s.path(s.save('tasks/probe/file.txt', ContentFile(b'x'))))",
    )
    stored = Path(ran.stdout.strip().splitlines()[-1])
    assert stored.stat().st_mode & 0o777 == 0o600
    assert stored.parent.stat().st_mode & 0o777 == 0o700
