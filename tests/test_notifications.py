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

import pytest
from django.urls import reverse
from django.utils import timezone

from tasks_app import services, teams
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


@pytest.fixture
def eager_in_this_transaction():
    """Run Celery tasks here without the worker's check of its connection, which would close the test's."""
    from celery import signals

    from tasks_app import tasks

    signals.task_prerun.disconnect(tasks._usable_connection)
    yield
    signals.task_prerun.connect(tasks._usable_connection)


@pytest.mark.django_db
def test_a_destination_that_keeps_failing_is_tried_a_few_times_then_marked_failing(
    alice, settings, eager_in_this_transaction
):
    from tasks_app.tasks import notify

    rule = notifications.add_rule(alice, label="dead", url=dead_url())
    # Run eagerly, a retry runs at once (no wait): each message is tried every time, counted once.
    for count in range(1, settings.SIMDECK_NOTIFY_FAILING_AFTER + 1):
        notify.apply(args=(rule.pk, "title", "body"), throw=False)
        assert NotificationRule.objects.get(pk=rule.pk).failures == count
    rule.refresh_from_db()
    assert notifications.is_failing(rule) and "did not accept" in rule.last_error
    NotificationRule.objects.filter(pk=rule.pk).update(checked_until=timezone.now() - dt.timedelta(hours=1))
    make_task(alice, services.create_group(alice, machine_type="c2-standard-4", name="g2"), to=HAPPY)
    assert notifications.due() == [], "a failing destination is skipped"


# A real stack delivering to a real endpoint: tests/test_accounting.py runs it with its tasks.
