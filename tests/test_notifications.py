"""Notifications through Apprise URLs, delivered to a real HTTP endpoint the test runs.

Nothing is faked: Apprise posts JSON (``json://``) to a small server on this
host, or fails to reach a port nobody listens on.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
from concurrent.futures import Future

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from tasks_app import services, teams
from tasks_app.errors import Refused
from tasks_app.lifecycle import Status
from tasks_app.models import NotificationRule
from tasks_app.services import notifications
from tests.test_console_pages import HAPPY, make_task


class Endpoint:
    """An HTTP server in a thread that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


def dead_url() -> str:
    """A json:// URL of a port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"json://127.0.0.1:{port}/hook"


@pytest.fixture(autouse=True)
def _endpoints_on_this_host(settings):
    """The tests' endpoints listen on this host, which destinations may not name by default."""
    settings.SIMDECK_NOTIFY_PRIVATE_HOSTS = True


# -- destinations ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_destination_on_this_host_or_a_private_network_is_refused(logged_in, settings, endpoint):
    """Otherwise any user could make the scheduler post to the platform's own services."""
    settings.SIMDECK_NOTIFY_PRIVATE_HOSTS = False
    url = reverse("notification-rules")
    for inside in [endpoint.url, "json://10.1.2.3/hook", "json://[::1]:9/x", "json://localhost:6379/x"]:
        answer = logged_in.post(url, {"url": inside, "tasks": "ended"})
        assert answer.status_code == 400, inside
        assert "private network" in answer.content.decode()
    assert not NotificationRule.objects.exists()
    # A name that pointed elsewhere when it was added is checked again before each message.
    with pytest.raises(notifications.NotDelivered, match="private network"):
        notifications.deliver(endpoint.url, "title", "body")
    assert endpoint.received == []


@pytest.mark.django_db
def test_a_malformed_url_is_refused_with_a_clear_message(logged_in, alice):
    url = reverse("notification-rules")
    for bad in ["", "not a url", "nosuchscheme://example.org", "mailto://"]:
        answer = logged_in.post(url, {"url": bad, "tasks": "ended"})
        assert answer.status_code == 400, bad
        assert "Apprise URL" in answer.content.decode()
    assert logged_in.post(url, {"url": "json://example.org/x", "tasks": "often"}).status_code == 400
    assert not NotificationRule.objects.exists()
    assert (
        logged_in.post(url, {"url": "json://user:secret@example.org/x", "tasks": "failed"}).status_code == 302
    )
    page = logged_in.get(url).content.decode()
    assert "json://example.org/…" in page and "secret" not in page, "credentials are not shown back"


@pytest.mark.django_db
def test_the_test_button_delivers_or_says_why_not_and_is_the_owners_alone(client, alice, bob, endpoint):
    live = notifications.add_rule(alice, label="hook", url=endpoint.url)
    dead = notifications.add_rule(alice, label="dead", url=dead_url())
    client.force_login(bob)
    assert client.post(reverse("notification-test", args=[live.pk])).status_code == 404
    assert client.post(reverse("notification-delete", args=[live.pk])).status_code == 404
    client.force_login(alice)
    client.post(reverse("notification-test", args=[live.pk]))
    assert endpoint.received and endpoint.received[0]["title"] == "Simdeck: a test"
    answer = client.post(reverse("notification-test", args=[dead.pk]), follow=True).content.decode()
    assert "did not arrive" in answer and "did not accept" in answer
    NotificationRule.objects.filter(pk=dead.pk).update(failures=99)
    client.post(reverse("notification-test", args=[live.pk]))
    assert NotificationRule.objects.get(pk=dead.pk).failures == 99, "only a test of its own clears it"


@pytest.mark.django_db
def test_tests_are_limited_to_a_few_an_hour_and_the_limit_is_said(api, client, alice, settings, endpoint):
    settings.SIMDECK_NOTIFY_TESTS_PER_HOUR = 2
    rule = notifications.add_rule(alice, label="hook", url=endpoint.url)
    assert notifications.send_test(rule) is None and notifications.send_test(rule) is None
    with pytest.raises(Refused) as refused:
        notifications.send_test(rule)
    assert refused.value.status == 429 and "2 test messages within the hour" in str(refused.value)
    client.force_login(alice)
    page = client.post(reverse("notification-test", args=[rule.pk]), follow=True).content.decode()
    assert "2 test messages within the hour" in page
    answer = api.post(f"/api/v1/notifications/{rule.pk}/test")
    assert answer.status_code == 429 and answer.json()["error"] == "too_many_tests"
    assert len(endpoint.received) == 2, "nothing was sent past the limit"


