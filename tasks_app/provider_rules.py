"""What a machine group may ask of its provider, checked before the provider is asked.

``local`` runs a group's machines as worker processes on this host
(providers/local.py); ``slurm`` as pilot jobs on a Slurm cluster
(providers/slurm.py); ``hosts`` on hosts that joined with a token
(services/hosts.py). A group names its provider when it is created;
whether that provider can serve it is checked when it starts, so a group
that could never get a machine is refused then, with what is wrong, instead
of waiting forever. The services check through this module; a provider's
own check (asking Slurm) is registered in :data:`START_CHECKS` when the app
starts (apps.py), since the providers stand above the services.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.conf import settings
from django.db import connection

from tasks_app.errors import Refused

# A provider's own check of a group about to start: provider name -> check(group),
# which raises Refused when the provider cannot bring up any of its machines.
START_CHECKS: dict[str, Callable] = {}

KNOWN = ("local", "slurm", "hosts")
# Options a group may give its provider, and which provider reads them.
OPTIONS = {"slurm": ("partition", "account", "qos")}
# Slurm names: no spaces, nothing a command line could take for an option.
_OPTION_VALUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


def clean_options(provider: str, options: dict | None) -> dict:
    """The group's provider and options as stored, or a refusal naming what is wrong."""
    if provider not in KNOWN:
        raise Refused(
            f"Unknown provider {provider!r}. Providers: {', '.join(KNOWN)}.",
            field="provider",
            code="unknown_provider",
        )
    options = options or {}
    if not isinstance(options, dict):
        raise Refused("provider_options is an object of names to values.", field="provider_options")
    allowed = OPTIONS.get(provider, ())
    for key, value in options.items():
        if key not in allowed:
            raise Refused(
                f"The {provider} provider takes no option {key!r}"
                + (f"; it takes {', '.join(allowed)}." if allowed else "."),
                field="provider_options",
            )
        if not isinstance(value, str) or not _OPTION_VALUE.fullmatch(value):
            raise Refused(
                f"Option {key} must be a name of letters, digits, '_', '.' and '-' (at most 64), "
                f"not {value!r}.",
                field="provider_options",
            )
    return dict(options)


# The providers sleep until what the database asks of them changes; this wakes them.
PROVIDER_CHANNEL = "simdeck_provider"


def wake_providers() -> None:
    """Tell the providers the wish changed. PostgreSQL delivers it at commit, and never for a rollback."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, '')", [PROVIDER_CHANNEL])


def check_start(group) -> None:
    """Refuse to start ``group`` when its provider cannot bring up any of its machines."""
    if group.provider not in settings.SIMDECK_PROVIDERS:
        raise Refused(
            f"Machine group {group.name} asks for the {group.provider} provider, which this server "
            f"is not configured for (it runs: {', '.join(settings.SIMDECK_PROVIDERS)}). An admin "
            f"adds it to SIMDECK_PROVIDERS (see docs/deploy.md), or create the group with another provider.",
            field="provider",
            code="provider_unavailable",
            status=409,
        )
    if check := START_CHECKS.get(group.provider):
        check(group)


def waiting_detail(machines) -> str | None:
    """What the starting machines of a group wait for, where their provider knows it."""
    queued = [m for m in machines if m.job_state == "PENDING"]
    if not queued:
        return None
    first = queued[0]
    reason = f" (Slurm's reason: {first.job_reason})" if first.job_reason else ""
    if len(queued) == 1:
        return f"Its pilot job {first.job_id} waits in Slurm's queue{reason}."
    return f"{len(queued)} pilot jobs wait in Slurm's queue; job {first.job_id}{reason}."
