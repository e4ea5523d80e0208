#!/usr/bin/env python
"""Django's command-line utility for Simdeck."""

import os
import sys

from console import servers

# Commands that reach no server, or only report on them: `health` must see a
# stopped server as down rather than start it. Every other command (`up`,
# `migrate`, `members`, `shell`, …) starts the embedded servers it uses.
STARTS_NO_SERVER = {
    "help",
    "version",
    "check",
    "makemigrations",
    "collectstatic",
    "diffsettings",
    "health",
    "processes",
}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    if command.lstrip("-") not in STARTS_NO_SERVER:
        servers.start_embedded(servers.instance_home())
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
