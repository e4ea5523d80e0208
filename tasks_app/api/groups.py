"""Machine groups: create, start, look up and terminate pools of machines."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router
from ninja.responses import Status as Reply

from tasks_app import access, inputs, services
from tasks_app.api import schemas as s
from tasks_app.api.common import ERRORS, links

router = Router(tags=["machine groups"])


def _groups(user):
    return access.visible_groups(user).select_related("project").prefetch_related("machines")


@router.get("", response={200: list[s.GroupOut], **ERRORS})
def list_groups(
    request: HttpRequest, include_terminated: bool = False, project: str | None = None, mine: bool = False
):
    """Machine groups of your projects, newest first; terminated ones only when asked.

    ``mine`` keeps only the groups you created.
    """
    qs = _groups(request.user).order_by("-created_at")
    if mine:
        qs = qs.filter(owner=request.user)
    if not include_terminated:
        qs = qs.exclude(state="terminated")
    if project:
        qs = qs.filter(project__name=inputs.text("project", project))
    return list(qs)


@router.post(
    "",
    response={201: s.GroupOut, **ERRORS},
    openapi_extra=links(
        201,
        {"ref": "$response.body#/name"},
        "groups.get_group",
        "groups.start_group",
        "groups.terminate_group",
    ),
)
def create_group(request: HttpRequest, payload: s.GroupIn):
    """Create a machine group; with ``start`` its machines come up right away.

    Give ``min_machines`` and ``max_machines`` for an elastic group. Creating
    a group in a project needs the maintainer role there (your personal
    project by default); quotas limit its time to live and, on start, the
    machines running at once.
    """
    data = payload.dict()
    start = data.pop("start")
    with transaction.atomic():  # a start refused by a quota leaves no group behind
        group = services.create_group(request.user, **data)
        if start:
            services.start_group(group)
    return Reply(201, _groups(request.user).get(pk=group.pk))


@router.get("/{ref}", response={200: s.GroupOut, **ERRORS})
def get_group(request: HttpRequest, ref: str):
    """A machine group by name or id."""
    return _groups(request.user).get(pk=access.group_for(request.user, ref).pk)


@router.post("/{ref}/start", response={200: s.GroupOut, **ERRORS})
def start_group(request: HttpRequest, ref: str):
    """Bring the group's machines up, within your and the project's machine quota."""
    group = access.group_for(request.user, ref)
    access.require(request.user, "manage", group)
    services.start_group(group)
    return _groups(request.user).get(pk=group.pk)


@router.post("/{ref}/terminate", response={200: s.GroupOut, **ERRORS})
def terminate_group(request: HttpRequest, ref: str):
    """Take the group down: queued tasks end as zombies, running ones are stopped."""
    group = access.group_for(request.user, ref)
    access.require(request.user, "manage", group)
    services.terminate_group(group, actor=request.user, reason=f"Terminated by {request.user.username}.")
    return _groups(request.user).get(pk=group.pk)


@router.post("/{ref}/machines/{machine}/reclaim", response={200: s.GroupOut, **ERRORS})
def reclaim_machine(request: HttpRequest, ref: str, machine: str):
    """Reclaim one spot machine, as a cloud provider would (rehearsals).

    Its task becomes *Spot Reclaimed* and goes back to the front of the queue
    when it was submitted with resubmission on; the group gets a replacement.
    """
    group = access.group_for(request.user, ref)
    access.require(request.user, "manage", group)
    target = get_object_or_404(group.machines.select_related("group"), name=inputs.text("machine", machine))
    services.reclaim_machine(
        target, actor=request.user, reason=f"Spot machine {machine} was reclaimed by {request.user.username}."
    )
    return _groups(request.user).get(pk=group.pk)


@router.get("/{ref}/usage", response={200: s.GroupUsageOut, **ERRORS})
def group_usage(request: HttpRequest, ref: str):
    """The group's machine-hours so far (idle included), their cost, and what it costs an hour."""
    return services.group_usage(access.group_for(request.user, ref))
