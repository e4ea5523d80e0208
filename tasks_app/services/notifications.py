"""Telling people that their tasks, batches and groups ended and budgets ran low.

A user adds destinations (:class:`~tasks_app.models.NotificationRule`): an
Apprise URL (``mailtos://``, ``slack://``, ``matrix://``, ``msteams://``,
``json://`` for a webhook, …) or, where an admin set up a mail server
(``EMAIL_URL``), a plain e-mail address sent through Django's mail backend;
and what to hear of: tasks that end (or fail), batches whose tasks all ended
and machine groups left with nothing to run, terminated groups, budgets at
80 % and 100 %. The lifecycle knows
nothing of them: the scheduler looks every few seconds at what ended since
its last look (:func:`due`) and keeps a delivery row for each message, in
the transaction that moves the look's mark (:func:`queue`). It then hands
the rows that are due to a few sending threads (:func:`send_due`) and is
free at once; a delivery that fails is tried again with a growing wait
(:func:`attempt`). So a slow or dead destination never slows a task's end,
nor holds up the scheduler's other work or another destination's messages;
a scheduler stopped or killed midway loses no message; and a destination
whose messages keep failing is marked failing and skipped, not tried for
ever; a successful test (:func:`send_test`) brings it back.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.db.models import Count, Max, Q
from django.utils import timezone

from tasks_app import access
from tasks_app.errors import Refused
from tasks_app.models import Batch, Budget, Delivery, MachineGroup, Membership, NotificationRule, Task
from tasks_app.statuses import FAILURES, Status

log = logging.getLogger(__name__)

# A look leaves the last seconds for the next one: an ending is stamped just
# before its transaction commits, so the newest may not be visible yet.
SLACK = dt.timedelta(seconds=2)
# At most this many messages per destination and look; a burst is summed up.
BURST = 10
RULES_PER_USER = 20


class NotDelivered(Exception):
    """The destination did not take the message (Celery tries again)."""


def is_email(url: str) -> bool:
    """A plain e-mail address (no scheme): sent through the server's own mail backend."""
    return "://" not in url and "@" in url


def mail_configured() -> bool:
    """Whether an admin set up a mail server (``EMAIL_URL``) for plain e-mail addresses."""
    return bool(settings.EMAIL_URL)


def check_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise Refused(
            "Give the destination as an Apprise URL, e.g. json://hooks.example.org/simdeck"
            + (", or an e-mail address." if mail_configured() else "."),
            field="url",
        )
    if is_email(url):
        return _check_email(url)
    import apprise  # here: its plugins cost each process that never sends (a machine) about 4 MB

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


def _check_email(address: str) -> str:
    try:
        validate_email(address)
    except ValidationError:
        raise Refused(
            f"{address!r} is not an e-mail address; write one such as alice@example.org, "
            "or an Apprise URL such as json://hooks.example.org/path.",
            field="url",
        ) from None
    if not mail_configured():
        raise Refused(
            "This server has no mail server to send e-mail from (an admin sets EMAIL_URL). Give an "
            "Apprise URL that sends through your own mail account instead, such as "
            "mailtos://user:password@example.org?to=" + address + ".",
            field="url",
        )
    return address


def private_address(url: str) -> str | None:
    """The address of the destination's host when it is not a public one (and such hosts are not allowed).

    Checked when a destination is added and again before each message: the
    name may point elsewhere by then.
    """
    if settings.SIMDECK_NOTIFY_PRIVATE_HOSTS or is_email(url):
        return None  # e-mail goes to the mail server the admin chose
    import apprise

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
    if is_email(url):
        return url  # the user's own address, nothing secret in it
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split("?", 1)[0]
    return f"{scheme}://{host}/…"


def add_rule(
    user,
    *,
    label: str,
    url: str,
    project=None,
    tasks: str = "ended",
    groups_terminated=False,
    batches=False,
    budgets=False,
):
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
        batches=bool(batches),
        budgets=bool(budgets),
    )


def deliver(url: str, title: str, body: str) -> None:
    """Send one message now; raises :class:`NotDelivered` with Apprise's (or the mail server's) reason."""
    if is_email(url):
        return _mail(url, title, body)
    where = private_address(url)
    if where:
        raise NotDelivered(f"its host is now at {where}, on this host or a private network")
    import apprise

    sender = apprise.Apprise()
    if not sender.add(url):
        raise NotDelivered("the URL is no longer one Apprise can use")
    if not sender.notify(title=title, body=body):
        raise NotDelivered("the destination did not accept the message")


def _mail(address: str, title: str, body: str) -> None:
    if not mail_configured():
        raise NotDelivered("this server no longer has a mail server to send e-mail from")
    from django.core.mail import send_mail

    try:
        send_mail(title, body, None, [address])
    except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
        raise NotDelivered(f"the mail server did not take it ({exc})") from None


