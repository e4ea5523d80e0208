"""The overview, projects, the status reference and the account page."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tasks_app import access, lifecycle, services, task_counts
from tasks_app.forms import APIKeyForm
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Machine, MachineGroup, Membership, Task
from tasks_app.views import diagram
from tasks_app.views.groups import with_counts

CHART_HOURS = 24
CHART_W, CHART_H = 480, 120


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """What is going on now: counts, what runs, queues, failures, throughput, machines."""
    return render(request, "overview.html", overview_context(request.user))


def overview_context(user) -> dict:
    """What the overview shows ``user``; its live socket renders the same (``tasks_app.sockets.pages``)."""
    now = timezone.now()
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=CHART_HOURS - 1)
    tasks = access.visible_tasks(user)
    # Active tasks are few and indexed by status. Ended ones, of the last day
    # (the chart's hours), are read from the hourly summary the database keeps
    # (task_counts), which costs the same with a thousand of them or a million.
    ended = task_counts.ended_by_hour(
        start, None if user.is_staff else access.visible_projects(user).values("pk")
    )
    rows = tasks.filter(status__in=lifecycle.ACTIVE).values("status").annotate(n=Count("pk"))
    counts = {r["status"]: r["n"] for r in rows}
    for (_hour, status), n in ended.items():
        counts[status] = counts.get(status, 0) + n
    by_status = [
        {"status": s, "n": counts.get(s.value, 0), "active": s in lifecycle.ACTIVE}
        for s in Status
        if counts.get(s.value) or s in lifecycle.ACTIVE
    ]
    running = list(
        tasks.filter(status__in=lifecycle.ON_MACHINE)
        .select_related("machine_group", "owner", "machine")
        .order_by("preparing_at")[:10]
    )
    groups = list(
        with_counts(access.visible_groups(user).filter(state=MachineGroup.State.STARTED)).order_by("name")
    )
    failures = list(
        tasks.filter(status__in=lifecycle.FAILURES, ended_at__gte=now - dt.timedelta(days=7))
        .select_related("machine_group", "owner")
        .order_by("-ended_at")[:5]
    )
    busy = Task.objects.filter(machine=OuterRef("pk"), status__in=lifecycle.ON_MACHINE)
    machines = Machine.objects.filter(
        group__in=access.visible_groups(user), state=Machine.State.ONLINE
    ).aggregate(total=Count("pk"), busy=Count("pk", filter=Q(Exists(busy))))
    machines["idle"] = machines["total"] - machines["busy"]
    # The user's own latest tasks, whatever their status, in projects they are still in.
    recent = list(
        tasks.filter(owner=user).select_related("machine_group").order_by("-created_at", "-id")[:10]
    )
    return {
        "by_status": by_status,
        "recent": recent,
        "running": running,
        "groups": groups,
        "failures": failures,
        "machines": machines,
        "chart": _hourly_chart(ended, start),
    }


def _hourly_chart(ended: dict, start: dt.datetime) -> dict:
    """Tasks that ended in each of the 24 hours from ``start``, as bars for a small SVG.

    ``ended`` is :func:`task_counts.ended_by_hour` from ``start``.
    """
    per_hour: dict[dt.datetime, dict] = {}
    for (hour, status), n in ended.items():
        row = per_hour.setdefault(hour, {"n": 0, "ok": 0})
        row["n"] += n
        row["ok"] += n if status == Status.SUCCESS else 0
    top = max([r["n"] for r in per_hour.values()] or [0]) or 1
    slot = CHART_W / CHART_HOURS
    bars = []
    for i in range(CHART_HOURS):
        hour = start + dt.timedelta(hours=i)
        row = per_hour.get(hour, {"n": 0, "ok": 0})
        height = round(row["n"] / top * (CHART_H - 20))
        ok_height = round(row["ok"] / top * (CHART_H - 20))
        bars.append(
            {
                "x": round(i * slot + 1, 1),
                "w": round(slot - 2, 1),
                "y": CHART_H - 14 - height,
                "h": height,
                "ok_y": CHART_H - 14 - ok_height,
                "ok_h": ok_height,
                "n": row["n"],
                "ok": row["ok"],
                "hour": hour,
                "label": i % 6 == 0,
            }
        )
    return {"bars": bars, "top": top, "w": CHART_W, "h": CHART_H, "total": sum(b["n"] for b in bars)}


@login_required
@require_GET
def project_list(request: HttpRequest) -> HttpResponse:
    """The user's projects: tasks by status group, compute time used, and the user's role.

    The numbers come from the per-project summary the database keeps up to
    date (:mod:`tasks_app.task_counts`), never from counting the tasks.
    """
    role = Membership.objects.filter(project=OuterRef("pk"), user=request.user).values("role")[:1]
    projects = task_counts.project_totals(
        access.visible_projects(request.user).annotate(role=Subquery(role))
    ).order_by("name")
    return render(request, "projects.html", {"projects": projects})


@login_required
@require_GET
def status_reference(request: HttpRequest) -> HttpResponse:
    rows = [
        {
            "status": st,
            "guidance": lifecycle.GUIDANCE[st],
            "terminal": st in lifecycle.TERMINAL,
            "next": sorted(lifecycle.TRANSITIONS[st], key=list(Status).index),
        }
        for st in Status
    ]
    return render(request, "statuses.html", {"rows": rows, "diagram": diagram.build([])})


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    """The user's API keys (create one, its secret shown once; revoke one) and quotas."""
    form = APIKeyForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        key, secret = APIKey.issue(request.user, form.cleaned_data["name"])
        form = APIKeyForm()
    keys = request.user.api_keys.order_by("revoked_at", "-created_at")
    # The secret goes only into this one response, never into a message or the session.
    context = {"form": form, "keys": keys, "secret": secret, "quotas": services.quota_overview(request.user)}
    response = render(request, "account.html", context)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    key = get_object_or_404(APIKey, pk=key_id, user=request.user)
    if key.revoke():
        messages.success(request, f"Key “{key.name}” revoked; clients using it are refused from now on.")
    return redirect("account")


def home(request: HttpRequest) -> HttpResponse:
    return redirect("overview")
