"""A user's notification destinations: add one, send it a test, remove it.

Each user sees and changes only their own (anyone else's answers 404).
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from tasks_app import access
from tasks_app.models import NotificationRule
from tasks_app.services import Refused, notifications


@login_required
@require_http_methods(["GET", "POST"])
def notification_rules(request: HttpRequest) -> HttpResponse:
    """The user's destinations with their state; POST adds one."""
    error, status = "", 200
    if request.method == "POST":
        data = request.POST
        try:
            project = None
            if data.get("project"):
                project = access.project_for(request.user, data["project"])
            rule = notifications.add_rule(
                request.user,
                label=data.get("label", ""),
                url=data.get("url", ""),
                project=project,
                tasks=data.get("tasks", "ended"),
                groups_terminated=bool(data.get("groups_terminated")),
                batches=bool(data.get("batches")),
                budgets=bool(data.get("budgets")),
            )
        except Refused as exc:
            error, status = str(exc), 400
        else:
            messages.success(request, f"Added {rule.label}. Send it a test to check that messages arrive.")
            return redirect("notification-rules")
    rules = list(request.user.notification_rules.select_related("project").order_by("created_at"))
    for rule in rules:
        rule.shown_url = notifications.masked(rule.url)
        rule.failing = notifications.is_failing(rule)
    context = {
        "rules": rules,
        "projects": access.visible_projects(request.user).order_by("name").values_list("name", flat=True),
        "task_choices": NotificationRule.Tasks.choices,
        "error": error,
        "mail": notifications.mail_configured(),
        "posted": request.POST if error else {},
    }
    return render(request, "notifications.html", context, status=status)


@login_required
@require_POST
def notification_test(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(NotificationRule, pk=rule_id, user=request.user)
    try:
        problem = notifications.send_test(rule)
    except Refused as exc:
        messages.error(request, str(exc))
        return redirect("notification-rules")
    if problem:
        messages.error(request, f"The test to {rule.label} did not arrive: {problem}.")
    else:
        messages.success(request, f"A test was delivered to {rule.label}.")
    return redirect("notification-rules")


@login_required
@require_POST
def notification_delete(request: HttpRequest, rule_id: int) -> HttpResponse:
    rule = get_object_or_404(NotificationRule, pk=rule_id, user=request.user)
    rule.delete()
    messages.success(request, f"Removed {rule.label}.")
    return redirect("notification-rules")
