import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tasks_app.accounts import create_user


class Command(BaseCommand):
    # Tests hand the command a stdin of their own.
    stealth_options = ("stdin",)
    help = (
        "Create an account. Without --password-stdin a password is generated and printed "
        "once, as the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("email", nargs="?", default="", help="Optional email address.")
        parser.add_argument("--staff", action="store_true", help="Staff see every project and create people.")
        parser.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from standard input (its first line) instead of generating one.",
        )

    def handle(self, *args, username: str, email: str, staff: bool, password_stdin: bool, **options):
        password = None
        if password_stdin:
            password = options.get("stdin", sys.stdin).readline().rstrip("\r\n")
            if not password:
                raise CommandError("No password arrived on standard input; pipe one line into the command.")
        try:
            user, password = create_user(username, email, is_staff=staff, password=password)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        role = "staff account" if user.is_staff else "account"
        if password_stdin:
            self.stdout.write(f"Created {role} {user.username}.")
            return
        self.stdout.write(f"Created {role} {user.username}. Its password (shown once, pass it on privately):")
        self.stdout.write(password)
