"""The health page: staff see what runs and whether what the platform depends on answers."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from tasks_app import health as checks


@login_required
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    """Processes with their restarts, the services, the live machines; 503 when something is down."""
    if not request.user.is_staff:
        # Process ids, log paths and service addresses are for operators only.
        raise Http404("No such page.")
    report = checks.report()
    # A monitor polling the page tells "something is down" from the status alone.
    return render(request, "health.html", {"report": report}, status=200 if report.ok else 503)
