"""Telling people that their tasks and groups ended, through Apprise URLs.

A user adds destinations (:class:`~tasks_app.models.NotificationRule`): an
Apprise URL (``mailtos://``, ``slack://``, ``matrix://``, ``msteams://``,
``json://`` for a webhook, …) and what to hear of. The lifecycle knows
nothing of them: the scheduler looks every few seconds at what ended since
its last look (:func:`due`) and queues one Celery message per delivery, which
tries again with a growing wait when the destination does not answer. So a
slow or dead destination never slows a task's end, and a destination whose
messages keep failing is marked failing and skipped, not tried for ever;
a successful test (:func:`send_test`) brings it back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket

import apprise
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tasks_app import access
from tasks_app.errors import Refused
from tasks_app.models import NotificationRule, Task
from tasks_app.statuses import FAILURES

log = logging.getLogger(__name__)

# A look leaves the last seconds for the next one: an ending is stamped just
# before its transaction commits, so the newest may not be visible yet.
SLACK = dt.timedelta(seconds=2)
# At most this many messages per destination and look; a burst is summed up.
BURST = 10
RULES_PER_USER = 20


class NotDelivered(Exception):
    """The destination did not take the message (Celery tries again)."""


def check_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise Refused(
            "Give the destination as an Apprise URL, e.g. json://hooks.example.org/simdeck.", field="url"
        )
    if len(url) > 2000 or apprise.Apprise.instantiate(url) is None:
        raise Refused(
            "This is not a destination Apprise can send to. Write it as an Apprise URL such as "
            "mailtos://user:password@example.org, slack://TokenA/TokenB/TokenC or "
            "json://hooks.example.org/path (see https://github.com/caronc/apprise/wiki).",
            field="url",
        )
    where = private_address(url)
    if where:
        raise Refused(
            f"This destination's host is at {where}, on this host or a private network. Simdeck does "
            "not send there, so that a destination cannot reach the platform's own services. Use a "
            "public address; an admin who wants destinations inside the network sets "
            "SIMDECK_NOTIFY_PRIVATE_HOSTS=true.",
            field="url",
        )
    return url


def private_address(url: str) -> str | None:
    """The address of the destination's host when it is not a public one (and such hosts are not allowed).

    Checked when a destination is added and again before each message: the
    name may point elsewhere by then.
    """
    if settings.SIMDECK_NOTIFY_PRIVATE_HOSTS:
        return None
    host = (getattr(apprise.Apprise.instantiate(url), "host", None) or "").strip("[]")
    if not host:
        return None
    try:
        found = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return None  # not a name here (a service's token), or unknown: delivery says so
    for *_, sockaddr in found:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if not address.is_global:
            return str(address)
    return None


def masked(url: str) -> str:
    """The URL to show back: its scheme and host, not the credentials and tokens it may carry."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split("?", 1)[0]
    return f"{scheme}://{host}/…"


def add_rule(user, *, label: str, url: str, project=None, tasks: str = "ended", groups_terminated=False):
    if tasks not in NotificationRule.Tasks.values:
        raise Refused(
            f"Choose which tasks to hear of: {', '.join(NotificationRule.Tasks.values)}.", field="tasks"
        )
    url = check_url(url)
    if project is not None:
        access.require(user, "view", project)
    if NotificationRule.objects.filter(user=user).count() >= RULES_PER_USER:
        raise Refused(f"You have {RULES_PER_USER} destinations already; remove one first.", field="url")
    return NotificationRule.objects.create(
        user=user,
        label=(label or "").strip()[:100] or masked(url),
        url=url,
        project=project,
        tasks=tasks,
        groups_terminated=bool(groups_terminated),
    )


def deliver(url: str, title: str, body: str) -> None:
    """Send one message now; raises :class:`NotDelivered` with Apprise's reason."""
    where = private_address(url)
    if where:
        raise NotDelivered(f"its host is now at {where}, on this host or a private network")
    sender = apprise.Apprise()
    if not sender.add(url):
        raise NotDelivered("the URL is no longer one Apprise can use")
    if not sender.notify(title=title, body=body):
        raise NotDelivered("the destination did not accept the message")