def send_test(rule: NotificationRule) -> str | None:
    """Send a test message at once; None when it arrived, else why not. A success clears failing.

    Each user may send ``SIMDECK_NOTIFY_TESTS_PER_HOUR`` tests an hour: a
    test goes wherever its URL says, so without a limit anyone with an
    account could make the server send mail or posts at will.
    """
    _count_test(rule.user)
    try:
        deliver(rule.url, "Simdeck: a test", f"Notifications of {rule.label} reach this destination.")
    except NotDelivered as exc:
        NotificationRule.objects.filter(pk=rule.pk).update(last_error=f"Test: {exc}")
        return str(exc)
    NotificationRule.objects.filter(pk=rule.pk).update(failures=0, last_error="", last_sent_at=timezone.now())
    return None


def _count_test(user) -> None:
    """Count one test of ``user``'s, refused past the hour's allowance (in the shared cache)."""
    # The account's creation time tells apart users that reuse an id (a database made anew).
    key = f"notify-tests:{user.pk}:{user.date_joined.timestamp():.6f}"
    cache.add(key, 0, timeout=3600)
    try:
        sent = cache.incr(key)
    except ValueError:  # expired between the two calls: a new hour
        cache.add(key, 1, timeout=3600)
        sent = 1
    limit = settings.SIMDECK_NOTIFY_TESTS_PER_HOUR
    if sent > limit:
        raise Refused(
            f"You sent {limit} test messages within the hour, the most allowed; "
            "try again later (each destination is tried anyway when something ends).",
            code="too_many_tests",
            status=429,
        )


# Deliveries under way at once in the process that sends them (the scheduler's).
SENDERS = 4
_senders: ThreadPoolExecutor | None = None
# A delivery handed to the sending threads is tried again after this long,
# should its sender die with its process: longer than it can wait for a
# thread and be tried (see UNDER_WAY; Apprise gives up on a silent server
# within seconds, the mail backend after EMAIL_TIMEOUT).
HELD = dt.timedelta(minutes=5)
# At most this many deliveries are under way or waiting for a thread: the
# rest wait in the database, however many a dead destination piled up.
UNDER_WAY = SENDERS * 4
_under_way: set[Future] = set()


def queue(now: dt.datetime | None = None) -> int:
    """Keep a delivery for each message :func:`due` finds; returns how many.

    In the transaction that moves the destinations' marks: what a look
    found is either kept to be sent or looked at again, never lost.
    """
    with transaction.atomic():
        messages = due(now)
        Delivery.objects.bulk_create(Delivery(rule_id=r, title=t, body=b) for r, t, b in messages)
    return len(messages)


def send_due(now: dt.datetime | None = None) -> list[Future]:
    """Hand the deliveries that are due to the sending threads; returns at once.

    Each is pushed ``HELD`` ahead while its thread tries it (see :func:`attempt`),
    so two schedulers never send it at once and one whose sender died is
    tried again later. A message may then arrive twice, never not at all.
    """
    now = now or timezone.now()
    _under_way.difference_update([f for f in _under_way if f.done()])
    room = UNDER_WAY - len(_under_way)
    if room <= 0:
        return []
    with transaction.atomic():
        held = Delivery.objects.select_for_update(skip_locked=True).filter(due_at__lte=now)
        taken = list(held.order_by("due_at")[:room])
        Delivery.objects.filter(pk__in=[d.pk for d in taken]).update(due_at=now + HELD)
    handed = [send_soon(delivery) for delivery in taken]
    _under_way.update(handed)
    return handed


def send_soon(delivery: Delivery) -> Future:
    """Try one delivery on one of the sending threads; returns at once (see :func:`attempt`)."""
    global _senders
    if _senders is None:  # made in the process that sends, after any fork
        _senders = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="notify")
    return _senders.submit(_attempt_on_thread, delivery)


def _attempt_on_thread(delivery: Delivery) -> bool:
    try:
        return attempt(delivery)
    except Exception:
        log.exception("A notification could not be sent")
        return False
    finally:
        connection.close()  # the thread's own connection, not kept between deliveries


def attempt(delivery: Delivery) -> bool:
    """Try one delivery now; on failure set its next try, or count it once the last one failed."""
    rule = NotificationRule.objects.filter(pk=delivery.rule_id).only("url").first()
    if rule is None:
        return False  # the destination was removed meanwhile, and its deliveries with it
    kept = Delivery.objects.filter(pk=delivery.pk)
    try:
        deliver(rule.url, delivery.title, delivery.body)
    except NotDelivered as exc:
        if delivery.attempt > settings.SIMDECK_NOTIFY_RETRIES:
            kept.delete()
            undelivered(rule.pk, str(exc))
        else:
            wait = min(3600.0, settings.SIMDECK_NOTIFY_RETRY_SECONDS * 2 ** (delivery.attempt - 1))
            kept.update(attempt=delivery.attempt + 1, due_at=timezone.now() + dt.timedelta(seconds=wait))
        return False
    kept.delete()
    delivered(rule.pk)
    return True


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

    Queries: one for the destinations and one to move their marks, then a
    few per destination that wants something (its tasks, batches, groups). The
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
    if rule.batches:
        news += _batches_ended(rule, scope, since, until)
    if rule.budgets:
        news += _budgets_reached(rule, since, until)
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


