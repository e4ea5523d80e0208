"""Hosts that joined with a token, and the machines of ``hosts`` groups they run.

An admin issues a join token (console or ``manage.py jointoken``); on
another host, ``simdeck-machine join URL --token …`` asks the server for
work. When a started ``hosts`` group wants more machines than it has, the
asking host gets one: a machine row of that group with a token of its own,
which is all the host holds from then on. The machine talks to the server's
machine interface with it (:mod:`tasks_app.api.machines`) until its group
ends, it is revoked, or the host stops; then the host asks again.

There is no provider process: a machine comes to be when a host asks, goes
online when it says so, and is found lost by the reaper when its heartbeat
stops (``housekeeping.reap_lost_machines``). :func:`settle` ends the
termination of groups whose machines are all gone.
"""

from __future__ import annotations

import logging
import secrets

from django.db import transaction
from django.utils import timezone

from tasks_app import broker, inputs
from tasks_app.errors import Refused
from tasks_app.lifecycle import ON_MACHINE
from tasks_app.models import APIKey, JoinToken, Machine, MachineGroup, Task
from tasks_app.services.groups import machines_wanted
from tasks_app.services.machines import machine_lost

log = logging.getLogger(__name__)

LIVE = [Machine.State.PROVISIONING, Machine.State.ONLINE, Machine.State.STOPPING]


def issue_token(name: str, created_by=None) -> tuple[JoinToken, str]:
    """A join token named ``name`` (unique); returns it with its secret, shown once."""
    name = (name or "").strip()
    if problem := inputs.text_problem(name) or (None if name else "it is empty"):
        raise Refused(f"A join token needs a name of its own: {problem}.", field="name")
    if len(name) > 100:
        raise Refused("A join token's name is at most 100 characters.", field="name")
    if JoinToken.objects.filter(name=name).exists():
        raise Refused(
            f"A join token named {name!r} exists already; choose another name.", field="name", status=409
        )
    return JoinToken.issue(name, created_by=created_by)


def find_token(secret: str) -> JoinToken | None:
    """The join token ``secret`` is, if it was not revoked."""
    if not secret.startswith(JoinToken.PREFIX):
        return None
    return JoinToken.objects.filter(digest=APIKey.hash(secret), revoked_at__isnull=True).first()


def revoke_token(token: JoinToken) -> int:
    """Revoke a join token: its host takes no more machines, and those it runs are lost now.

    Their tasks end as on any lost machine (requeued where the task asked
    for it). Returns how many machines were running.
    """
    JoinToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    machines = list(Machine.objects.filter(join_token=token, state__in=LIVE).select_related("group"))
    for machine in machines:
        machine_lost(machine, f"Machine {machine.name} stopped: the join token {token.name!r} was revoked.")
    return len(machines)


def revoke_machine(machine: Machine, actor=None) -> bool:
    """Revoke one machine's token: it stops at its next request, its task ends as on a lost machine."""
    if machine.state not in LIVE:
        return False
    who = f" by {actor.username}" if actor is not None else ""
    machine_lost(machine, f"Machine {machine.name} stopped: its token was revoked{who}.")
    return True


def machine_for_token(secret: str) -> Machine | None:
    """The live machine ``secret`` belongs to, with its group; None once it stopped or was revoked."""
    if not secret.startswith(Machine.PREFIX):
        return None
    machine = (
        Machine.objects.select_related("group", "join_token")
        .filter(token_digest=APIKey.hash(secret), state__in=LIVE)
        .first()
    )
    if machine is None or (machine.join_token and machine.join_token.revoked_at):
        return None
    return machine


def take_machine(token: JoinToken, hostname: str, simulators: dict[str, str]) -> tuple[Machine, str] | None:
    """A machine for the host that asks with ``token``, if a started ``hosts`` group wants one.

    Groups are served in the order they started; each is locked while its
    machines are counted, so two hosts asking at once never overfill it.
    A group whose tasks need a simulator the host lacks still takes it: the
    machine says which simulators it has, and claims only tasks of those
    where the group is elastic (as on any provider). Returns the machine
    and its token, or None when no group wants one.
    """
    JoinToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now(), hostname=hostname[:255])
    with transaction.atomic():
        groups = (
            MachineGroup.objects.select_for_update(skip_locked=True)
            .filter(provider="hosts", state=MachineGroup.State.STARTED)
            .order_by("started_at", "pk")
        )
        for group in groups:
            live = group.machines.filter(state__in=[Machine.State.PROVISIONING, Machine.State.ONLINE]).count()
            if live >= machines_wanted(group):
                continue
            machine = Machine(
                group=group,
                name=f"{group.name}-{secrets.token_hex(3)}",
                hostname=hostname[:255],
                join_token=token,
                simulators=simulators,
            )
            secret = machine.issue_token()
            machine.save()
            log.info("Host %s (token %s) takes machine %s", hostname, token.name, machine.name)
            return machine, secret
    return None


def unneeded(machine: Machine) -> bool:
    """Whether an idle machine of an elastic group should stop because the group shrinks; it then stops."""
    group = machine.group
    if not group.is_elastic:
        return False
    online = group.machines.filter(state=Machine.State.ONLINE).count()
    if (
        online <= machines_wanted(group)
        or Task.objects.filter(machine=machine, status__in=ON_MACHINE).exists()
    ):
        return False
    stopping = Machine.objects.filter(pk=machine.pk, state=Machine.State.ONLINE)
    return bool(stopping.update(state=Machine.State.STOPPING))


def settle() -> list[str]:
    """End the termination of ``hosts`` groups that have no machine left; their queues are emptied."""
    done = []
    terminating = MachineGroup.objects.filter(provider="hosts", state=MachineGroup.State.TERMINATING)
    for group in terminating.exclude(machines__state__in=LIVE):
        if MachineGroup.objects.filter(pk=group.pk, state=MachineGroup.State.TERMINATING).update(
            state=MachineGroup.State.TERMINATED
        ):
            broker.purge_tokens(group)
            done.append(group.name)
    return done


def check_start(group: MachineGroup) -> None:
    """A ``hosts`` group starts only where a host can join: some join token was issued and not revoked."""
    if not JoinToken.objects.filter(revoked_at__isnull=True).exists():
        raise Refused(
            f"Machine group {group.name} runs on joined hosts, and no host can join: no join token is "
            "active. An admin issues one ('manage.py jointoken issue NAME' or the console's Hosts page) "
            "and runs 'simdeck-machine join URL --token …' on the host.",
            field="provider",
            code="provider_unavailable",
            status=409,
        )
