from django.core.management.base import BaseCommand, CommandError

from tasks_app import task_counts


class Command(BaseCommand):
    help = (
        "Check the per-project task counts by status against the task table; "
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
        kept, actual = task_counts.current(), task_counts.counted()
        wrong = sorted(
            set(kept) ^ set(actual) | {k for k in kept.keys() & actual.keys() if kept[k] != actual[k]}
        )
        if wrong:
            for project_id, status in wrong:
                self.stdout.write(
                    f"project {project_id} {status}: kept {kept.get((project_id, status))}, "
                    f"counted {actual.get((project_id, status))}"
                )
            raise CommandError(f"{len(wrong)} counts differ from the task table; run with --rebuild.")
        self.stdout.write(f"Task counts match the task table ({len(kept)} project and status pairs).")
