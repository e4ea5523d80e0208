"""Live logs, statuses and queue positions over real WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest
import websockets
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

import simdeck
from console.asgi import application
from tasks_app import lifecycle, live, services
from tasks_app.lifecycle import Status
from tasks_app.live import publishing
from tasks_app.models import APIKey, Task
from tasks_app.sockets import consumers
from tasks_app.sockets import hub as log_hub
from tests.client_fixtures import UNTIL_STOPPED, stop, wait_until_printed
from tests.helpers import ROOT, wait_for

INPUT = ROOT / "examples" / "commands-mesh-solve"


def ws_url(stack, path: str) -> str:
    return stack.url.replace("http://", "ws://") + path


async def frames(url: str, key: str, *, limit: float = 60, stop=None, into: list | None = None) -> list[dict]:
    """Read JSON frames until the server closes (or ``stop(frame)`` says so).

    ``into``: a list the frames are appended to as they arrive (for another thread to watch).
    """
    got = [] if into is None else into
    async with websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {key}"},
        origin=url.split("/ws/")[0].replace("ws", "http", 1),
    ) as ws:
        try:
            async with asyncio.timeout(limit):
                async for message in ws:
                    frame = json.loads(message)
                    got.append(frame)
                    if stop and stop(frame):
                        break
        except websockets.ConnectionClosed:
            pass
    return got


def lines_of(batches: list[dict]) -> list[str]:
    text = "".join(
        text for f in batches if f["type"] == "lines" for stream, text in f["parts"] if stream == "stdout"
    )
    return text.splitlines()


def lines_text(frame: dict) -> str:
    return "".join(text for _stream, text in frame["parts"])


# -- consumers in-process -------------------------------------------------------


@pytest.fixture
def queued_task(alice):
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab")
    task = Task.objects.create(owner=alice, project=group.project, machine_group=group, simulator="commands")
    lifecycle.transition(task, Status.SUBMITTED, reason="queued")
    return task


def connect(path: str, headers=None) -> tuple[bool, object]:
    async def attempt():
        communicator = WebsocketCommunicator(
            application,
            path,
            headers=[(b"origin", b"http://localhost"), (b"host", b"localhost"), *(headers or [])],
        )
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    return async_to_sync(attempt)()


# The first frame waits for the access check and the first render: the
# communicator's default of one second is too short on a busy host.
FIRST_FRAME_SECONDS = 10


async def _follow(path: str, key: str) -> WebsocketCommunicator:
    """A socket opened as the holder of API key ``key``."""
    communicator = WebsocketCommunicator(
        application,
        path,
        headers=[
            (b"origin", b"http://localhost"),
            (b"host", b"localhost"),
            (b"authorization", f"Bearer {key}".encode()),
        ],
    )
    connected, _ = await communicator.connect()
    assert connected
    return communicator


@pytest.mark.django_db(transaction=True)
def test_a_socket_is_refused_without_a_login_or_key(queued_task):
    assert connect(f"/ws/tasks/{queued_task.id}/") == (False, 4404)
    assert connect(f"/ws/tasks/{queued_task.id}/logs/") == (False, 4404)


@pytest.mark.django_db(transaction=True)
def test_a_socket_to_another_users_task_is_refused(queued_task, bob):
    _, key = APIKey.issue(bob, "bob")
    assert connect(f"/ws/tasks/{queued_task.id}/", [(b"authorization", f"Bearer {key}".encode())])[0] is False


@pytest.mark.django_db(transaction=True)
def test_the_owner_gets_the_status_and_garbage_closes_the_socket(queued_task, alice_key):
    async def talk():
        communicator = await _follow(f"/ws/tasks/{queued_task.id}/?format=json", alice_key)
        first = json.loads(await communicator.receive_from(timeout=FIRST_FRAME_SECONDS))
        await communicator.send_to(text_data="\x00 not a request")
        closed = await communicator.receive_output()
        await communicator.disconnect()
        return first, closed

    first, closed = async_to_sync(talk)()
    assert first["status"] == "submitted" and first["position_in_queue"] == 0
    assert closed == {
        "type": "websocket.close",
        "code": 4400,
        "reason": "This socket only sends; do not write to it.",
    }


@pytest.mark.django_db(transaction=True)
def test_changes_are_sent_only_to_groups_someone_is_in(queued_task, alice_key):
    """Nobody watches most tasks: their groups are skipped, and a viewer still gets every change."""
    watched, alone = live.task_group(queued_task.id), live.task_group("nobody-watches-this")

    async def watch():
        communicator = await _follow(f"/ws/tasks/{queued_task.id}/?format=json", alice_key)
        first = json.loads(await communicator.receive_from(timeout=FIRST_FRAME_SECONDS))
        listened = await asyncio.to_thread(publishing.listened, {watched, alone})
        await database_sync_to_async(lifecycle.transition)(queued_task, Status.KILLED, reason="user")
        changed = json.loads(await communicator.receive_from(timeout=10))
        await communicator.disconnect()
        return first, listened, changed

    assert publishing.listened({watched, alone}) == set()
    first, listened, changed = async_to_sync(watch)()
    assert first["status"] == "submitted"
    assert listened == {watched}
    assert changed["status"] == "killed"
    assert publishing.listened({watched}) == set()  # left with the viewer


@pytest.mark.django_db(transaction=True)
def test_the_page_gets_its_header_timeline_and_path_again_when_the_status_changes(
    queued_task, alice, alice_key
):
    async def talk():
        communicator = await _follow(f"/ws/tasks/{queued_task.id}/", alice_key)
        first = await communicator.receive_from(timeout=FIRST_FRAME_SECONDS)
        await asyncio.to_thread(services.kill_task, queued_task, actor=alice)
        after = await communicator.receive_from(timeout=10)
        await communicator.disconnect()
        return first, after

    first, after = async_to_sync(talk)()
    for frame in (first, after):
        assert (
            '<section id="task-header" class="card task-header" aria-live="polite" hx-swap-oob="true">'
            in frame
        )
        assert (
            '<section id="task-timeline" class="card" aria-labelledby="timeline-h" hx-swap-oob="true">'
            in frame
        )
        assert '<section id="task-path" class="card" aria-labelledby="path-h" hx-swap-oob="true">' in frame
    before, now = (frame.split('id="task-timeline"')[1].split("</section>")[0] for frame in (first, after))
    assert now.count("<tr>") == before.count("<tr>") + 1
    assert "Killed" not in before and "Kill requested by alice." in now


def _started(task):
    for status in (Status.PREPARING, Status.STARTED):
        lifecycle.transition(task, status, reason="for the test")
    return task


async def _until_end(communicator, into: list[dict]) -> None:
    while True:
        frame = json.loads(await communicator.receive_from(timeout=20))
        into.append(frame)
        if frame["type"] == "end":
            return


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("waiting", [log_hub.MAX_WAITING, 0], ids=["shared-reader", "always-catching-up"])
def test_viewers_of_one_task_share_one_reader_and_each_gets_every_line_once(
    queued_task, alice_key, monkeypatch, waiting
):
    """With ``waiting`` 0 every batch makes a viewer fall behind and read on its own: still exact."""
    monkeypatch.setattr(log_hub, "MAX_WAITING", waiting)
    task = _started(queued_task)
    live.begin_log(task.id)
    for i in range(1, 101):
        live.append_log(task.id, "stdout", f"line {i}\n".encode())

    async def talk():
        first, second = [], []
        early = await _follow(f"/ws/tasks/{task.id}/logs/?format=json&after=0-0", alice_key)
        for i in range(101, 201):
            live.append_log(task.id, "stdout", f"line {i}\n".encode())
            if i == 150:
                late = await _follow(f"/ws/tasks/{task.id}/logs/?format=json&after=0-0", alice_key)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.5)  # both have caught up and joined the reader
        readers = [
            len(hub.subscribers)
            for (_loop, key), hub in log_hub.LogHub.hubs.items()
            if key == live.log_stream_key(task.id)
        ]
        live.end_log(task.id)
        await asyncio.gather(_until_end(early, first), _until_end(late, second))
        for communicator in (early, late):
            await communicator.disconnect()
        return first, second, readers

    first, second, readers = async_to_sync(talk)()
    assert readers == [2], "one reader of the stream, shared by both viewers"
    expected = [f"line {i}" for i in range(1, 201)]
    for frames in (first, second):
        assert lines_of(frames) == expected
    assert not [
        hub for (_loop, key), hub in log_hub.LogHub.hubs.items() if key == live.log_stream_key(task.id)
    ]


@pytest.mark.django_db(transaction=True)
def test_the_page_gets_escaped_batches_and_drops_the_oldest_past_its_last_lines(
    queued_task, alice_key, monkeypatch
):
    monkeypatch.setattr(consumers, "PAGE_LINES", 3)
    task = _started(queued_task)
    live.begin_log(task.id)
    live.append_log(task.id, "stdout", b"<script>alert(1)</script>\n")

    async def talk():
        frames = []
        page = await _follow(f"/ws/tasks/{task.id}/logs/", alice_key)
        frames.append(await page.receive_from(timeout=FIRST_FRAME_SECONDS))  # the log view emptied
        frames.append(await page.receive_from(timeout=FIRST_FRAME_SECONDS))  # the backlog
        for i in range(1, 4):
            live.append_log(task.id, "stderr", f"line {i}\n".encode())
            frames.append(await page.receive_from(timeout=FIRST_FRAME_SECONDS))
        live.end_log(task.id)
        frames.append(await page.receive_from(timeout=FIRST_FRAME_SECONDS))
        await page.disconnect()
        return frames

    frames = async_to_sync(talk)()
    assert frames[0] == '<div id="log-lines" hx-swap-oob="innerHTML"></div>'
    assert '<pre class="log-stdout">&lt;script&gt;alert(1)&lt;/script&gt;\n</pre>' in frames[1]
    assert "<script>" not in "".join(frames)
    assert all('<pre class="log-stderr">' in frame for frame in frames[2:5])
    # The fourth line passes the page's three: the first batch goes, and the page says so once.
    assert '<div id="log-b1" hx-swap-oob="delete"></div>' in frames[4]
    assert frames[4].count('id="log-hidden"') == 1 and "simdeck logs" in frames[4]
    assert "log-hidden" not in "".join(frames[:4])
    assert frames[5] == '<span id="log-end" hx-swap-oob="true">Ended.</span>'


@pytest.mark.django_db
def test_a_first_attempts_stream_starts_with_its_first_lines_or_with_its_end(alice):
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab")
    chatty, quiet = (
        Task.objects.create(owner=alice, project=group.project, machine_group=group, simulator="commands")
        for _ in range(2)
    )

    def marks(task) -> list[bytes]:
        return [
            fields[b"s"] for _id, fields in publishing.redis_client().xrange(live.log_stream_key(task.id))
        ]

    for task in (chatty, quiet):
        live.begin_log(task.id, first_attempt=True)
        assert marks(task) == []  # nothing written yet: a follower waits for the stream to appear
    live.append_log(chatty.id, "stdout", b"one\n")
    live.append_log(chatty.id, "stdout", b"two\n")
    live.end_log(chatty.id)
    live.end_log(quiet.id)
    assert marks(chatty) == [b"begin", b"stdout", b"stdout", b"end"]
    assert marks(quiet) == [b"begin", b"end"]
    # A later attempt's stream holds the one before: it is started over at once.
    live.begin_log(chatty.id)
    assert marks(chatty) == [b"begin"]


@pytest.mark.django_db(transaction=True)
def test_ends_and_changes_held_together_go_out_at_the_end_of_the_block_or_on_release(alice):
    from channels.layers import get_channel_layer

    group = services.create_group(alice, machine_type="c2-standard-4", name="lab")
    first, second = (
        Task.objects.create(owner=alice, project=group.project, machine_group=group, simulator="commands")
        for _ in range(2)
    )

    def marks(task) -> list[bytes]:
        return [
            fields[b"s"] for _id, fields in publishing.redis_client().xrange(live.log_stream_key(task.id))
        ]

    def changed(task, status: str) -> None:
        live.task_changed(task.id, group.pk, alice.pk, status, left_queue=False)

    def held_once() -> list:
        """Steps of a tiny task's machine, with what a viewer could see at each point."""
        seen = []
        with live.together():
            live.begin_log(first.id, first_attempt=True)
            changed(first, "preparing-to-compute")
            live.append_log(first.id, "stdout", b"one\n")  # lines are never held
            live.end_log(first.id)
            changed(first, "success")
            seen.append(marks(first))
            seen.append(len(publishing.holding().changes))  # both changes wait as well
            seen.append("block ends")
        seen.append(marks(first))
        return seen

    def released() -> list:
        seen = []
        with live.together():
            changed(second, "preparing-to-compute")
            with live.together():  # joins the outer block
                changed(second, "started")
            seen.append(len(publishing.holding().changes))
            seen.append("release")
            live.release()
            live.end_log(second.id)  # no longer held
            seen.append(marks(second)[-1])
            changed(second, "success")
        return seen

    async def watch():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        for task in (first, second):
            await layer.group_add(live.task_group(task.id), channel)

        async def heard() -> list[str]:
            assert await asyncio.to_thread(live.flush)
            got = []
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append((await asyncio.wait_for(layer.receive(channel), 0.5))["status"])
            return got

        try:
            steps = await asyncio.to_thread(held_once)
            after_first = await heard()
            more = await asyncio.to_thread(released)
            after_second = await heard()
        finally:
            for task in (first, second):
                await layer.group_discard(live.task_group(task.id), channel)
        return steps, after_first, more, after_second

    steps, after_first, more, after_second = async_to_sync(watch)()
    # Inside the block the end mark waited; it went out with the changes at its end.
    assert steps == [[b"begin", b"stdout"], 2, "block ends", [b"begin", b"stdout", b"end"]]
    assert after_first == ["preparing-to-compute", "success"]
    assert more == [2, "release", b"end"]
    assert after_second == ["preparing-to-compute", "started", "success"]


