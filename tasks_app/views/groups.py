"""Machine group pages: the list, a new group, one group, start and terminate."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Case, Func, IntegerField, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tasks_app import access, lifecycle, services
from tasks_app import simulators as sims
from tasks_app.forms import GroupForm, add_refusal
from tasks_app.lifecycle import Status
from tasks_app.models import Machine, MachineGroup, Task
from tasks_app.views.common import page_or_partial, wants_partial

QUEUE_SHOWN = 50
RUNNING_SHOWN = 50
ENDED_SHOWN = 20
ALIVE = [Machine.State.PROVISIONING, Machine.State.ONLINE, Machine.State.STOPPING]


def _count(queryset) -> Subquery:
    """A correlated COUNT(*) of ``queryset`` (already filtered by its group), as a column."""
    # Func rather than Count: an aggregate would add a GROUP BY and count per row.
    # COUNT(*) needs no column, so a partial index alone can answer it.
    counted = (
        queryset.order_by().annotate(n=Func(template="COUNT(*)", output_field=IntegerField())).values("n")
    )
    return Coalesce(Subquery(counted[:1], output_field=IntegerField()), 0)


def with_counts(groups):
    """Groups with their online machines, queued and running tasks.

    One subquery per count rather than joins: a join of machines and tasks
    would multiply rows, and each count here is answered from an index. A
    terminated group has none of them (its termination ended its tasks and
    stopped its machines), so it is not counted: a lab's list of groups
    grows by the hundreds over months, and the page's cost grows only with
    the groups still up.
    """
    tasks = Task.objects.filter(machine_group=OuterRef("pk"))

    def unless_terminated(count):
        return Case(When(state=MachineGroup.State.TERMINATED, then=Value(0)), default=count)

    return groups.annotate(
        online=unless_terminated(
            _count(Machine.objects.filter(group=OuterRef("pk"), state=Machine.State.ONLINE))
        ),
        queued=unless_terminated(_count(tasks.filter(status=Status.SUBMITTED))),
        # In the order of the partial index's own list: the same list lets the
        # planner answer from the index alone, without visiting the tasks.
        running=unless_terminated(_count(tasks.filter(status__in=sorted(lifecycle.ON_MACHINE)))),
    )


@login_required
@require_http_methods(["GET", "POST"])
def group_list(request: HttpRequest) -> HttpResponse:
    """Every group, with a form for a new one that checks like the API does."""
    form = GroupForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                with transaction.atomic():  # a start refused by a quota leaves no group behind
                    group = services.create_group(request.user, **form.service_arguments())
                    if form.cleaned_data["start"]:
                        services.start_group(group)
            except services.Refused as exc:
                add_refusal(form, exc)
                # A role or a quota that refuses is not a typing mistake: say so in the status too.
                status = exc.status if exc.status in (403, 404) else 422
            else:
                messages.success(request, f"Machine group {group.name} created.")
                return redirect("group-detail", ref=group.name)
        status = status if status != 200 else 422
    groups = with_counts(access.visible_groups(request.user).select_related("project")).order_by(
        "-created_at"
    )
    context = {"groups": groups, "form": form, "now": timezone.now()}
    return page_or_partial(request, "groups/group_list.html", "create", context, status=status)


@login_required
@require_GET
def group_detail(request: HttpRequest, ref: str) -> HttpResponse:
    group = access.group_for(request.user, ref)
    context = group_context(group, request.user) | {
        "activities": list(group.activities.order_by("-at")[:10]),
        "can_manage": access.can(request.user, "manage", group),
    }
    if not wants_partial(request):  # the machines partial shows no usage
        context["usage"] = services.group_usage(group)
    return page_or_partial(request, "groups/group_detail.html", "machines", context)


def group_context(group, user) -> dict:
    """The group's machines, queue, running and ended tasks; its live socket renders them too.

    Only the tasks ``user`` may see are listed or counted: a task is filed in
    its group's project, yet staff may see a group whose tasks came from
    elsewhere before that rule held.
    """
    tasks = access.visible_tasks(user).filter(machine_group=group)
    current = tasks.filter(machine=OuterRef("pk"), status__in=lifecycle.ON_MACHINE)
    machines = list(
        group.machines.annotate(current_task=Subquery(current.values("id")[:1])).order_by("-created_at")[:100]
    )
    for m in machines:
        # "GROMACS 2022.5", by the names people know them by.
        m.simulator_list = [
            f"{sims.REGISTRY[name].label if name in sims.REGISTRY else name} {version}"
            for name, version in sorted(m.simulators.items())
        ]
    queue = list(tasks.queued_in(group.pk).select_related("owner").order_by("queued_at", "id")[:QUEUE_SHOWN])
    running = list(
        tasks.filter(status__in=lifecycle.ON_MACHINE)
        .select_related("owner", "machine")
        .order_by("preparing_at")[:RUNNING_SHOWN]
    )
    ended = list(
        tasks.filter(status__in=lifecycle.TERMINAL)
        .select_related("owner")
        .order_by("-ended_at")[:ENDED_SHOWN]
    )
    queued = len(queue) if len(queue) < QUEUE_SHOWN else tasks.queued_in(group.pk).count()
    online = sum(m.state == Machine.State.ONLINE for m in machines)
    running_count = (
        len(running)
        if len(running) < RUNNING_SHOWN
        else tasks.filter(status__in=lifecycle.ON_MACHINE).count()
    )
    counts = {"online": online, "queued": queued, "running": running_count}
    return {
        "group": group,
        "machines": machines,
        "queue": queue,
        "running": running,
        "ended": ended,
        "counts": counts,
        "now": timezone.now(),
    }


@login_required
@require_POST
def group_start(request: HttpRequest, ref: str) -> HttpResponse:
    group = access.group_for(request.user, ref)
    access.require(request.user, "manage", group)
    try:
        services.start_group(group)
    except services.Refused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Machine group {group.name} is starting its machines.")
    return redirect("group-detail", ref=group.name)


@login_required
@require_http_methods(["GET", "POST"])
def group_terminate(request: HttpRequest, ref: str) -> HttpResponse:
    """GET: what terminating would do, to confirm. POST: do it."""
    group = access.group_for(request.user, ref)
    access.require(request.user, "manage", group)
    if request.method == "POST":
        if group.is_accepting_tasks:
            services.terminate_group(
                group, actor=request.user, reason=f"Terminated by {request.user.username}."
            )
            messages.success(request, f"Machine group {group.name} is terminating.")
        return redirect("group-detail", ref=group.name)
    queued = group.tasks.filter(status__in=[Status.PENDING_INPUT, Status.SUBMITTED]).count()
    running = group.tasks.filter(status__in=[Status.PREPARING, Status.STARTED, Status.PENDING_KILL]).count()
    finalizing = group.tasks.filter(status=Status.FINALIZING).count()
    context = {"group": group, "queued": queued, "running": running, "finalizing": finalizing}
    return render(request, "groups/group_terminate.html", context)
