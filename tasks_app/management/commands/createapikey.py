from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tasks_app.models import APIKey


class Command(BaseCommand):
    help = "Create an API key for a user and print it (its last line is the key)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="A name to recognise the key by.")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}. Create one with: manage.py createsuperuser")
        _, secret = APIKey.issue(user, name)
        self.stdout.write(f"New API key {name!r} for {username} (shown once, store it now):")
        self.stdout.write(secret)
