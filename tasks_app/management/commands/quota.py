from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tasks_app import inputs, quotas
from tasks_app.errors import Refused
from tasks_app.models import Project, Quota

FIELDS = {
    "max_machines": ("--max-machines", int, "machines running at once"),
    "max_group_ttl_minutes": ("--max-group-ttl-minutes", float, "machine group time to live, minutes"),
    "max_task_ttl_seconds": ("--max-task-ttl-seconds", int, "task time to live, seconds"),
    "max_storage_gb": ("--max-storage-gb", float, "stored files, GB"),
}


class Command(BaseCommand):
    help = (
        "Show or set the quotas of a user or a project. Without limits given it shows them. "
        "A limit of 'none' removes it (no limit); --reset goes back to the site defaults."
    )

    def add_arguments(self, parser):
        who = parser.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="A username.")
        who.add_argument("--project", help="A project name.")
        for field, (flag, _kind, what) in FIELDS.items():
            parser.add_argument(flag, dest=field, help=f"Most {what}; 'none' for no limit.")
        parser.add_argument("--reset", action="store_true", help="Drop this quota: the site defaults apply.")

    def handle(self, *args, user, project, reset, **options):
        if user:
            holder = get_user_model().objects.filter(username=user).first()
            if holder is None:
                raise CommandError(f"No user named {user!r}.")
            lookup = {"user": holder}
        else:
            holder = Project.objects.filter(name=project).first()
            if holder is None:
                raise CommandError(f"No project named {project!r}.")
            lookup = {"project": holder}
        if reset:
            Quota.objects.filter(**lookup).delete()
        changes = {}
        for field, (flag, kind, _what) in FIELDS.items():
            value = options.get(field)
            if value is None:
                continue
            if value.lower() == "none":
                changes[field] = None
                continue
            try:
                changes[field] = inputs.number(field, kind(value), bounds=inputs.QUOTAS[field])
            except ValueError:
                raise CommandError(f"{flag} takes a number or 'none', not {value!r}.") from None
            except Refused as exc:
                raise CommandError(f"{flag}: {exc}") from None
        if changes:
            row = Quota.objects.filter(**lookup).first()
            if row is None:
                # A new row starts from the site defaults, so only the given limits change.
                row = Quota(**lookup, **vars(quotas.site_defaults()))
            for field, value in changes.items():
                setattr(row, field, value)
            row.save()
        limits = quotas.for_user(holder) if user else quotas.for_project(holder)
        own = Quota.objects.filter(**lookup).exists()
        self.stdout.write(
            f"Quotas of {'user' if user else 'project'} {user or project}"
            + ("" if own else " (site defaults)")
            + ":"
        )
        for field, (_flag, _kind, what) in FIELDS.items():
            value = getattr(limits, field)
            self.stdout.write(f"  {what}: {'no limit' if value is None else f'{value:g}'}")
