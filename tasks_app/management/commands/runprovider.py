from django.core.management.base import BaseCommand

from tasks_app.providers.local import LocalProvider


class Command(BaseCommand):
    help = (
        "Run a provider: keep its groups' machines as the database asks; the local one "
        "(worker processes on this host) unless --provider slurm (pilot jobs on a Slurm cluster)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--provider", choices=["local", "slurm"], default="local")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between checks (slurm: 2); the local provider waits for notices "
            "and checks this often only while something changes without one (default 1).",
        )

    def handle(self, *args, provider: str, interval: float | None, **options):
        if provider == "slurm":
            from tasks_app.providers.slurm import SlurmProvider

            SlurmProvider().run_forever(interval=interval or 2.0)
        else:
            LocalProvider().run_forever(interval=interval or 1.0)