@pytest.mark.django_db
def test_what_ended_is_told_once_to_who_may_see_it(alice, bob, group, no_broker):
    teams.add_member(group.project, "bob", "viewer", actor=alice)
    start = timezone.now() - dt.timedelta(minutes=10)
    mine = notifications.add_rule(alice, label="mine", url="json://example.org/a", tasks="failed")
    team = notifications.add_rule(bob, label="team", url="json://example.org/b", project=group.project)
    NotificationRule.objects.update(checked_until=start)
    ok = make_task(alice, group, to=HAPPY)
    failed = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    due = notifications.due()
    titles = {rule: [t for r, t, _ in due if r == rule] for rule in (mine.pk, team.pk)}
    assert titles[mine.pk] == [f"Simdeck: task {failed.id} failed"], "failures only"
    assert titles[team.pk] == [f"Simdeck: task {ok.id} success", f"Simdeck: task {failed.id} failed"]
    assert notifications.due() == [], "told once"
    teams.remove_member(group.project, bob, actor=alice)
    later = make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])
    NotificationRule.objects.update(checked_until=start)
    rules = [r for r, _, _ in notifications.due()]
    assert team.pk not in rules, "no longer in the project: nothing of it"
    assert rules.count(mine.pk) == 2, f"both failures, {later.id} too"


def tried_to_the_end(rule, title: str, body: str) -> list[float]:
    """A message to ``rule`` tried at once, each try after the last, until it is done with; the waits set."""
    from tasks_app.models import Delivery

    delivery = Delivery.objects.create(rule=rule, title=title, body=body)
    waits = []
    while delivery := Delivery.objects.filter(pk=delivery.pk).first():
        tried = timezone.now()
        notifications.attempt(delivery)
        if kept := Delivery.objects.filter(pk=delivery.pk).first():
            waits.append(round((kept.due_at - tried).total_seconds()))
    return waits


@pytest.mark.django_db
def test_a_destination_that_keeps_failing_is_tried_a_few_times_then_marked_failing(alice, settings):
    rule = notifications.add_rule(alice, label="dead", url=dead_url())
    # Each message is tried every time, and counted once when its last try failed.
    for count in range(1, settings.SIMDECK_NOTIFY_FAILING_AFTER + 1):
        waits = tried_to_the_end(rule, "title", "body")
        first = settings.SIMDECK_NOTIFY_RETRY_SECONDS
        assert waits == [first * 2**i for i in range(settings.SIMDECK_NOTIFY_RETRIES)]
        assert NotificationRule.objects.get(pk=rule.pk).failures == count
    rule.refresh_from_db()
    assert notifications.is_failing(rule) and "did not accept" in rule.last_error
    NotificationRule.objects.filter(pk=rule.pk).update(checked_until=timezone.now() - dt.timedelta(hours=1))
    make_task(alice, services.create_group(alice, machine_type="c2-standard-4", name="g2"), to=HAPPY)
    assert notifications.due() == [], "a failing destination is skipped"


@pytest.mark.django_db(transaction=True)
def test_a_destination_that_never_answers_holds_up_no_other(alice, endpoint):
    from tasks_app.models import Delivery

    # A server that takes the connection and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        hanging = notifications.add_rule(
            alice, label="silent", url=f"json://127.0.0.1:{silent.getsockname()[1]}/"
        )
        live = notifications.add_rule(alice, label="live", url=endpoint.url)
        first = Delivery.objects.create(rule=hanging, title="first", body="body")
        Delivery.objects.create(rule=live, title="second", body="body")
        stuck, sent = notifications.send_due()
        # The sender returned at once; the live destination has its message while the other still waits.
        assert sent.result(timeout=30) is True
        assert [m["title"] for m in endpoint.received] == ["second"] and not stuck.done()
        assert list(Delivery.objects.values_list("title", flat=True)) == ["first"]
        assert stuck.result(timeout=60) is False
        assert Delivery.objects.get(pk=first.pk).attempt == 2, "tried again later"
    finally:
        silent.close()


