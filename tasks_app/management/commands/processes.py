from pathlib import Path

import psutil
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from console.supervisor import read_state
from tasks_app.management.commands.up import state_path


class Command(BaseCommand):
    help = "Show the processes `manage.py up` runs on this host: pid, since when, restarts, last exit, log."

    def handle(self, *args, **options):
        path = state_path(Path(settings.SIMDECK_HOME))
        state = read_state(path)
        if state is None or state["stopped"] or not psutil.pid_exists(state["launcher"]):
            raise CommandError(
                f"Simdeck is not running from {settings.SIMDECK_HOME} (no launcher in {path})."
            )
        self.stdout.write(f"Launcher: pid {state['launcher']}")
        for p in state["processes"]:
            running = f"pid {p['pid']} since {p['started_at']}" if p["pid"] else "down, restarting"
            line = f"{p['name']}: {running}; restarted {p['restarts']} times"
            if p["last_exit"]:
                line += f", last {p['last_exit']} at {p['last_exit_at']}"
            self.stdout.write(f"{line}; log {p['log']}")
