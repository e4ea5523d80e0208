"""A project's members (who is in the team, with which role) and its usage.

Every member sees the list and the usage; maintainers (and staff) add
people, change roles and remove people. Each change is audited (see
:mod:`tasks_app.teams`).
"""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from tasks_app import access, audit, quotas, services, teams
from tasks_app.forms import MemberForm, RoleForm, add_refusal
from tasks_app.models import Activity, Budget, Role
from tasks_app.services import Refused, budgets

CHANGES_SHOWN = 20


@login_required
@require_http_methods(["GET", "POST"])
def project_members(request: HttpRequest, ref: str) -> HttpResponse:
    """The member list; POST adds someone (maintainers only)."""
    project = access.project_for(request.user, ref)
    can_manage = access.can(request.user, "manage-members", project)
    form = MemberForm(request.POST or None)
    status = 200
    if request.method == "POST":
        access.require(request.user, "manage-members", project)
        if form.is_valid():
            try:
                teams.add_member(
                    project, form.cleaned_data["username"], form.cleaned_data["role"], actor=request.user
                )
            except Refused as exc:
                add_refusal(form, exc)
            else:
                messages.success(request, f"{form.cleaned_data['username']} is now in {project.name}.")
                return redirect("project-members", ref=project.name)
        status = 422
    changes = (
        Activity.objects.filter(project=project, kind__in=audit.MEMBERSHIP_KINDS)
        .select_related("actor")
        .order_by("-at", "-id")[:CHANGES_SHOWN]
    )
    context = {
        "project": project,
        "members": teams.members(project),
        "roles": Role.choices,
        "my_role": access.role_in(request.user, project),
        "can_manage": can_manage,
        "form": form,
        "changes": changes,
        "project_quota": quotas.for_project(project),
        "running_machines": quotas.running_machines(project_id=project.pk),
        "stored_gb": quotas.stored_bytes(project_id=project.pk) / quotas.GB,
    }
    return render(request, "projects/members.html", context, status=status)


@login_required
@require_POST
def project_member(request: HttpRequest, ref: str, username: str) -> HttpResponse:
    """Change one member's role, or with ``remove`` take them out (maintainers only)."""
    project = access.project_for(request.user, ref)
    access.require(request.user, "manage-members", project)
    try:
        user = teams.find_user(username)
        if request.POST.get("remove"):
            teams.remove_member(project, user, actor=request.user)
            messages.success(request, f"{username} was removed from {project.name}.")
        else:
            form = RoleForm(request.POST)
            if not form.is_valid():
                raise Refused("Choose a role: viewer, member or maintainer.", field="role")
            teams.change_role(project, user, form.cleaned_data["role"], actor=request.user)
            messages.success(request, f"{username} is now {form.cleaned_data['role']} of {project.name}.")
    except Refused as exc:
        messages.error(request, str(exc))
    # Someone who just removed themselves can no longer see the project.
    if access.visible_projects(request.user).filter(pk=project.pk).exists():
        return redirect("project-members", ref=project.name)
    return redirect("project-list")


# The usage chart's drawing box, in SVG units; bars fill the width, one a day.
CHART_W, CHART_H = 620, 160


@login_required
@require_GET
def project_usage(request: HttpRequest, ref: str) -> HttpResponse:
    """A month of the project's use: core-hours a day as a chart, by user, machines, costs and its budget."""
    project = access.project_for(request.user, ref)
    return _usage_page(request, project, request.GET.get("month", ""))


@login_required
@require_POST
def project_budget(request: HttpRequest, ref: str) -> HttpResponse:
    """Set or (with ``remove``) remove the project's monthly budget; maintainers only."""
    project = access.project_for(request.user, ref)
    access.require(request.user, "manage-budget", project)
    try:
        if request.POST.get("remove"):
            budgets.remove_budget(request.user, project)
            messages.success(request, f"{project.name} no longer has a monthly budget.")
        else:
            kind, limit = request.POST.get("kind", ""), request.POST.get("monthly_limit", "")
            budgets.set_budget(request.user, project, kind, limit)
            messages.success(request, f"The monthly budget of {project.name} is now {limit.strip()} {kind}.")
    except Refused as exc:
        return _usage_page(request, project, "", budget_error=str(exc), status=400)
    return redirect("project-usage", ref=project.name)


def _usage_page(request, project, month: str, *, budget_error: str = "", status: int = 200) -> HttpResponse:
    try:
        start, end = services.month_bounds(month)
    except Refused as exc:
        return render(request, "projects/usage.html", {"project": project, "error": str(exc)}, status=400)
    report = services.report([project.pk], start, end)
    budget = budgets.states([project.pk])
    context = {
        "project": project,
        "month": start,
        "previous": f"{start - dt.timedelta(days=1):%Y-%m}",
        "next": f"{end:%Y-%m}",
        "figures": report.as_dict({project.pk: project.name}),
        "chart": usage_chart(report, start, end),
        "w": CHART_W,
        "h": CHART_H,
        "budget": budget[0] if budget else None,
        "budget_kinds": Budget.Kind.choices,
        "can_budget": access.can(request.user, "manage-budget", project),
        "budget_error": budget_error,
    }
    # The form shows what was sent when it was refused, else the budget in force.
    current = budget[0].budget if budget else None
    context["form_limit"] = (
        request.POST.get("monthly_limit", "")
        if budget_error
        else current.monthly_limit.normalize()
        if current
        else ""
    )
    context["form_kind"] = request.POST.get("kind", "") if budget_error else current.kind if current else ""
    return render(request, "projects/usage.html", context, status=status)


def usage_chart(report, start: dt.datetime, end: dt.datetime) -> list[dict]:
    """One bar a day of the month: its core-hours, as SVG rectangles (no inline style for the CSP)."""
    days = (end - start).days
    hours = [report.days[d].core_seconds / 3600 if d in report.days else 0.0 for d in _dates(start, days)]
    top = max(hours, default=0.0) or 1.0
    width = CHART_W / days
    bars = []
    for i, (day, value) in enumerate(zip(_dates(start, days), hours, strict=True)):
        height = CHART_H * value / top
        bars.append(
            {
                "x": round(i * width + 1, 2),
                "y": round(CHART_H - height, 2),
                "w": round(max(width - 2, 1), 2),
                "h": round(height, 2),
                "day": day,
                "core_hours": value,
            }
        )
    return bars


def _dates(start: dt.datetime, days: int) -> list[dt.date]:
    return [start.date() + dt.timedelta(days=i) for i in range(days)]