@pytest.mark.django_db(transaction=True)
def test_a_message_outlives_a_scheduler_stopped_before_or_while_sending_it(
    alice, group, endpoint, monkeypatch
):
    from tasks_app.models import Delivery

    rule = notifications.add_rule(alice, label="hook", url=endpoint.url)
    NotificationRule.objects.update(checked_until=timezone.now() - dt.timedelta(minutes=10))
    task = make_task(alice, group, to=HAPPY)
    # The look is kept with its mark: a scheduler that stops before sending loses nothing.
    assert notifications.queue() == 1 and notifications.queue() == 0
    assert list(Delivery.objects.values_list("rule", "title")) == [
        (rule.pk, f"Simdeck: task {task.id} success")
    ]

    # Handed to a sender that dies with its process: held a while, then tried again.
    died = Future()
    died.set_result(None)
    monkeypatch.setattr(notifications, "send_soon", lambda delivery: died)
    now = timezone.now()
    assert len(notifications.send_due(now)) == 1
    monkeypatch.undo()
    assert notifications.send_due(now + notifications.HELD - dt.timedelta(seconds=1)) == [], "still held"
    [sent] = notifications.send_due(now + notifications.HELD + dt.timedelta(seconds=1))
    assert sent.result(timeout=30) is True
    assert [m["title"] for m in endpoint.received] == [f"Simdeck: task {task.id} success"]
    assert not Delivery.objects.exists(), "delivered: kept no longer"


@pytest.mark.django_db
def test_a_pile_of_deliveries_waits_in_the_database_not_for_a_thread(alice, monkeypatch):
    """A dead destination may pile up messages: only a few are handed over at a time, so none
    waits for a thread longer than it is set aside for (and is handed over twice)."""
    from tasks_app.models import Delivery

    rule = notifications.add_rule(alice, label="slow", url="json://example.org/slow")
    Delivery.objects.bulk_create(Delivery(rule=rule, title=f"m{i}", body="b") for i in range(50))
    monkeypatch.setattr(notifications, "_under_way", set())
    monkeypatch.setattr(notifications, "send_soon", lambda delivery: Future())  # tries that take long
    handed = notifications.send_due()
    assert len(handed) == notifications.UNDER_WAY
    assert notifications.send_due() == [], "no room until a try ends"
    handed[0].set_result(True)
    assert len(notifications.send_due()) == 1
    assert Delivery.objects.filter(due_at__lte=timezone.now()).count() == 50 - notifications.UNDER_WAY - 1


# A real stack delivering to a real endpoint: tests/test_accounting.py runs it with its tasks.


# -- batches, groups and budgets ---------------------------------------------------------------


def test_a_batch_and_a_group_whose_tasks_all_ended_are_told_once(alice, bob, group, no_broker):
    from tasks_app import lifecycle
    from tasks_app.models import Batch, Task

    teams.add_member(group.project, "bob", "viewer", actor=alice)
    now = timezone.now()
    mine = notifications.add_rule(alice, label="mine", url="json://example.org/a", tasks="none", batches=True)
    team = notifications.add_rule(
        bob, label="team", url="json://example.org/b", tasks="none", batches=True, project=group.project
    )
    quiet = notifications.add_rule(alice, label="quiet", url="json://example.org/c", tasks="none")
    NotificationRule.objects.update(checked_until=now - dt.timedelta(minutes=10))
    batch = Batch.objects.create(owner=alice, project=group.project, machine_group=group, size=3)
    ended = [make_task(alice, group, to=HAPPY), make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])]
    running = make_task(alice, group, to=HAPPY[:3])
    Task.objects.filter(pk__in=[t.pk for t in [*ended, running]]).update(batch=batch)
    assert notifications.due(now) == [], "one task of the batch, and so of the group, still runs"

    lifecycle.transition(running, Status.FINALIZING, reason="done", at=now + dt.timedelta(seconds=10))
    lifecycle.transition(running, Status.SUCCESS, reason="done", at=now + dt.timedelta(seconds=20))
    due = notifications.due(now + dt.timedelta(minutes=1))
    told = {rule: [(t, b) for r, t, b in due if r == rule] for rule in (mine.pk, team.pk, quiet.pk)}
    expected = [
        (
            f"Simdeck: batch {batch.id} ended",
            f"All 3 tasks of batch {batch.id} on lab ended: 2 succeeded, 1 failed.",
        )
    ]
    assert told[mine.pk] == expected, "the group ran this batch alone: told once, as the batch"
    assert told[team.pk] == expected and told[quiet.pk] == []
    assert notifications.due(now + dt.timedelta(minutes=2)) == [], "told once"

    # A task of its own, after the batch: the group has no task left again.
    make_task(bob, group, to=HAPPY, at=now + dt.timedelta(minutes=2))
    due = notifications.due(now + dt.timedelta(minutes=4))
    assert [(r, t) for r, t, _ in due] == [
        (rule, "Simdeck: machine group lab has no task left") for rule in (mine.pk, team.pk)
    ], "alice's group, whoever's task ended last in it"
    assert "All 4 tasks of machine group lab ended: 3 succeeded, 1 failed." in due[0][2]


