from django.core.management.base import BaseCommand, CommandError

from tasks_app import services
from tasks_app.models import Machine


class Command(BaseCommand):
    help = "Reclaim a spot machine, as a cloud provider would: its task is preempted (rehearsals)."

    def add_arguments(self, parser):
        parser.add_argument("machine", help="The machine's name, as the console shows it.")

    def handle(self, *args, machine: str, **options):
        found = Machine.objects.select_related("group").filter(name=machine).first()
        if found is None:
            raise CommandError(f"No machine named {machine!r}.")
        try:
            services.reclaim_machine(found, reason=f"Spot machine {machine} was reclaimed by an operator.")
        except services.Refused as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Machine {machine} reclaimed.")
