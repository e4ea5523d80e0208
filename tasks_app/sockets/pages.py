"""Pages that list many tasks follow them live: the tasks table, the overview, a group's page.

Each page opens one WebSocket (htmx's ``ws`` extension) and gets rendered
fragments that replace parts of it by id. Status change events only wake a
page's consumer up; what it sends is read again from the database through
``tasks_app.access``, so a page never learns of a task its user may not see,
and an event lost on the way (a full channel, a Redis hiccup) costs nothing:
the next refresh reads every change since the last one.

Refreshes are coalesced: at most one per page every ``REFRESH_SECONDS``,
however many tasks changed meanwhile, so a burst of a thousand status
changes costs each open page one or two renders, not a thousand. Pages also
refresh every ``IDLE_REFRESH_SECONDS`` when nothing happened (ages, groups
started meanwhile).

Which events wake which page:

* the table and the overview: the project groups of the user's projects
  (staff, who see every task: ``tasks.all``);
* a machine group's page: that group (status changes and queue moves).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.db.models import Q
from django.http import Http404, QueryDict
from django.template.loader import render_to_string
from django.utils import timezone

from tasks_app import access, live, statuses
from tasks_app.forms import TaskFilterForm
from tasks_app.sockets.consumers import CLOSE_NOT_FOUND, CLOSE_UNEXPECTED, LiveSocket
from tasks_app.views import table
from tasks_app.views.groups import group_context
from tasks_app.views.pages import overview_context

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
IDLE_REFRESH_SECONDS = 30.0
# A change is looked for this long before the previous refresh too: a status
# change is stamped before its transaction commits, so it may become visible
# slightly after its own timestamp.
SLACK = dt.timedelta(seconds=5)
# At most this many changed tasks are looked at per refresh of the table.
CHANGED_SHOWN = 500
# A user in more projects than this gets the wake-ups of the first ones only
# (the idle refresh still catches the rest).
MAX_PROJECT_GROUPS = 500


class _PageSocket(LiveSocket):
    """Join the groups that wake this page, refresh it at most once a second."""

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.params = {k: v[-1] for k, v in parse_qs(self.scope["query_string"].decode()).items()}
        if not self.user or not self.user.is_authenticated or not await database_sync_to_async(self.setup)():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await self.accept()
        self.groups_joined = await database_sync_to_async(self.wake_groups)()
        for name in self.groups_joined:
            await self.channel_layer.group_add(name, self.channel_name)
        self.changed = asyncio.Event()
        self.refresher = asyncio.create_task(self.refresh_loop())

    async def disconnect(self, code) -> None:
        refresher = getattr(self, "refresher", None)
        if refresher:
            refresher.cancel()
        for name in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(name, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        await self.close(code=CLOSE_UNEXPECTED, reason="This socket only sends; do not write to it.")

    # Events: each only marks the page as changed.

    async def task_changed(self, event: dict) -> None:
        self.changed.set()

    async def queue_moved(self, event: dict) -> None:
        self.changed.set()

    async def task_progress(self, event: dict) -> None:
        self.changed.set()

    async def resources_sampled(self, event: dict) -> None:
        pass  # figures of one task: its own page shows them

    async def refresh_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.changed.wait(), IDLE_REFRESH_SECONDS)
            except TimeoutError:
                pass
            self.changed.clear()
            try:
                html = await database_sync_to_async(self.render)()
            except Exception:  # one failed refresh must not end the page's updates
                log.exception("Could not refresh a live page")
                html = ""
            if html:
                await self.send(html)
            # Whatever changes during this pause is picked up by the next refresh.
            await asyncio.sleep(REFRESH_SECONDS)

    # What each page does.

    def setup(self) -> bool:
        """Check access and remember what the page shows; False refuses the socket."""
        raise NotImplementedError

    def wake_groups(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        raise NotImplementedError


def _scope_groups(user) -> list[str]:
    """The groups carrying the status changes of every task ``user`` may see."""
    if user.is_staff:
        return [live.ALL_TASKS_GROUP]
    projects = access.visible_projects(user).values_list("pk", flat=True)[:MAX_PROJECT_GROUPS]
    return [live.project_group(pk) for pk in projects]


class TaskTableConsumer(_PageSocket):
    """The tasks table with the filter and page in the query string (``rendered``: when, epoch seconds).

    Rows on the page whose task changed get their status and duration cells
    replaced; tasks that changed into the filter, or were submitted into
    it, are counted in a "N new tasks – show" link that reloads the table.
    """

    def setup(self) -> bool:
        query = QueryDict(self.scope["query_string"], mutable=True)
        rendered_at = query.pop("rendered", [""])[-1]
        self.form = TaskFilterForm(query)
        if not self.form.is_valid():
            return False
        self.query = query.copy()
        for name in ("after", "clear"):
            self.query.pop(name, None)
        now = timezone.now()
        try:
            rendered = dt.datetime.fromtimestamp(float(rendered_at), dt.UTC)
        except (ValueError, OverflowError, OSError):
            rendered = now
        self.since = self.rendered = min(max(rendered, now - dt.timedelta(minutes=5)), now)
        page = table.paginate(
            self.visible(), self.form.cleaned_data["sort"], self.params.get("after", ""), size=None
        )
        # What the page shows, and as of which change; tasks newer than the page are not on it.
        self.shown = {t.pk: _shown_as(t) for t in page.rows if t.created_at <= self.since}
        self.counted: set[str] = set()
        return True

    def visible(self):
        tasks = access.visible_tasks(self.user).select_related("machine_group", "project", "owner")
        return table.filtered(tasks, self.form)

    def wake_groups(self) -> list[str]:
        return _scope_groups(self.user)

    def render(self) -> str:
        now = timezone.now()
        since, self.since = self.since - SLACK, now
        changed = list(
            access.visible_tasks(self.user)
            .filter(Q(status_changed_at__gte=since) | Q(created_at__gte=since))
            .order_by("-status_changed_at")[:CHANGED_SHOWN]
        )
        # Progress moves without a status change: the rows on the page still computing, by key.
        progressing = access.visible_tasks(self.user).filter(
            pk__in=list(self.shown), status__in=sorted(statuses.COMPUTING), progress__isnull=False
        )
        parts = []
        for task in [*changed, *progressing]:
            if task.pk in self.shown and self.shown[task.pk] != _shown_as(task):
                self.shown[task.pk] = _shown_as(task)
                context = {"task": task, "oob": True}
                parts.append(render_to_string("tasks/task_list.html#status_cell", context))
                parts.append(render_to_string("tasks/task_list.html#duration_cell", context))
        # New to this view: submitted since the page was rendered or, when the view
        # filters by status, changed into it (not merely changed on a later page).
        by_status = self.form.statuses() is not None
        fresh = [
            t.pk
            for t in changed
            if t.pk not in self.shown
            and t.pk not in self.counted
            and (by_status or t.created_at > self.rendered)
        ]
        if fresh:
            entered = set(self.visible().filter(pk__in=fresh).values_list("pk", flat=True))
            if entered:
                self.counted |= entered
                parts.append(
                    render_to_string(
                        "tasks/task_list.html#news",
                        {"new_count": len(self.counted), "query": self.query.urlencode(), "oob": True},
                    )
                )
        return "".join(parts)


def _shown_as(task) -> tuple:
    """What a row of the table shows that may change while it is on the page."""
    return task.status_changed_at, task.progress_percent, task.eta


class OverviewConsumer(_PageSocket):
    """The overview's counts, queues, running tasks, failures and machines."""

    def setup(self) -> bool:
        return True

    def wake_groups(self) -> list[str]:
        return _scope_groups(self.user)

    def render(self) -> str:
        return render_to_string("overview.html#live", overview_context(self.user) | {"oob": True})


class GroupPageConsumer(_PageSocket):
    """A machine group's counts, machines, queue, running and recently ended tasks."""

    def setup(self) -> bool:
        try:
            self.group = access.group_for(self.user, self.scope["url_route"]["kwargs"]["ref"])
        except Http404:
            return False
        return True

    def wake_groups(self) -> list[str]:
        return [live.machine_group_group(self.group.pk)]

    def render(self) -> str:
        self.group.refresh_from_db()
        context = group_context(self.group, self.user) | {"oob": True}
        return (
            render_to_string("groups/group_detail.html#live", context)
            + render_to_string("groups/group_detail.html#queue_counts", context)
            + f'<span id="group-online" hx-swap-oob="true">{int(context["counts"]["online"])}</span>'
        )