def test_a_sweep_whose_client_stopped_is_closed_at_what_it_holds_and_told(alice, bob, group, no_broker):
    """A client that died midway never sends the rest of its sweep; its batch still ends."""
    from tasks_app.models import Batch, Task

    services.start_group(group)
    now = timezone.now()
    rule = notifications.add_rule(alice, label="mine", url="json://example.org/a", tasks="none", batches=True)
    teams.add_member(group.project, "bob", "viewer", actor=alice)
    notifications.add_rule(
        bob, label="team", url="json://example.org/b", tasks="none", batches=True, project=group.project
    )
    teams.remove_member(group.project, bob, actor=alice)  # his destination stays, and hears nothing more
    NotificationRule.objects.update(checked_until=now - dt.timedelta(minutes=10))
    silent = Batch.objects.create(owner=alice, project=group.project, machine_group=group, size=5)
    ended = [make_task(alice, group, to=HAPPY), make_task(alice, group, to=[*HAPPY[:4], Status.FAILED])]
    Task.objects.filter(pk__in=[t.pk for t in ended]).update(batch=silent)
    assert [(r, t) for r, t, _ in notifications.due(now)] == [
        (rule.pk, "Simdeck: machine group lab has no task left")
    ], "the batch waits for the three tasks its sweep announced"

    timeout = dt.timedelta(minutes=settings.SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES)
    assert services.close_silent_sweeps(now + timeout - dt.timedelta(minutes=1)) == 0, (
        "not silent long enough"
    )
    assert services.close_silent_sweeps(now + timeout + dt.timedelta(minutes=1)) == 1
    closed = Batch.objects.get(pk=silent.pk)
    assert closed.size == 2 and closed.closed_at is not None
    assert notifications.due(now + timeout + dt.timedelta(minutes=2)) == [
        (
            rule.pk,
            f"Simdeck: batch {silent.id} ended",
            f"All 2 tasks of batch {silent.id} on lab ended: 1 succeeded, 1 failed.",
        )
    ], "told once it closed, though its last task ended long before"
    assert services.close_silent_sweeps(now + 2 * timeout) == 0, "closed once"

    # A sweep on a group that was terminated can take no task: it closes at once, running or not.
    running = make_task(alice, group, to=HAPPY[:3])
    cut = Batch.objects.create(owner=alice, project=group.project, machine_group=group, size=9)
    Task.objects.filter(pk=running.pk).update(batch=cut)
    assert services.close_silent_sweeps() == 0
    services.terminate_group(group, actor=alice)
    assert services.close_silent_sweeps() == 1 and Batch.objects.get(pk=cut.pk).size == 1


def test_an_ending_seen_early_is_told_once_in_the_look_that_holds_it(alice, group, no_broker):
    """A look sees what ended after its window (in its slack); only the look holding an end tells it."""
    from tasks_app import lifecycle
    from tasks_app.models import Batch, Task

    services.start_group(group)
    start = timezone.now()
    rule = notifications.add_rule(alice, label="mine", url="json://example.org/a", tasks="none", batches=True)
    NotificationRule.objects.update(checked_until=start - dt.timedelta(minutes=1))
    # A sweep of one request: closed when made, its two tasks end soon after.
    batch = Batch.objects.create(
        owner=alice, project=group.project, machine_group=group, size=2, closed_at=start
    )
    tasks = [make_task(alice, group, to=HAPPY[:3]) for _ in range(2)]
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(batch=batch)
    for i, task in enumerate(tasks):
        ended = start + dt.timedelta(seconds=5 + i)
        lifecycle.transition(task, Status.FINALIZING, reason="exited", at=ended)
        lifecycle.transition(task, Status.SUCCESS, reason="stored", at=ended)

    # The first look's window holds the batch's closing and the first ending; the second ending is past it.
    first = start + notifications.SLACK + dt.timedelta(seconds=5.5)
    assert notifications.due(first) == [], "the batch's end, and the group's, belong to the next look"
    told = notifications.due(first + dt.timedelta(seconds=10))
    assert [t for r, t, _ in told if r == rule.pk] == [f"Simdeck: batch {batch.id} ended"]
    assert notifications.due(first + dt.timedelta(seconds=20)) == [], "told once"


