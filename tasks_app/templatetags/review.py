"""Template helpers for comments and the audit trail."""

from __future__ import annotations

import json

from django import template

from tasks_app.markup import render_markdown

register = template.Library()


@register.filter
def markdown(text: str):
    """A comment's Markdown as sanitized HTML."""
    return render_markdown(text)


def _shown(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


@register.filter
def changes(data) -> list[tuple[str, str, str]]:
    """An audited change as ``(what, before, after)`` rows: one per changed key of a dict."""
    if not isinstance(data, dict) or "before" not in data:
        return []
    before, after = data.get("before"), data.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        return [(k, _shown(before.get(k)), _shown(after.get(k))) for k in keys]
    return [("", _shown(before), _shown(after))]
