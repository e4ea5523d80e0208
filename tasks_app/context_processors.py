"""Facts every console page may show."""

from __future__ import annotations

from django.conf import settings


def sandbox(request) -> dict:
    """Admins see on every page that simulations run without a sandbox, if an admin turned it off."""
    user = getattr(request, "user", None)
    return {"sandbox_off": not settings.SIMDECK_SANDBOX and bool(user and user.is_staff)}
