"""Facts every console page may show."""

from __future__ import annotations

from django.conf import settings


def sandbox(request) -> dict:
    """Admins see on every page that simulations run without a sandbox, if an admin turned it off."""
    user = getattr(request, "user", None)
    return {"sandbox_off": not settings.SIMDECK_SANDBOX and bool(user and user.is_staff)}


def budget_banner(request) -> dict:
    """Members of a project past 80 % of its monthly budget see so on every page.

    Read from the level kept on each budget (services.budgets.record_levels):
    one query, and only when a page shows it (a partial never asks).
    """
    from tasks_app.services import budgets

    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"budget_banner": ()}
    found = None

    def banner():
        nonlocal found
        if found is None:
            found = budgets.banner(user)
        return found

    return {"budget_banner": banner}