def test_a_budget_reaching_80_and_100_percent_is_told_once_a_level(alice, bob, group, no_broker):
    from tasks_app.services import budgets

    teams.add_member(group.project, "bob", "member", actor=alice)
    make_task(alice, group, to=HAPPY)  # 40 core-seconds
    now = timezone.now()
    mine = notifications.add_rule(alice, label="mine", url="json://example.org/a", tasks="none", budgets=True)
    team = notifications.add_rule(
        bob, label="team", url="json://example.org/b", tasks="none", budgets=True, project=group.project
    )
    NotificationRule.objects.update(checked_until=now - dt.timedelta(minutes=1))

    def told(_):
        # A look a little ahead (an alert is stamped when measured), then the marks back to now.
        due = notifications.due(timezone.now() + dt.timedelta(seconds=5))
        NotificationRule.objects.update(checked_until=timezone.now())
        return sorted((rule, title) for rule, title, _ in due), due

    budgets.set_budget(alice, group.project, "core-hours", "0.0125")  # 89 %
    titles, due = told(1)
    warned = "Simdeck: project dambreak used 80 % of its monthly budget"
    assert titles == [(mine.pk, warned), (team.pk, warned)]
    assert "has used 0.01 core-hours of its monthly budget of 0.01 core-hours (88 %)" in due[0][2]
    assert budgets.record_levels() == 0 and told(2)[0] == [], "told once"

    budgets.set_budget(alice, group.project, "core-hours", "0.01")  # 111 %
    used_up = "Simdeck: project dambreak used up its monthly budget"
    assert told(3)[0] == [(mine.pk, used_up), (team.pk, used_up)]
    # Raised, then lowered again: the warning is news again.
    budgets.set_budget(alice, group.project, "core-hours", "100")
    assert told(4)[0] == []
    budgets.set_budget(alice, group.project, "core-hours", "0.0125")
    assert told(5)[0] == [(mine.pk, warned), (team.pk, warned)]
    teams.remove_member(group.project, bob, actor=alice)
    budgets.set_budget(alice, group.project, "core-hours", "0.01")
    assert told(6)[0] == [(mine.pk, used_up)], "bob left the project: nothing of its budget"


# -- e-mail through the server's own mail server -------------------------------------------------


class MailServer:
    """A real SMTP server (aiosmtpd) on this host, keeping every message it takes."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        received = self.received = []

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                received.append(envelope)
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.url = f"smtp://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def mail_server():
    server = MailServer()
    yield server
    server.stop()


@pytest.fixture
def with_mail(settings, mail_server):
    """This server sends e-mail through the test's SMTP server, as EMAIL_URL would set it."""
    settings.EMAIL_URL = mail_server.url
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", mail_server.port
    settings.EMAIL_TIMEOUT = 5
    return mail_server


