"""Quotas: how many machines may run at once, how long groups and tasks may live, how much is stored.

Each user and each project has the four limits. A :class:`~tasks_app.models.Quota`
row sets them for one user or project (an empty field there means no limit);
without a row the site defaults apply (``SIMDECK_QUOTA_MAX_MACHINES``,
``SIMDECK_QUOTA_MAX_GROUP_TTL_MINUTES``, ``SIMDECK_QUOTA_MAX_TASK_TTL_SECONDS``,
``SIMDECK_QUOTA_MAX_STORAGE_GB``, unset meaning no limit). A request over any limit is refused with a message
naming the quota and by how much it is exceeded.

Machines "running" are those of started machine groups, counted as the
group's machine count (its maximum for an elastic group, which may grow to
it at any time), so a limit holds before the provider brings them up.

Storage counts the files uploaded to a project's storage and the stored
inputs and outputs of its tasks (a user's: those they uploaded and those of
their tasks). A machine always stores what a task made; past the limit, new
uploads and new tasks are refused until files are removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, Sum
from django.db.models.functions import Coalesce

from tasks_app.errors import Refused
from tasks_app.models import MachineGroup, Project, Quota, StoredFile, Task

GB = 1000**3


@dataclass(frozen=True)
class Limits:
    max_machines: int | None
    max_group_ttl_minutes: float | None
    max_task_ttl_seconds: int | None
    max_storage_gb: float | None = None


def site_defaults() -> Limits:
    return Limits(
        getattr(settings, "SIMDECK_QUOTA_MAX_MACHINES", None),
        getattr(settings, "SIMDECK_QUOTA_MAX_GROUP_TTL_MINUTES", None),
        getattr(settings, "SIMDECK_QUOTA_MAX_TASK_TTL_SECONDS", None),
        getattr(settings, "SIMDECK_QUOTA_MAX_STORAGE_GB", None),
    )


def _limits(row: Quota | None) -> Limits:
    if row is None:
        return site_defaults()
    return Limits(row.max_machines, row.max_group_ttl_minutes, row.max_task_ttl_seconds, row.max_storage_gb)


def for_user(user) -> Limits:
    return _limits(Quota.objects.filter(user=user).first())


def for_project(project: Project) -> Limits:
    return _limits(Quota.objects.filter(project=project).first())


def holders(user, project: Project) -> list[tuple[str, Limits]]:
    """Whose limits apply, named as a refusal names them (one query for both)."""
    rows = {(q.project_id, q.user_id): q for q in Quota.objects.filter(Q(project=project) | Q(user=user))}
    by_project = next((q for (p, _), q in rows.items() if p == project.pk), None)
    by_user = next((q for (_, u), q in rows.items() if u == user.pk), None)
    return [(f"Project {project.name!r}", _limits(by_project)), (f"User {user.username!r}", _limits(by_user))]


def _machines_of(group: MachineGroup) -> int:
    return group.max_machines if group.is_elastic else group.num_machines


def running_machines(**scope) -> int:
    """Machines counted against a quota: those of started groups matching ``scope``."""
    started = MachineGroup.objects.filter(state=MachineGroup.State.STARTED, **scope)
    fixed = started.filter(max_machines__isnull=True).aggregate(n=Coalesce(Sum("num_machines"), 0))["n"]
    elastic = started.filter(max_machines__isnull=False).aggregate(n=Coalesce(Sum("max_machines"), 0))["n"]
    return fixed + elastic


def check_start(group: MachineGroup) -> None:
    """Refuse to start ``group`` when its machines would exceed its project's or owner's quota.

    Call inside a transaction holding a lock on the project row, so two
    starts at once cannot both squeeze under the limit.
    """
    adding = _machines_of(group)
    scopes = {
        "Project": {"project_id": group.project_id},
        "User": {"owner_id": group.owner_id},
    }
    for who, limits in holders(group.owner, group.project):
        limit = limits.max_machines
        if limit is None:
            continue
        total = running_machines(**scopes[who.split()[0]]) + adding
        if total > limit:
            raise Refused(
                f"{who} may run at most {limit} machine{'s' if limit != 1 else ''} at once; "
                f"starting machine group {group.name} ({adding} machine{'s' if adding != 1 else ''}) "
                f"would bring it to {total} ({total - limit} over). Terminate a group or ask an "
                "administrator for a larger quota.",
                code="quota_exceeded",
                field="num_machines",
                status=403,
            )


def group_ttl(user, project: Project, minutes: float | None) -> float | None:
    """The machine group time to live to use: the requested one, or the quota's when none was asked."""
    return _time_to_live(
        holders(user, project),
        minutes,
        "max_group_ttl_minutes",
        lambda who, limit, asked: (
            f"{who} may keep a machine group for at most {limit:g} minutes; this group asks for "
            f"{asked:g} ({asked - limit:g} over). Give a shorter auto_terminate_minutes."
        ),
        field="auto_terminate_minutes",
    )


