from django.core.management.base import BaseCommand, CommandError

from tasks_app.errors import Refused
from tasks_app.models import JoinToken, Machine
from tasks_app.services import hosts


class Command(BaseCommand):
    help = (
        "Join tokens let other hosts run the machines of 'hosts' groups "
        "(simdeck-machine join URL --token …): issue, list or revoke them, or revoke one machine."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        issue = sub.add_parser("issue", help="Issue a token and print it (its last line is the token).")
        issue.add_argument("name", help="What the token is for, e.g. the host's name.")
        sub.add_parser("list", help="The tokens, with the machines their hosts run.")
        revoke = sub.add_parser("revoke", help="Revoke a token: its host's machines stop now.")
        revoke.add_argument("name")
        machine = sub.add_parser("revoke-machine", help="Revoke one machine's own token: it stops now.")
        machine.add_argument("machine", help="The machine's name, as the group's page shows it.")

    def handle(self, *args, action: str, **options):
        if action == "issue":
            try:
                _, secret = hosts.issue_token(options["name"])
            except Refused as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"Join token {options['name']!r} (shown once: hand it to the host's admin):")
            self.stdout.write(secret)
        elif action == "list":
            for token in JoinToken.objects.order_by("created_at"):
                state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "active"
                machines = token.machines.filter(state__in=hosts.LIVE).values_list("name", flat=True)
                seen = f", last asked from {token.hostname}" if token.hostname else ""
                running = ", ".join(machines) or "no machine"
                self.stdout.write(f"{token.name} ({token.hint}…): {state}{seen}; runs {running}")
        elif action == "revoke":
            token = JoinToken.objects.filter(name=options["name"]).first()
            if token is None:
                raise CommandError(f"No join token named {options['name']!r}; see: manage.py jointoken list")
            stopped = hosts.revoke_token(token)
            self.stdout.write(f"Join token {token.name!r} revoked; {stopped} machine(s) stopped.")
        else:
            machine = Machine.objects.select_related("group").filter(name=options["machine"]).first()
            if machine is None or not machine.token_digest:
                raise CommandError(f"No machine of a joined host is named {options['machine']!r}.")
            if not hosts.revoke_machine(machine):
                raise CommandError(f"Machine {machine.name} is not running.")
            self.stdout.write(f"Machine {machine.name}'s token revoked; it stops.")