def test_a_pop_waits_for_the_end_of_the_block_like_the_rest():
    key = f"{live.log_stream_key('pop')}:tokens"
    client = publishing.redis_client()
    client.delete(key)
    client.rpush(key, b"first", b"second")
    try:
        assert live.pop_later(key) is None  # nothing held: the caller pops itself
        with live.together():
            popped = live.pop_later(key)
            empty = live.pop_later(f"{key}:none")
            assert client.llen(key) == 2
        assert (popped(), empty()) == (b"second", None)
        assert client.lrange(key, 0, -1) == [b"first"]
    finally:
        client.delete(key)


def test_a_foreign_origin_is_refused():
    async def attempt():
        communicator = WebsocketCommunicator(
            application, "/ws/tasks/x/", headers=[(b"origin", b"http://evil.example")]
        )
        connected, _ = await communicator.connect()
        return connected

    assert async_to_sync(attempt)() is False


# -- end to end through daphne and real workers ----------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_late_joiner_gets_the_backlog_then_live_lines_with_no_gap_or_duplicate(
    stack, client_for, alice_key
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=INPUT,
        commands=["for i in $(seq 1 400); do echo line-$i; sleep 0.005; done"],
        on=mg,
    )
    wait_for(lambda: Task.objects.get(pk=task.id).status == Status.STARTED, 30, message="the task to start")
    url = ws_url(stack, f"/ws/tasks/{task.id}/logs/?format=json")
    # Join late, read a little, drop the connection, then resume where we were.
    first = async_to_sync(frames)(
        url, alice_key, stop=lambda f: f["type"] == "lines" and "line-50\n" in lines_text(f)
    )
    last_id = [f for f in first if f["type"] == "lines"][-1]["id"]
    rest = async_to_sync(frames)(url + f"&after={last_id}", alice_key)
    assert rest[-1]["type"] == "end"
    assert lines_of(first + rest) == [f"line-{i}" for i in range(1, 401)]
    assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    # After the end, a new viewer still gets the log, from storage or the stream.
    again = async_to_sync(frames)(url, alice_key)
    assert lines_of(again)[-1] == "line-400"


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_watcher_of_the_last_queued_task_sees_the_queue_drain(stack, client_for, alice_key):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    blocker = simdeck.simulators.Commands().run(input_dir=INPUT, commands=[UNTIL_STOPPED], on=mg)
    wait_until_printed(stack, blocker.id, steps=1)
    tasks = [simdeck.simulators.Commands().run(input_dir=INPUT, commands=["true"], on=mg) for _ in range(20)]
    last = tasks[-1]
    url = ws_url(stack, f"/ws/tasks/{last.id}/?format=json")
    seen: list[dict] = []
    watcher = threading.Thread(
        target=async_to_sync(frames),
        args=(url, alice_key),
        kwargs={"stop": lambda f: f.get("status") not in (None, "submitted"), "into": seen, "limit": 100},
    )
    watcher.start()
    wait_for(lambda: seen, 30, message="the watcher to connect")
    stop(stack, blocker.id)  # the queue starts to drain only now
    watcher.join(timeout=110)
    positions = [f["position_in_queue"] for f in seen if f.get("position_in_queue") is not None]
    # Each departure from the queue is announced once; the watcher sees every step.
    assert positions[0] == 19
    assert positions[-1] == 0
    assert positions == sorted(positions, reverse=True)
    assert set(range(0, 20)) <= set(positions)


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_simulator_printing_very_fast_reaches_a_viewer_in_few_frames_every_line_once_in_order(
    stack, client_for, alice_key
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    # 30,000 lines in bursts of 100, about ten thousand a second.
    burst = 'seq -f "fast-%g" $((k*100+1)) $((k*100+100))'
    task = simdeck.simulators.Commands().run(
        input_dir=INPUT, commands=[f"sleep 2; for k in $(seq 0 299); do {burst}; sleep 0.01; done"], on=mg
    )
    wait_for(lambda: Task.objects.get(pk=task.id).status == Status.STARTED, 60, message="the task to start")
    url = ws_url(stack, f"/ws/tasks/{task.id}/logs/?format=json&after=0-0")
    started = time.monotonic()
    got = async_to_sync(frames)(url, alice_key, limit=150)
    followed = time.monotonic() - started
    assert got[0]["type"] == "begin" and got[-1]["type"] == "end"
    assert lines_of(got) == [f"fast-{i}" for i in range(1, 30_001)]
    batches = [f for f in got if f["type"] == "lines"]
    # At most one frame per FRAME_SECONDS, so far fewer frames than lines.
    assert len(batches) <= followed / consumers.FRAME_SECONDS + 5
    assert len(batches) < 30_000 / 20


def test_every_live_message_has_a_handler_on_each_consumer_that_may_hear_it():
    """Channels calls the method its type names; a consumer without it would end on the first one."""
    from tasks_app.live.messages import QueueMoved, ResourcesSampled, TaskChanged, TaskProgress
    from tasks_app.sockets.pages import GroupPageConsumer, OverviewConsumer, TaskTableConsumer

    for kind in (TaskChanged, QueueMoved, TaskProgress, ResourcesSampled):
        handler = kind.type.replace(".", "_")
        for consumer in (
            consumers.TaskEventsConsumer,
            TaskTableConsumer,
            OverviewConsumer,
            GroupPageConsumer,
        ):
            assert callable(getattr(consumer, handler, None)), f"{consumer.__name__} has no {handler}"


@pytest.mark.django_db
def test_a_live_message_reads_back_as_the_type_it_was_sent_as():
    from tasks_app.live.messages import QueueMoved, TaskProgress

    sent = live.queue_order(0)
    assert sent["type"] == "queue.moved" and QueueMoved.of(sent) == QueueMoved(order=[])
    progress = TaskProgress(task="t1", progress=42.0, eta=None)
    assert TaskProgress.of(progress.message()) == progress
