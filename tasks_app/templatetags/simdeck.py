"""Small display helpers for the console's templates."""

import datetime as dt

from django import template
from django.utils import timezone

register = template.Library()


@register.filter
def duration(value) -> str:
    """A timedelta as '2h 03m', '4m 05s' or '12s'."""
    if value is None:
        return "—"
    seconds = int(value.total_seconds()) if isinstance(value, dt.timedelta) else int(value)
    h, rem = divmod(max(seconds, 0), 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{s}s"


@register.simple_tag
def since(start, end=None) -> str:
    if start is None:
        return "—"
    return duration((end or timezone.now()) - start)


@register.filter
def filesize(value) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


# Badge tone and a glyph for each status, so status never relies on colour alone.
_TONES = {
    "pending-input": ("waiting", "…"),
    "submitted": ("waiting", "◷"),
    "preparing-to-compute": ("running", "▸"),
    "started": ("running", "▶"),
    "finalizing": ("running", "⇪"),
    "pending-kill": ("stopping", "■"),
    "success": ("success", "✓"),
    "failed": ("failure", "✗"),
}


@register.inclusion_tag("tasks/_badge.html")
def status_badge(status: str, label: str):
    tone, glyph = _TONES.get(status, ("ended", "⊘"))
    return {"tone": tone, "glyph": glyph, "label": label, "status": status}