def task_ttl(user, project: Project, seconds: int | None, held: list | None = None) -> int | None:
    """The task time to live to use: the requested one, or the quota's when none was asked."""
    return _time_to_live(
        held or holders(user, project),
        seconds,
        "max_task_ttl_seconds",
        lambda who, limit, asked: (
            f"{who} may give a task at most {limit} s to live; this task asks for {asked} s "
            f"({asked - limit} s over). Give a shorter time_to_live."
        ),
        field="time_to_live",
    )


def _time_to_live(held: list, asked, limit_name: str, refusal: Callable, field: str):
    """``asked``, or the first quota's limit when nothing was asked; refused past any quota's limit."""
    for who, limits in held:
        limit = getattr(limits, limit_name)
        if limit is None:
            continue
        if asked is None:
            asked = limit
        elif asked > limit:
            raise Refused(refusal(who, limit, asked), code="quota_exceeded", field=field, status=403)
    return asked


def stored_bytes(**scope) -> int:
    """Bytes stored for ``scope`` (``project_id=`` or ``owner_id=``): uploads, tasks' inputs and outputs."""
    uploaded = StoredFile.objects.filter(**scope).aggregate(n=Coalesce(Sum("size"), 0))["n"]
    tasks = Task.objects.filter(**scope)
    inputs = tasks.exclude(input_path="").aggregate(n=Coalesce(Sum("input_size"), 0))["n"]
    outputs = tasks.exclude(output_path="").aggregate(n=Coalesce(Sum("output_size"), 0))["n"]
    return uploaded + inputs + outputs


def check_storage(
    user, project: Project, adding: int = 0, *, doing: str = "store more", held: list | None = None
) -> None:
    """Refuse when storing ``adding`` more bytes would take the project or the user past their limit.

    With ``adding`` 0 it refuses only what is over already (a new task,
    whose outputs are not known yet). ``held``: :func:`holders`, when the caller read them.
    """
    scopes = {"Project": {"project_id": project.pk}, "User": {"owner_id": user.pk}}
    for who, limits in held or holders(user, project):
        limit = limits.max_storage_gb
        if limit is None:
            continue
        used = stored_bytes(**scopes[who.split()[0]])
        total = used + adding
        if (adding and total > limit * GB) or (not adding and used >= limit * GB):
            raise Refused(
                f"{who} may store at most {limit:g} GB and stores {used / GB:.3g} GB; "
                f"{'that' if not adding else f'{adding / GB:.3g} GB more'} is over the limit, so "
                f"you cannot {doing}. Remove files you no longer need ('simdeck storage remove', or "
                "a task's stored files) or ask an administrator for a larger quota.",
                code="quota_exceeded",
                status=403,
            )


def report(limits: Limits, machines_in_use: int, stored: int | None = None) -> list[dict]:
    """The four limits with what is in use, in the shape of Inductiva's quota list.

    A limit on a count of machines is spent across every group (``global``);
    a time to live bounds each group or task on its own (``instance``), so it
    has nothing in use. ``max_allowed`` is None where there is no limit.
    """
    return [
        {
            "id": "max_machines",
            "label": "Machines running at once",
            "max_allowed": limits.max_machines,
            "in_use": machines_in_use,
            "unit": "machines",
            "scope": "global",
        },
        {
            "id": "max_group_ttl_minutes",
            "label": "Time to live of a machine group",
            "max_allowed": limits.max_group_ttl_minutes,
            "in_use": None,
            "unit": "minutes",
            "scope": "instance",
        },
        {
            "id": "max_task_ttl_seconds",
            "label": "Time to live of a task",
            "max_allowed": limits.max_task_ttl_seconds,
            "in_use": None,
            "unit": "seconds",
            "scope": "instance",
        },
        {
            "id": "max_storage_gb",
            "label": "Stored files",
            "max_allowed": limits.max_storage_gb,
            "in_use": None if stored is None else round(stored / GB, 9),
            "unit": "GB",
            "scope": "global",
        },
    ]
