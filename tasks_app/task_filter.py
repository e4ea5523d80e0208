"""Which tasks a list shows: one filter for the API's task list and the console's table.

Each door reads the filter its own way (the API's query parameters, the
table's form in the URL) and says what is wrong in its own words; what a
filter then keeps is decided here, once, so both show the same tasks for
the same question.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Q, QuerySet

from tasks_app.statuses import Status

# Task ids are made of these, in the order every collation sorts them.
ID_ORDER = "0123456789abcdefghijklmnopqrstuvwxyz"


def id_prefix(prefix: str) -> Q:
    """Tasks whose id starts with ``prefix``, found as a range of the primary key.

    ``LIKE 'prefix%'`` would need an index of its own (``varchar_pattern_ops``)
    under most collations, one more entry to write at every status move. Ids
    are lowercase letters and digits, which sort alike in every collation,
    so the ids with a prefix are those from it up to the next prefix.
    """
    if any(c not in ID_ORDER for c in prefix):
        return Q(pk__in=[])
    found = Q(id__gte=prefix, id__startswith=prefix)
    stem = prefix.rstrip(ID_ORDER[-1])
    if stem:
        found &= Q(id__lt=stem[:-1] + ID_ORDER[ID_ORDER.index(stem[-1]) + 1])
    return found


@dataclass(frozen=True)
class TaskFilter:
    """What to keep; an empty field keeps everything."""

    statuses: frozenset[Status] | None = None
    ids: tuple[str, ...] = ()
    id_prefix: str = ""
    project: str = ""
    simulator: str = ""
    machine_group: str = ""
    owner: str = ""
    review: str = ""
    # Pairs a task's metadata must all hold.
    metadata: tuple[tuple[str, str], ...] = ()
    created_from: dt.datetime | None = None
    created_before: dt.datetime | None = None

    def apply(self, tasks: QuerySet) -> QuerySet:
        """``tasks`` narrowed to those the filter keeps."""
        if self.statuses is not None:
            tasks = tasks.filter(status__in=sorted(s.value for s in self.statuses))
        if self.ids:
            tasks = tasks.filter(id__in=self.ids)
        if self.id_prefix:
            tasks = tasks.filter(id_prefix(self.id_prefix))
        if self.project:
            tasks = tasks.filter(project__name=self.project)
        if self.simulator:
            tasks = tasks.filter(simulator=self.simulator.lower())
        if self.machine_group:
            tasks = tasks.filter(machine_group__name=self.machine_group)
        if self.owner:
            tasks = tasks.filter(owner__username=self.owner)
        if self.review:
            tasks = tasks.filter(review_state=self.review)
        for key, value in self.metadata:
            # Containment uses the GIN index on metadata.
            tasks = tasks.filter(metadata__contains={key: value})
        if self.created_from:
            tasks = tasks.filter(created_at__gte=self.created_from)
        if self.created_before:
            tasks = tasks.filter(created_at__lt=self.created_before)
        return tasks
