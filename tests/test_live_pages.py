"""The tasks table, the overview and a group's page follow status changes over a WebSocket.

Consumers run in-process (Channels' ``WebsocketCommunicator``) on the real
Redis channel layer; status changes are real guarded transitions whose
events travel through Redis.
"""

from __future__ import annotations

import re
import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from console.asgi import application
from tasks_app import lifecycle, services
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task
from tasks_app.sockets import pages as live_pages

pytestmark = pytest.mark.django_db(transaction=True)


def headers(key: str | None) -> list[tuple[bytes, bytes]]:
    found = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
    if key:
        found.append((b"authorization", f"Bearer {key}".encode()))
    return found


def new_task(user, group, status: Status = Status.SUBMITTED) -> Task:
    task = Task.objects.create(owner=user, project=group.project, machine_group=group, simulator="commands")
    if status != Status.PENDING_INPUT:
        lifecycle.transition(task, Status.SUBMITTED, reason="queued")
    return task


async def read_all(communicator, quiet: float = 2.5) -> list[str]:
    """Every frame until none has come for ``quiet`` seconds."""
    got = []
    # receive_nothing, unlike a timed-out receive, leaves the consumer running.
    while not await communicator.receive_nothing(timeout=quiet):
        got.append(await communicator.receive_from())
    return got


@pytest.fixture
def lab(alice):
    return services.create_group(alice, machine_type="c2-standard-4", name="lab")


@pytest.fixture(autouse=True)
def _quick_idle_refresh(monkeypatch):
    # Keep the idle refresh out of the way: frames in these tests come from events.
    monkeypatch.setattr(live_pages, "IDLE_REFRESH_SECONDS", 600)


def test_a_page_socket_is_refused_without_a_login():
    async def attempt(path):
        communicator = WebsocketCommunicator(application, path, headers=headers(None))
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    assert async_to_sync(attempt)("/ws/live/tasks/") == (False, 4404)
    assert async_to_sync(attempt)("/ws/live/overview/") == (False, 4404)


def test_another_users_group_page_is_refused(lab, bob):
    _, key = APIKey.issue(bob, "bob")

    async def attempt():
        communicator = WebsocketCommunicator(application, f"/ws/live/groups/{lab.pk}/", headers=headers(key))
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(attempt)() is False


def test_the_table_updates_shown_rows_and_announces_new_tasks_only_to_who_may_see_them(
    alice, alice_key, bob, lab
):
    shown = new_task(alice, lab)
    _, bob_key = APIKey.issue(bob, "bob")
    since = time.time()

    async def watch():
        mine = WebsocketCommunicator(
            application, f"/ws/live/tasks/?status=active&rendered={since}", headers=headers(alice_key)
        )
        theirs = WebsocketCommunicator(application, "/ws/live/tasks/", headers=headers(bob_key))
        assert (await mine.connect())[0] and (await theirs.connect())[0]
        await database_sync_to_async(lifecycle.transition)(shown, Status.PREPARING, reason="taken")
        await database_sync_to_async(new_task)(alice, lab)
        frames = await read_all(mine)
        seen_by_bob = await read_all(theirs)
        await mine.disconnect()
        await theirs.disconnect()
        return "".join(frames), seen_by_bob

    html, seen_by_bob = async_to_sync(watch)()
    assert f'<td id="status-{shown.id}" hx-swap-oob="true">' in html
    assert "Preparing to Compute" in html
    assert re.search(r'id="live-news"[^>]*>.*1 new task in this view', html)
    assert 'href="/tasks/?status=active"' in html  # "show" reloads the same filter, first page
    assert seen_by_bob == []


def test_a_burst_of_changes_costs_a_page_a_few_refreshes_not_one_per_change(alice, alice_key, lab):
    tasks = [new_task(alice, lab, Status.PENDING_INPUT) for _ in range(60)]
    since = time.time()

    async def watch():
        page = WebsocketCommunicator(
            application, f"/ws/live/tasks/?rendered={since}", headers=headers(alice_key)
        )
        assert (await page.connect())[0]
        started = time.monotonic()
        for task in tasks:
            await database_sync_to_async(lifecycle.transition)(task, Status.SUBMITTED, reason="queued")
        burst = time.monotonic() - started
        frames = await read_all(page)
        await page.disconnect()
        return burst, frames

    burst, frames = async_to_sync(watch)()
    # One refresh per second at most (plus the one already under way when the burst began).
    assert 1 <= len(frames) <= burst / live_pages.REFRESH_SECONDS + 2
    updated = set(re.findall(r'<td id="status-(\w+)" hx-swap-oob', "".join(frames)))
    on_page = {t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id))[-50:]}
    assert updated == on_page  # each row shown got its new status; none of the others was sent


def test_the_overview_and_the_group_page_follow_the_queue(alice, alice_key, lab):
    async def watch():
        overview = WebsocketCommunicator(application, "/ws/live/overview/", headers=headers(alice_key))
        group = WebsocketCommunicator(application, f"/ws/live/groups/{lab.name}/", headers=headers(alice_key))
        assert (await overview.connect())[0] and (await group.connect())[0]
        for _ in range(3):
            await database_sync_to_async(new_task)(alice, lab)
        return "".join(await read_all(overview)), "".join(await read_all(group))

    overview_html, group_html = async_to_sync(watch)()
    assert '<div id="overview-live" hx-swap-oob="true">' in overview_html
    last_overview = overview_html.rsplit('<div id="overview-live"', 1)[-1]
    assert re.search(r'tile-submitted"[^>]*>\s*<span class="tile-n">3</span>', last_overview)
    last_group = group_html.rsplit('<span id="group-queue-counts"', 1)[-1]
    assert "3 waiting, 0 running" in last_group
    assert '<div id="group-live" hx-swap-oob="true">' in group_html
