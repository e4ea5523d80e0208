from django.core.management.base import BaseCommand, CommandError

from tasks_app import task_counts


class Command(BaseCommand):
    help = (
        "Check the per-project task counts (by status, and ended by hour) against the task table; "
        "--rebuild counts them again, --fold compacts them."
    )

    def add_arguments(self, parser):
        parser.add_argument("--rebuild", action="store_true", help="Count every project's tasks again.")
        parser.add_argument("--fold", action="store_true", help="Sum each project's rows per status now.")

    def handle(self, *args, rebuild: bool, fold: bool, **options):
        if rebuild:
            task_counts.rebuild()
            self.stdout.write("Task counts rebuilt from the task table.")
        if fold:
            self.stdout.write(f"{task_counts.fold()} rows folded.")
        wrong = self.differences(task_counts.current(), task_counts.counted(), "project {} {}")
        wrong += self.differences(
            task_counts.ended_by_hour(),
            task_counts.ended_by_hour_counted(),
            "ended {:%Y-%m-%d %H}h {}",
        )
        if wrong:
            raise CommandError(f"{wrong} counts differ from the task table; run with --rebuild.")
        self.stdout.write("Task counts match the task table.")

    def differences(self, kept: dict, actual: dict, label: str) -> int:
        """Print the keys where ``kept`` and ``actual`` differ; how many they are."""
        wrong = sorted(
            set(kept) ^ set(actual) | {k for k in kept.keys() & actual.keys() if kept[k] != actual[k]}
        )
        for key in wrong:
            self.stdout.write(f"{label.format(*key)}: kept {kept.get(key)}, counted {actual.get(key)}")
        return len(wrong)
