from django.core.management.base import BaseCommand, CommandError

from tasks_app import health


class Command(BaseCommand):
    help = (
        "Show what runs (pid, restarts, last exit, log) and whether the database, Redis, the broker, "
        "file storage, the sandbox and the providers answer; exit with an error when something is down."
    )

    def handle(self, *args, **options):
        report = health.report()
        self.stdout.write(report.supervisor)
        for p in report.processes:
            running = f"pid {p.pid} since {p.started_at}" if p.state == "running" else p.state
            line = f"  {p.name}: {running}; restarted {p.restarts} times"
            if p.last_exit:
                line += f", last {p.last_exit} at {p.last_exit_at}"
            self.stdout.write(f"{line}; log {p.log or '(none)'}")
        for c in report.checks:
            self.stdout.write(f"{c.name}: {'up' if c.ok else 'DOWN'}: {c.detail}")
        self.stdout.write(f"Live machines: {report.machines_live}")
        if not report.ok:
            raise CommandError(f"Down: {', '.join(report.down)}.")
        self.stdout.write("Everything is up.")
