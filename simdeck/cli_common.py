"""What every ``simdeck`` command shares: where it prints and how it asks."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from simdeck.errors import InvalidInput

# Results go to stdout, messages to stderr, so `--json` output can be piped.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def note(message: str, style: str = "") -> None:
    err.print(Text(message, style=style), soft_wrap=True)


def confirm(question: str, yes: bool) -> None:
    """Ask before doing something that cannot be undone; ``-y`` answers for the user."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput(f"{question} Add -y to confirm when not on a terminal.")
    if not typer.confirm(question, default=False, err=True):
        note("Nothing was done.")
        raise typer.Exit(1)
