"""Small display helpers for the console's templates."""

import datetime as dt
import math

from django import template
from django.utils import timezone

from tasks_app import inputs
from tasks_app.services import previews
from tasks_app.statuses import TONES, Status

register = template.Library()


@register.filter
def duration(value) -> str:
    """A timedelta as '2h 03m', '4m 05s' or '12s'."""
    if value is None:
        return "—"
    exact = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    if 0 < exact < 0.1:
        return "<0.1s"
    if 0 < exact < 10 and exact != int(exact):
        # Short phases are common (a queue with a free machine); "0s" would hide them.
        return f"{exact:.1f}s"
    seconds = int(exact)
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


@register.inclusion_tag("tasks/_badge.html")
def status_badge(status: str, label: str = ""):
    tone, glyph = TONES.get(status, ("ended", "⊘"))
    if not label:
        try:
            label = Status(status).label
        except ValueError:
            label = status
    return {"tone": tone, "glyph": glyph, "label": label, "status": status}


@register.filter
def previewable(path: str) -> bool:
    """Whether the console can show a look at this file (tasks_app.services.previews)."""
    return previews.kind(path) is not None


@register.inclusion_tag("tasks/_progress.html")
def task_progress(task, compact: bool = False):
    """A computing task's progress bar and, when its pace is steady, its estimated end."""
    return {"task": task, "percent": task.progress_percent, "eta": task.eta, "compact": compact}


@register.inclusion_tag("_diagram.html")
def lifecycle_diagram(diagram, caption: str = ""):
    """The lifecycle as an SVG; see :mod:`tasks_app.views.diagram`."""
    return {"d": diagram, "caption": caption}


@register.filter
def get_item(mapping, key):
    """``mapping[key]`` in a template, or None."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.simple_tag(takes_context=True)
def query(context, **changes) -> str:
    """The current query string with ``changes`` applied (None or "" removes a key)."""
    params = context["request"].GET.copy()
    if "after" not in changes:
        params.pop("after", None)  # another filter or order starts again at the top
    for key, value in changes.items():
        params.pop(key, None)
        if value not in (None, ""):
            params[key] = value
    encoded = params.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.filter
def age(value) -> str:
    """How long ago ``value`` was, short: '12s ago'."""
    if value is None:
        return "never"
    return f"{duration(timezone.now() - value)} ago"


@register.simple_tag
def time_left(group) -> str:
    """How long a started group has before its time to live ends it."""
    minutes = group.auto_terminate_minutes
    if not minutes or not group.started_at:
        return "no limit"
    # In seconds as numbers: a limit past what a date can hold (a group made
    # before limits were checked) shows as no limit instead of failing the page.
    left = minutes * 60 - (timezone.now() - group.started_at).total_seconds()
    if not math.isfinite(left) or left > inputs.YEAR_MINUTES * 60:
        return "no limit"
    return duration(max(left, 0))
