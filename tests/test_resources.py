"""Resource use of tasks: measured on the machine, kept as samples, shown and served.

The meter is tested on a real busy subprocess; the console and the API on
samples written to the database; the whole path (a machine measuring a real
simulation) end to end through a running stack.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from django.utils import timezone

import simdeck
from console.asgi import application
from tasks_app import live, resource_use, services
from tasks_app.executor.plane import Direct
from tasks_app.executor.sampling import SAMPLES_PER_STEP, ResourceMeter, sample_interval
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, ResourceSample, Task
from tests.test_console_pages import HAPPY, make_task

RUNNING = HAPPY[:3]
MB = 2**20

# No machine runs in most of these tests: queue messages would go nowhere.
pytestmark = pytest.mark.usefixtures("no_broker")


def add_samples(task, count: int, *, every: float = 10.0, start=None) -> None:
    """``count`` samples: CPU rising to 190 %, memory to 1 GiB, disk to 300 MB."""
    start = start or timezone.now() - dt.timedelta(seconds=every * count)
    ResourceSample.objects.bulk_create(
        ResourceSample(
            task=task,
            at=start + dt.timedelta(seconds=every * i),
            cpu_percent=190.0 * (i + 1) / count,
            memory_bytes=2**30 * (i + 1) // count,
            disk_bytes=300 * MB * (i + 1) // count,
        )
        for i in range(count)
    )


# -- how often samples are taken ------------------------------------------------------


def test_the_sample_interval_doubles_as_the_task_ages():
    assert sample_interval(0, 10) == 10
    assert sample_interval(SAMPLES_PER_STEP - 1, 10) == 10
    assert sample_interval(SAMPLES_PER_STEP, 10) == 20
    assert sample_interval(3 * SAMPLES_PER_STEP, 10) == 80
    # Rows written over four weeks at the default 10 s: a few thousand, not 240,000.
    written, elapsed = 0, 0.0
    while elapsed < 28 * 24 * 3600:
        elapsed += sample_interval(written, 10)
        written += 1
    assert written < 4000


@pytest.mark.django_db(transaction=True)
def test_the_meter_sums_cpu_and_memory_over_the_whole_process_tree(alice, group):
    task = make_task(alice, group, to=RUNNING)
    # A shell whose child burns a core and holds 64 MB: only the tree's sum shows both.
    burn = "import time\nb = b'x' * (64 * 2**20)\nt = time.time()\nwhile time.time() - t < 30: pass\n"
    proc = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "$0"', burn], start_new_session=True)
    try:
        meter = ResourceMeter(task.id, base_seconds=1, record=Direct().record_sample)
        for _ in range(25):
            time.sleep(0.2)
            meter.tick(proc.pid)
        meter.disk_bytes = 1234
        assert meter.due()
        assert meter.record()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and the child it started
        proc.wait()
    [sample] = ResourceSample.objects.filter(task=task)
    # A busy core on a shared machine: well above idle, at most a few cores.
    assert 30 < sample.cpu_percent < 400
    assert sample.memory_bytes > 64 * MB
    assert sample.disk_bytes == 1234
    assert not meter.due()


# -- reading samples back ------------------------------------------------------------


@pytest.mark.django_db
def test_a_long_task_is_cut_into_at_most_the_asked_number_of_points(alice, group):
    task = make_task(alice, group, to=RUNNING)
    add_samples(task, 1000)
    usage = resource_use.usage(task.id, points=200)
    assert len(usage.points) == 200 and usage.samples == 1000
    assert usage.latest.cpu_percent == pytest.approx(190.0)
    assert usage.peak_memory_bytes == 2**30 and usage.peak_disk_bytes == 300 * MB
    assert [p.at for p in usage.points] == sorted(p.at for p in usage.points)
    # CPU is the stretch's average; memory its peak.
    first = usage.points[0]
    assert first.samples == 5 and first.cpu_percent == pytest.approx(190.0 * 3 / 1000)
    assert first.memory_bytes == 2**30 * 5 // 1000
    chart = resource_use.chart(usage, "cpu_percent", "percent")
    assert chart["top"] == 200 and len(chart["line"].split()) == 200
    assert resource_use.chart(usage, "memory_bytes", "bytes")["top"] == 2**30


@pytest.mark.django_db
def test_a_task_without_samples_has_no_points(alice, group):
    task = make_task(alice, group)
    usage = resource_use.usage(task.id)
    assert usage.points == [] and usage.latest is None and usage.samples == 0


# -- the console ---------------------------------------------------------------------


@pytest.mark.django_db
def test_the_task_page_shows_figures_and_three_charts(logged_in, alice, group):
    task = make_task(alice, group, to=RUNNING)
    add_samples(task, 30)
    html = logged_in.get(reverse("task-detail", args=[task.id])).content.decode()
    section = html[html.index('id="task-resources"') :]
    section = section[: section.index("</section>")]
    assert "190%" in section and "1.0 GB" in section and "300.0 MB" in section
    assert section.count("<svg") == 3 and section.count("<polyline") == 3
    assert "measured live" in section and "30 samples" in section


@pytest.mark.django_db
def test_resource_use_stays_on_the_page_after_the_task_ends(logged_in, alice, group):
    task = make_task(alice, group, to=HAPPY)
    add_samples(task, 5)
    html = logged_in.get(reverse("task-detail", args=[task.id])).content.decode()
    assert 'id="task-resources"' in html and "measured live" not in html and "<polyline" in html


@pytest.mark.django_db
def test_a_single_sample_is_drawn_as_a_dot(logged_in, alice, group):
    task = make_task(alice, group, to=RUNNING)
    add_samples(task, 1)
    html = logged_in.get(reverse("task-resources", args=[task.id]), HTTP_HX_REQUEST="true").content.decode()
    assert html.count("<circle") == 3 and "<polyline" not in html


@pytest.mark.django_db
def test_a_waiting_task_keeps_a_place_for_live_figures_and_one_that_never_ran_shows_none(
    logged_in, alice, group
):
    waiting = make_task(alice, group)
    html = logged_in.get(reverse("task-detail", args=[waiting.id])).content.decode()
    assert 'id="task-resources"' in html and "measured while the simulation runs" in html
    services.kill_task(waiting)
    html = logged_in.get(reverse("task-detail", args=[waiting.id])).content.decode()
    assert 'id="task-resources"' not in html
    page = logged_in.get(reverse("task-resources", args=[waiting.id])).content.decode()
    assert "never ran on a machine" in page


@pytest.mark.django_db
def test_the_resources_partial_and_its_page(logged_in, alice, group):
    task = make_task(alice, group, to=RUNNING)
    add_samples(task, 12)
    url = reverse("task-resources", args=[task.id])
    partial = logged_in.get(url, HTTP_HX_REQUEST="true")
    html = partial.content.decode()
    assert html.lstrip().startswith('<section class="card" id="task-resources"')
    assert "<html" not in html and "hx-swap-oob" not in html
    assert "HX-Request" in partial["Vary"]
    page = logged_in.get(url).content.decode()
    assert "<html" in page and 'id="task-resources"' in page and "Resource use" in page


@pytest.mark.django_db
def test_the_task_page_draws_a_long_task_in_the_same_queries_as_a_short_one(
    logged_in, alice, group, django_assert_num_queries
):
    short = make_task(alice, group, to=RUNNING)
    add_samples(short, 3)
    long = make_task(alice, group, to=RUNNING)
    add_samples(long, 5000, every=60)
    logged_in.get(reverse("task-detail", args=[short.id]))  # the session is warm for both
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as counted:
        logged_in.get(reverse("task-detail", args=[short.id]))
    with django_assert_num_queries(len(counted)):
        html = logged_in.get(reverse("task-detail", args=[long.id])).content.decode()
    assert "5000 samples" in html
    with django_assert_num_queries(4):  # session, user, task, samples
        logged_in.get(reverse("task-resources", args=[long.id]), HTTP_HX_REQUEST="true")


@pytest.mark.django_db
def test_nobody_sees_another_users_resource_use(client, bob, alice, group):
    task = make_task(alice, group, to=RUNNING)
    add_samples(task, 3)
    client.force_login(bob)
    assert client.get(reverse("task-resources", args=[task.id])).status_code == 404


# -- the live push -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_new_sample_is_pushed_to_the_task_page_socket(alice, group, alice_key):
    task = make_task(alice, group, to=RUNNING)

    async def watch():
        communicator = WebsocketCommunicator(
            application,
            f"/ws/tasks/{task.id}/",
            headers=[
                (b"origin", b"http://localhost"),
                (b"host", b"localhost"),
                (b"authorization", f"Bearer {alice_key}".encode()),
            ],
        )
        connected, _ = await communicator.connect()
        assert connected
        await communicator.receive_from(timeout=10)  # the header, first
        await sync_to_async(add_samples)(task, 4)
        await sync_to_async(live.resources_sampled)(task.id)
        frame = await communicator.receive_from(timeout=10)
        await communicator.disconnect()
        return frame

    frame = async_to_sync(watch)()
    assert 'id="task-resources"' in frame and 'hx-swap-oob="true"' in frame
    assert "190%" in frame and frame.count("<svg") == 3


# -- the API -------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_serves_resource_use_to_the_owner_only(client, alice, bob, group, alice_key):
    task = make_task(alice, group, to=RUNNING)
    add_samples(task, 500)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {alice_key}"}
    body = client.get(f"/api/v1/tasks/{task.id}/resources", **auth).json()
    assert body["id"] == task.id and body["status"] == "started" and body["samples"] == 500
    assert len(body["points"]) == 200
    assert body["latest"]["cpu_percent"] == pytest.approx(190.0)
    assert body["peak"] == {
        "cpu_percent": pytest.approx(190.0),
        "memory_bytes": 2**30,
        "disk_bytes": 300 * MB,
    }
    assert body["span_seconds"] == pytest.approx(4990)
    few = client.get(f"/api/v1/tasks/{task.id}/resources", {"points": 10}, **auth).json()
    assert len(few["points"]) == 10 and sum(p["samples"] for p in few["points"]) == 500
    bad = client.get(f"/api/v1/tasks/{task.id}/resources", {"points": 0}, **auth)
    assert bad.status_code == 400 and bad.json()["field"] == "points"
    _, bob_key = APIKey.issue(bob, "bob")
    other = client.get(f"/api/v1/tasks/{task.id}/resources", HTTP_AUTHORIZATION=f"Bearer {bob_key}")
    assert other.status_code == 404 and other.json()["error"] == "not_found"


@pytest.mark.django_db
def test_the_api_answers_a_task_that_never_ran_with_no_samples(client, alice, group, alice_key):
    task = make_task(alice, group)
    body = client.get(f"/api/v1/tasks/{task.id}/resources", HTTP_AUTHORIZATION=f"Bearer {alice_key}").json()
    assert body["samples"] == 0 and body["points"] == [] and body["latest"] is None
    assert body["started"] is None


# -- end to end ----------------------------------------------------------------------

BURN = """\
import time
from pathlib import Path

held = b"x" * (120 * 2**20)  # touched, so it is resident
Path("scratch.bin").write_bytes(b"y" * (3 * 2**20))
start = time.time()
n = 0
while time.time() - start < 6:
    n += 1
print("done", n, len(held))
"""


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_machine_records_the_resource_use_of_a_real_simulation(stack, client_for, alice_key, tmp_path):
    api = client_for(alice_key)
    scene = tmp_path / "burn"
    scene.mkdir()
    (scene / "burn.py").write_text(BURN)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(input_dir=scene, commands=["python burn.py"], on=mg)
    assert task.wait(polling_period=0.5, silent_mode=True) == "success"
    samples = list(ResourceSample.objects.filter(task_id=task.id).order_by("at"))
    assert len(samples) >= 3, stack.logs()
    assert max(s.cpu_percent for s in samples) > 20
    assert max(s.memory_bytes for s in samples) > 100 * MB
    assert max(s.disk_bytes for s in samples) >= 3 * MB
    body = api.get(f"/tasks/{task.id}/resources")
    assert body["samples"] == len(samples) and body["peak"]["memory_bytes"] > 100 * MB
    assert Task.objects.get(pk=task.id).status == Status.SUCCESS
