"""The Hosts page: staff issue join tokens, see the hosts that joined and their machines, revoke them."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from tasks_app.errors import Refused
from tasks_app.forms import JoinTokenForm
from tasks_app.models import JoinToken, Machine
from tasks_app.services import hosts


def _staff_only(request: HttpRequest) -> None:
    if not request.user.is_staff:
        # Who can join machines to the platform is the operators' business.
        raise Http404("No such page.")


@login_required
def host_list(request: HttpRequest) -> HttpResponse:
    """Join tokens, newest first, each with the machines its host runs now (three queries)."""
    _staff_only(request)
    form = JoinTokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        try:
            _, secret = hosts.issue_token(form.cleaned_data["name"], created_by=request.user)
            form = JoinTokenForm()
        except Refused as exc:
            form.add_error("name", str(exc))
    running = Machine.objects.filter(state__in=hosts.LIVE).select_related("group").order_by("name")
    tokens = JoinToken.objects.order_by("revoked_at", "-created_at").prefetch_related(
        Prefetch("machines", queryset=running, to_attr="running")
    )
    context = {
        "form": form,
        "tokens": tokens,
        "secret": secret,
        # The command a host runs; the token itself goes in an environment variable, out of `ps`.
        "server_url": request.build_absolute_uri("/").rstrip("/"),
        "hosts_enabled": "hosts" in settings.SIMDECK_PROVIDERS,
    }
    response = render(request, "hosts.html", context)
    response["Cache-Control"] = "no-store"  # the new token is in this one response only
    return response


@login_required
@require_POST
def join_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    _staff_only(request)
    token = get_object_or_404(JoinToken, pk=token_id)
    if token.revoked_at is None:
        stopped = hosts.revoke_token(token)
        messages.success(
            request, f"Join token “{token.name}” revoked; {stopped} machine(s) of its host stopped."
        )
    return redirect("host-list")


@login_required
@require_POST
def host_machine_revoke(request: HttpRequest, machine_id: int) -> HttpResponse:
    _staff_only(request)
    machine = get_object_or_404(
        Machine.objects.select_related("group"), pk=machine_id, join_token__isnull=False
    )
    if hosts.revoke_machine(machine, actor=request.user):
        messages.success(
            request, f"Machine {machine.name}'s token revoked; it stops, and its host may take another."
        )
    return redirect("host-list")
