from django.core.management.base import BaseCommand

from tasks_app.providers.local import LocalProvider


class Command(BaseCommand):
    help = "Run the local provider: keep this host's machines (worker processes) as the database asks."

    def add_arguments(self, parser):
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="Seconds between rounds while something changes without notice "
            "(an elastic group's demand, a machine stopping); otherwise it waits for notices.",
        )

    def handle(self, *args, interval: float, **options):
        LocalProvider().run_forever(interval=interval)