def send_test(rule: NotificationRule) -> str | None:
    """Send a test message at once; None when it arrived, else why not. A success clears failing."""
    try:
        deliver(rule.url, "Simdeck: a test", f"Notifications of {rule.label} reach this destination.")
    except NotDelivered as exc:
        NotificationRule.objects.filter(pk=rule.pk).update(last_error=f"Test: {exc}")
        return str(exc)
    NotificationRule.objects.filter(pk=rule.pk).update(failures=0, last_error="", last_sent_at=timezone.now())
    return None


def delivered(rule_id: int) -> None:
    NotificationRule.objects.filter(pk=rule_id).update(failures=0, last_error="", last_sent_at=timezone.now())


def undelivered(rule_id: int, reason: str) -> None:
    """Every try failed: count it against the destination."""
    rule = NotificationRule.objects.filter(pk=rule_id).first()
    if rule is not None:
        rule.failures += 1
        rule.last_error = f"{timezone.now():%Y-%m-%d %H:%M} UTC: {reason}"
        rule.save(update_fields=["failures", "last_error"])


def is_failing(rule: NotificationRule) -> bool:
    return rule.failures >= settings.SIMDECK_NOTIFY_FAILING_AFTER


def due(now: dt.datetime | None = None) -> list[tuple[int, str, str]]:
    """What to send for what ended since each destination's last look: (rule, title, body).

    Queries: one for the destinations and one to move their marks, then one
    or two per destination that wants something (its tasks, its groups). The
    marks move in the same transaction, so a look that fails is done again.
    """
    until = (now or timezone.now()) - SLACK
    messages = []
    with transaction.atomic():
        rules = NotificationRule.objects.select_for_update(skip_locked=True, of=("self",))
        rules = rules.select_related("user", "project")
        looked = list(rules.filter(checked_until__lt=until))
        NotificationRule.objects.filter(pk__in=[rule.pk for rule in looked]).update(checked_until=until)
        for rule in looked:
            if is_failing(rule) or not rule.user.is_active:
                continue
            messages += [(rule.pk, title, body) for title, body in _news(rule, rule.checked_until, until)]
    return messages


def _news(rule: NotificationRule, since: dt.datetime, until: dt.datetime) -> list[tuple[str, str]]:
    news = []
    scope = Q(project=rule.project) if rule.project_id else Q(owner=rule.user)
    if rule.tasks != NotificationRule.Tasks.NONE:
        ended = access.visible_tasks(rule.user).filter(scope, ended_at__gt=since, ended_at__lte=until)
        if rule.tasks == NotificationRule.Tasks.FAILED:
            ended = ended.filter(status__in=sorted(FAILURES))
        tasks = list(ended.select_related("machine_group").order_by("ended_at")[: BURST + 1])
        for task in tasks[:BURST]:
            news.append(_task_message(task))
        if len(tasks) > BURST:
            news.append(("Simdeck: more tasks ended", f"More than {BURST} tasks ended; see the console."))
    if rule.groups_terminated:
        groups = access.visible_groups(rule.user).filter(
            terminated_at__gt=since,
            terminated_at__lte=until,
            **({"project": rule.project} if rule.project_id else {"owner": rule.user}),
        )
        for group in groups.order_by("terminated_at")[:BURST]:
            news.append(
                (
                    f"Simdeck: machine group {group.name} terminated",
                    f"Machine group {group.name} ({group.machine_type}) was terminated: "
                    f"{group.termination_reason or 'no reason given'}.",
                )
            )
    return news


def _task_message(task: Task) -> tuple[str, str]:
    label = task.get_status_display()
    body = (
        f"Task {task.id} ({task.simulator}) on {task.machine_group.name} ended: {label}. "
        f"{task.guidance.what_happened}"
    )
    if task.error_detail:
        body += f" {task.error_detail[:500]}"
    return f"Simdeck: task {task.id} {label.lower()}", body