def _counted(query):
    """Each batch or group with how many tasks it has, how many have not ended, succeeded, failed,
    and when its last task ended."""
    return query.annotate(
        total=Count("tasks"),
        open=Count("tasks", filter=Q(tasks__ended_at__isnull=True)),
        last_ended=Max("tasks__ended_at"),
        succeeded=Count("tasks", filter=Q(tasks__status=Status.SUCCESS)),
        failed=Count("tasks", filter=Q(tasks__status__in=sorted(FAILURES))),
    )


def _tally(found) -> str:
    other = found.total - found.succeeded - found.failed
    return f"{found.succeeded} succeeded, {found.failed} failed" + (f", {other} otherwise" if other else "")


def _batches_ended(rule: NotificationRule, scope: Q, since: dt.datetime, until: dt.datetime):
    """Batches whose last task ended in this look, and groups that were left with no task to run.

    A batch is told once it is closed (it takes no more tasks) and none of
    its tasks runs: when its last task ends, or when it closes after that
    (a sweep given up on, see services.close_silent_sweeps). Each is told
    in the look that holds that moment, and in no other: a look sees tasks
    that ended after its window (in its slack), which the next look holds.
    One query for what ended or closed in the look, then one per kind when
    anything did.
    """
    news = []
    # Whose: the project's batches and groups, or the user's own (a group of theirs
    # counts whoever's task ended last in it).
    mine = {"project": rule.project} if rule.project_id else {"owner": rule.user}
    if not rule.project_id:
        scope |= Q(machine_group__owner=rule.user)
    ended = access.visible_tasks(rule.user).filter(scope, ended_at__gt=since, ended_at__lte=until)
    seen = list(ended.values_list("batch_id", "machine_group_id").distinct()[: BURST * 10])
    closed = Batch.objects.filter(
        closed_at__gt=since, closed_at__lte=until, project__in=access.visible_projects(rule.user), **mine
    )
    batch_ids = {b for b, _ in seen if b} | set(closed.values_list("pk", flat=True)[: BURST * 10])
    group_ids = {g for _, g in seen}
    whole_batches = {}
    if batch_ids:
        batches = Batch.objects.filter(pk__in=batch_ids, **mine).select_related("machine_group")
        for batch in _counted(batches.order_by("created_at")):
            if batch.open or (batch.closed_at is None and batch.total < batch.size):
                continue
            if not since < max(filter(None, (batch.last_ended, batch.closed_at))) <= until:
                continue  # the look that holds its end tells it
            whole_batches[batch.machine_group_id] = batch.total
            news.append(
                (
                    f"Simdeck: batch {batch.id} ended",
                    f"All {batch.total} tasks of batch {batch.id} on {batch.machine_group.name} ended: "
                    f"{_tally(batch)}.",
                )
            )
    groups = access.visible_groups(rule.user).filter(pk__in=group_ids, **mine)
    for group in _counted(groups.order_by("name")) if group_ids else []:
        if group.open or whole_batches.get(group.pk) == group.total or group.last_ended > until:
            continue  # still busy, or it ran one batch alone (told above), or the next look tells it
        news.append(
            (
                f"Simdeck: machine group {group.name} has no task left",
                f"All {group.total} tasks of machine group {group.name} ended: {_tally(group)}."
                + (
                    " Its machines idle until it is terminated or its idle time runs out."
                    if group.state == MachineGroup.State.STARTED
                    else ""
                ),
            )
        )
    return news[:BURST]


def _budgets_reached(rule: NotificationRule, since: dt.datetime, until: dt.datetime):
    """Budgets of the rule's project (or of every project the user is in) that reached 80 % or 100 %."""
    if rule.project_id:
        projects = access.visible_projects(rule.user).filter(pk=rule.project_id).values("pk")
    else:
        projects = Membership.objects.filter(user=rule.user).values("project_id")
    found = Budget.objects.filter(
        project__in=projects,
        alert_at__gt=since,
        alert_at__lte=until,
        alert_level__in=["warning", "exhausted"],
    ).select_related("project")
    news = []
    for budget in found.order_by("project__name")[:BURST]:
        if budget.alert_level == "exhausted":
            title = f"Simdeck: project {budget.project.name} used up its monthly budget"
            then = "New tasks of the project are refused until the month ends or the budget is raised."
        else:
            title = f"Simdeck: project {budget.project.name} used 80 % of its monthly budget"
            then = "New tasks will be refused at 100 %."
        news.append((title, f"{budget.alert_summary} {then}"))
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
