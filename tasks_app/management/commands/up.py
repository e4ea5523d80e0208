"""Bring the whole system up on this host, and down again on Ctrl+C.

    database + Redis (embedded unless configured; manage.py starts those
    before Django reads its settings, see console/servers.py)
    -> migrate, first admin and API key, the default machine group
    -> web server (daphne), scheduler (Celery worker with beat), local provider

Each child writes its log under ``SIMDECK_HOME/logs``; the terminal shows
only what a person needs: where the console is and how to log in, and when
a process died and was restarted (console/supervisor.py). Only Ctrl+C,
SIGTERM or a process that keeps dying stops everything; if this process is
killed outright, its guard stops what it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import connections

from console import servers
from console.supervisor import LAUNCHER_STATE, WEB_STATE, CrashLoop, Program, Supervisor, start_guard
from tasks_app import sandbox, services, storage
from tasks_app.models import APIKey, MachineGroup
from tasks_app.providers.local import instance

ADMIN = "admin"
DEFAULT_GROUP = "default"


def log_path(logs: Path, name: str) -> Path:
    return logs / f"{name.replace(' ', '-')}.log"


def state_path(home: Path) -> Path:
    """What the launcher runs now, for ``manage.py processes``, the health page and the guard."""
    return home / LAUNCHER_STATE


class Command(BaseCommand):
    help = "Start Simdeck: web console and API, scheduler, and the local machines."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    def handle(self, *args, host: str, port: int, **options):
        home = Path(settings.SIMDECK_HOME)
        logs = home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

        python = sys.executable
        programs = [
            # Several daphne processes on one socket (SIMDECK_WEB_PROCESSES); see console/webserver.py.
            ("web server", [
                python, "-m", "console.webserver", "--host", host, "--port", str(port),
                "--state", str(home / WEB_STATE),
            ], 15),
            ("scheduler", [
                python, "-m", "celery", "-A", "console", "worker", "--beat",
                "--queues", settings.CELERY_TASK_DEFAULT_QUEUE, "--concurrency", "1",
                "--hostname", f"scheduler-{port}@%h", "--without-gossip", "--without-mingle",
                "--loglevel", "INFO",
            ], 15),
            # Its machines get time to store the logs of the tasks they were running.
            ("local provider", [python, "manage.py", "runprovider"], 45),
        ]  # fmt: skip
        if "slurm" in settings.SIMDECK_PROVIDERS:
            # Its pilots run on in Slurm without it; a restart follows them on.
            slurm = [python, "manage.py", "runprovider", "--provider", "slurm"]
            programs.append(("slurm provider", slurm, 15))
        supervisor = Supervisor(
            [Program(name, argv, log=log_path(logs, name), grace=grace) for name, argv, grace in programs],
            cwd=settings.BASE_DIR,
            say=self.say,
            state_file=state_path(home),
        )
        supervisor.write_state()  # nothing running yet: what the guard reads if we die now
        # From here on, if this process is killed outright, the guard stops what it started.
        guard_pipe = start_guard(
            state_path(home),
            home,
            embedded=servers.embedded_in_use(),
            sweep={"SIMDECK_INSTANCE": instance()},  # the machines, in sessions of their own
        )
        stop: list[int] = []

        def stop_requested(signum: int, _frame) -> None:
            stop.append(signum)
            if not supervisor.started:
                raise KeyboardInterrupt  # a stop during setup (a long migration) does not wait for it

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop_requested)
        crashed = None
        try:
            call_command("migrate", interactive=False, verbosity=0)
            login_note = self.ensure_admin(home, url)
            self.ensure_default_group()
            sandbox_note, storage_note = sandbox_status(), storage_status()
            supervisor.start()
            self.say(
                "\n".join(
                    [
                        "",
                        f"Simdeck is up: {url}/",
                        f"  {login_note}",
                        f"  API docs: {url}/api/v1/docs",
                        f"  Data: {home}   Logs: {logs}",
                        f"  {sandbox_note}",
                        f"  {storage_note}",
                        "  Press Ctrl+C to stop.",
                        "",
                    ]
                )
            )
            supervisor.run(lambda: bool(stop))
        except KeyboardInterrupt:
            pass
        except CrashLoop as exc:
            crashed = exc
            self.say(f"{exc} Stopping everything.")
        finally:
            self.say("Stopping Simdeck…")
            supervisor.stop()
            connections.close_all()
            for failure in servers.stop_embedded(home):
                self.say(failure)
            supervisor.write_state(stopped=True)
            os.close(guard_pipe)  # the guard sees we stopped everything, and ends
            self.say("Stopped.")
        if crashed:
            raise SystemExit(1)

    def say(self, text: str) -> None:
        """Print, but never let a closed terminal or pipe stop the shutdown."""
        try:
            self.stdout.write(text)
            self.stdout.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def ensure_admin(self, home: Path, url: str) -> str:
        from simdeck import config as client_config

        User = get_user_model()
        password_file = home / "admin-password.txt"
        if User.objects.filter(is_superuser=True).exists():
            if password_file.exists():
                return f"Log in as {ADMIN}; the first password is in {password_file}."
            return "Log in with your admin account."
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(ADMIN, "", password)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        _, key = APIKey.issue(user, "first key")
        saved = client_config.save(url, key)
        # Shown only on the operator's terminal: never into a log that `make run | tee` keeps.
        if not self.stdout.isatty():
            self.say(
                f"Created the first admin account, {ADMIN}; its password is in {password_file} and "
                f"its API key in {saved}, both readable only by you."
            )
            return f"Log in as {ADMIN}; the password is in {password_file}."
        self.say(
            f"Created the first admin account: {ADMIN} / {password}\n"
            f"and its API key (shown once, saved for the client and CLI in {saved}):\n{key}"
        )
        return f"Log in as {ADMIN} / {password}"

    def ensure_default_group(self) -> None:
        group = MachineGroup.objects.filter(name=DEFAULT_GROUP).first()
        if group is None or not group.is_accepting_tasks:
            if group is not None:
                group.name = f"{DEFAULT_GROUP}-{group.pk}"  # keep the old one's history
                group.save(update_fields=["name"])
            admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
            group = services.create_group(
                admin,
                machine_type=settings.SIMDECK_DEFAULT_MACHINE_TYPE,
                name=DEFAULT_GROUP,
                num_machines=1,
                max_idle_time=None,
            )
        services.start_group(group)


def sandbox_status() -> str:
    """One line on how simulations are isolated here, or why machines will not start."""
    if not sandbox.enabled():
        return "Sandbox: OFF (SIMDECK_SANDBOX=off): simulations run with the machines' own rights."
    try:
        return f"Sandbox: {sandbox.check()}."
    except sandbox.SandboxUnavailable as exc:
        return f"NO SANDBOX, so no machine will start: {exc}"


def storage_status() -> str:
    """One line on where inputs and outputs are stored, or what the bucket refuses."""
    try:
        return f"Files: stored {storage.check()}."
    except storage.StorageUnavailable as exc:
        return f"FILE STORAGE REFUSES, so no task can be submitted or store outputs: {exc}"