@pytest.mark.django_db
def test_an_address_gets_mail_through_the_servers_mail_server(logged_in, alice, settings, with_mail):
    url = reverse("notification-rules")
    settings.EMAIL_URL = ""
    answer = logged_in.post(url, {"url": "alice@example.org", "tasks": "ended"})
    assert answer.status_code == 400 and "no mail server" in answer.content.decode()
    settings.EMAIL_URL = with_mail.url
    for bad in ["alice@", "@example.org", "alice@@example.org"]:
        answer = logged_in.post(url, {"url": bad, "tasks": "ended"})
        assert answer.status_code == 400 and "not an e-mail address" in answer.content.decode(), bad
    assert "or e-mail address" in logged_in.get(url).content.decode()
    added = logged_in.post(
        url, {"url": " alice@example.org ", "tasks": "failed", "batches": "1", "budgets": "1"}
    )
    assert added.status_code == 302
    rule = NotificationRule.objects.get()
    assert rule.url == "alice@example.org" and rule.label == "alice@example.org"
    assert rule.batches and rule.budgets and not rule.groups_terminated
    page = logged_in.get(url).content.decode()
    assert "Tasks that fail, batches and groups all ended, budgets at 80 % and 100 %" in page

    assert notifications.send_test(rule) is None
    assert tried_to_the_end(rule, "Simdeck: task x failed", "It failed.") == []
    assert [m.rcpt_tos for m in with_mail.received] == [["alice@example.org"]] * 2
    assert b"Subject: Simdeck: task x failed" in with_mail.received[1].content
    assert b"It failed." in with_mail.received[1].content
    assert NotificationRule.objects.get(pk=rule.pk).failures == 0

    with_mail.stop()  # the mail server is down: tried again, then counted against the destination
    assert len(tried_to_the_end(rule, "title", "body")) == settings.SIMDECK_NOTIFY_RETRIES
    rule.refresh_from_db()
    assert rule.failures == 1 and "mail server did not take it" in rule.last_error


# -- the API ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_lists_adds_tests_and_removes_ones_own_destinations(
    api, client, alice, bob, group, endpoint, settings
):
    from tasks_app.models import APIKey

    assert api.get("/api/v1/notifications").json() == []
    post = lambda body: api.post("/api/v1/notifications", body, content_type="application/json")  # noqa: E731
    for bad, words in [
        ({"url": "not a url"}, "Apprise URL"),
        ({"url": "json://example.org/x", "tasks": "often"}, "Choose which tasks"),
        ({"url": "json://example.org/x", "batches": "maybe"}, "batches"),
        ({"label": "no url"}, "url"),
    ]:
        answer = post(bad)
        assert answer.status_code == 400 and words in answer.json()["message"], (bad, answer.json())
    assert post({"url": "json://example.org/x", "project": "elsewhere"}).status_code == 404
    settings.SIMDECK_NOTIFY_PRIVATE_HOSTS = False
    answer = post({"url": endpoint.url})
    assert answer.status_code == 400 and "private network" in answer.json()["message"]
    assert answer.json()["field"] == "url"
    settings.SIMDECK_NOTIFY_PRIVATE_HOSTS = True
    assert not NotificationRule.objects.exists(), "nothing kept of a refused one"

    made = post(
        {
            "url": endpoint.url.replace("json://", "json://user:secret@"),
            "label": "hook",
            "project": "dambreak",
            "tasks": "failed",
            "batches": True,
            "budgets": True,
        }
    )
    assert made.status_code == 201, made.content
    rule = made.json()
    assert (
        rule["url"] == f"json://{endpoint.url.split('://')[1].split('/')[0]}/…" and "secret" not in made.text
    )
    assert (rule["project"], rule["tasks"], rule["batches"], rule["budgets"]) == (
        "dambreak",
        "failed",
        True,
        True,
    )
    assert rule["groups_terminated"] is False and rule["failing"] is False
    assert [r["id"] for r in api.get("/api/v1/notifications").json()] == [rule["id"]]

    tested = api.post(f"/api/v1/notifications/{rule['id']}/test").json()
    assert tested["delivered"] is True and endpoint.received[-1]["title"] == "Simdeck: a test"
    dead = post({"url": dead_url()}).json()
    tested = api.post(f"/api/v1/notifications/{dead['id']}/test").json()
    assert tested["delivered"] is False and "did not accept" in tested["message"]

    as_bob = {"HTTP_AUTHORIZATION": f"Bearer {APIKey.issue(bob, 'tests')[1]}"}
    assert client.get("/api/v1/notifications", **as_bob).json() == []
    for method, path in [("post", f"{rule['id']}/test"), ("delete", str(rule["id"])), ("delete", "x")]:
        answer = getattr(client, method)(f"/api/v1/notifications/{path}", **as_bob)
        assert answer.status_code == 404 and "notification destination" in answer.json()["message"]
    assert api.delete(f"/api/v1/notifications/{rule['id']}").status_code == 204
    assert [r["id"] for r in api.get("/api/v1/notifications").json()] == [dead["id"]]
