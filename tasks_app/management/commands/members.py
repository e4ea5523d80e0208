from django.core.management.base import BaseCommand, CommandError

from tasks_app import teams
from tasks_app.models import Project
from tasks_app.services import Refused


class Command(BaseCommand):
    help = (
        "List or change the members of a project. "
        "Examples: members list PROJECT; members add PROJECT USER ROLE; "
        "members role PROJECT USER ROLE; members remove PROJECT USER. Roles: viewer, member, maintainer."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "add", "role", "remove"])
        parser.add_argument("project", help="The project's name.")
        parser.add_argument("username", nargs="?")
        parser.add_argument("role", nargs="?")
        parser.add_argument(
            "--create", action="store_true", help="With add: create the project when it does not exist yet."
        )

    def handle(self, *args, action, project, username, role, create, **options):
        found = Project.objects.filter(name=project).first()
        if found is None:
            if not (action == "add" and create):
                raise CommandError(
                    f"No project named {project!r}. To make it, run: members add {project} USER ROLE --create"
                )
            if not username:
                raise CommandError("Name the user to add: members add PROJECT USER ROLE")
            owner = self._user(username)
            found = Project.objects.create(name=project, created_by=owner)
        try:
            if action == "list":
                for m in teams.members(found):
                    self.stdout.write(f"{m.user.username}\t{m.role}")
                return
            if not username:
                raise CommandError(
                    f"Name the user: members {action} PROJECT USER" + (" ROLE" if action != "remove" else "")
                )
            if action == "remove":
                teams.remove_member(found, self._user(username))
                self.stdout.write(f"{username} removed from {found.name}.")
                return
            if not role:
                raise CommandError(
                    f"Give the role: members {action} {project} {username} viewer|member|maintainer"
                )
            if action == "add":
                teams.add_member(found, username, role)
            else:
                teams.change_role(found, self._user(username), role)
            self.stdout.write(f"{username} is {teams.parse_role(role).value} of {found.name}.")
        except Refused as exc:
            raise CommandError(str(exc)) from None

    def _user(self, username: str):
        try:
            return teams.find_user(username)
        except Refused as exc:
            raise CommandError(str(exc)) from None
