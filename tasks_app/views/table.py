"""The tasks table: filters from the query string, sorting, keyset pagination.

Pagination never uses OFFSET and never counts the whole table: a page is
"the next N rows after this one" in the sort order, found through an index
whatever page it is, so page 20,000 of a million tasks costs what page 1
costs. The cursor is the sort key of the last row shown, opaque in the URL.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils.dateparse import parse_datetime

from tasks_app.forms import TaskFilterForm
from tasks_app.models import Comment

PAGE_SIZE = 50

# Sort key in the URL -> (leading column, descending?). Every order ends in
# (created_at, id) in the same direction, which makes it total and stable.
ORDERS: dict[str, tuple[str | None, bool]] = {
    "-created": (None, True),
    "created": (None, False),
    "status": ("status", False),
    "-status": ("status", True),
    "simulator": ("simulator", False),
    "-simulator": ("simulator", True),
}


def filtered(tasks: QuerySet, form: TaskFilterForm) -> QuerySet:
    """``tasks`` narrowed by a valid filter form."""
    return form.task_filter().apply(tasks)


def with_comment_counts(tasks: QuerySet) -> QuerySet:
    """Each task with ``comment_count``: a subquery per row on the (task, created_at) index."""
    counts = (
        Comment.objects.filter(task=OuterRef("pk"))
        .order_by()
        .values("task")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return tasks.annotate(comment_count=Coalesce(Subquery(counts), 0))


def _encode(values: list) -> str:
    raw = json.dumps(values, default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> list | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(values, list) or len(values) not in (2, 3):
        return None
    return values


@dataclass
class Page:
    rows: list
    next_cursor: str | None
    is_first: bool


def paginate(tasks: QuerySet, sort: str, cursor: str = "", size: int | None = None) -> Page:
    """One page of ``tasks`` in ``sort`` order, after ``cursor`` (a previous page's end)."""
    size = size or PAGE_SIZE
    column, desc = ORDERS.get(sort, ORDERS["-created"])
    keys = [c for c in (column, "created_at", "id") if c]
    sign = "-" if desc else ""
    tasks = tasks.order_by(*(sign + k for k in keys))
    after = _decode(cursor) if cursor else None
    if after is not None and len(after) == len(keys):
        when = parse_datetime(str(after[-2]))
        if when is not None:
            after[-2] = when
            tasks = tasks.filter(_after(keys, after, desc))
    # The page's keys first, then its rows whole: a filter that matches thousands of
    # tasks (a metadata value, found through the GIN index in no useful order) sorts
    # only their keys, and the joins and per-row subqueries run for this page alone.
    rows = list(tasks.filter(pk__in=tasks.values("pk")[: size + 1]))
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = None
    if more:
        last = rows[-1]
        next_cursor = _encode([getattr(last, k) for k in keys])
    return Page(rows=rows, next_cursor=next_cursor, is_first=after is None)


def _after(keys: list[str], values: list, desc: bool) -> Q:
    """Rows strictly after ``values`` in the order of ``keys``: a row comparison, spelled out."""
    op = "lt" if desc else "gt"
    condition = Q()
    for i, key in enumerate(keys):
        step = Q(**{f"{key}__{op}": values[i]})
        for prev, value in zip(keys[:i], values[:i], strict=True):
            step &= Q(**{prev: value})
        condition |= step
    # The same bound on the leading key alone, implied by the OR above: PostgreSQL
    # cannot start an index scan from an OR, so without it a deep page reads
    # (and throws away) every row before the cursor.
    return Q(**{f"{keys[0]}__{op}e": values[0]}) & condition
