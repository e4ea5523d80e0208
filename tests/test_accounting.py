"""Accounting: computing time kept by the database, core-hours and costs, the same in every door.

Tasks are moved through ``lifecycle.transition`` at chosen moments, so each
figure is known exactly; the whole path (real tasks on real machines, the
client, the CLI) runs once through a stack.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tasks_app import lifecycle, services
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Machine, MachinePrice, NotificationRule, Task
from tests.test_console_pages import HAPPY, make_task
from tests.test_notifications import endpoint, mail_server  # noqa: F401 - fixtures

# make_task moves a task every 10 s: started to finalizing is 10 s of computing.
COMPUTED = 10.0
# c2-standard-4: 4 vCPUs, 16 GB; n2-standard-2: 2 vCPUs, 8 GB.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def at(minutes_ago: float) -> dt.datetime:
    return timezone.now() - dt.timedelta(minutes=minutes_ago)


def move(task, *steps: tuple[Status, dt.datetime]) -> None:
    for status, when in steps:
        lifecycle.transition(task, status, reason=f"to {status.value}", at=when)


@pytest.fixture
def priced():
    MachinePrice.objects.create(machine_type="c2-standard-4", price_per_hour=Decimal("0.36"))
    MachinePrice.objects.create(machine_type="n2-standard-2", price_per_hour=Decimal("0.18"))


# -- computing time, kept by the database ------------------------------------------------------


def test_computing_time_is_kept_for_every_attempt_and_only_while_computing(alice, group):
    done = make_task(alice, group, to=HAPPY)
    assert Task.objects.get(pk=done.pk).computing_seconds == COMPUTED

    # Lost its machine after 30 s of computing, run again for 20 s more.
    again = make_task(alice, group, to=HAPPY[:3])
    started = Task.objects.get(pk=again.pk).started_at
    move(
        again,
        (Status.SPOT_PREEMPTED, started + dt.timedelta(seconds=30)),
        (Status.SUBMITTED, started + dt.timedelta(seconds=31)),
        (Status.PREPARING, started + dt.timedelta(seconds=40)),
    )
    assert Task.objects.get(pk=again.pk).computing_seconds == 30
    # Killed while preparing its third attempt: the second's start is not this one's.
    second = started + dt.timedelta(seconds=45)
    move(again, (Status.STARTED, second), (Status.FINALIZING, second + dt.timedelta(seconds=20)))
    assert Task.objects.get(pk=again.pk).computing_seconds == 50
    move(again, (Status.SUCCESS, second + dt.timedelta(seconds=25)))
    assert Task.objects.get(pk=again.pk).computing_seconds == 50, "finalizing is not computing"

    # A kill ends computing when the machine stops the simulation.
    killed = make_task(alice, group, to=HAPPY[:3])
    started = Task.objects.get(pk=killed.pk).started_at
    move(
        killed,
        (Status.PENDING_KILL, started + dt.timedelta(seconds=5)),
        (Status.KILLED, started + dt.timedelta(seconds=8)),
    )
    assert Task.objects.get(pk=killed.pk).computing_seconds == 8

    never = make_task(alice, group, to=[Status.SUBMITTED, Status.KILLED])
    assert Task.objects.get(pk=never.pk).computing_seconds == 0


def test_a_task_passing_through_started_in_one_write_counts_too(alice, group):
    task = make_task(alice, group, to=HAPPY[:2])
    start = timezone.now() - dt.timedelta(seconds=5)
    lifecycle.transition(
        task,
        Status.SUCCESS,
        reason="over in a moment",
        passing=[
            (Status.STARTED, "ran", start),
            (Status.FINALIZING, "stored", start + dt.timedelta(seconds=2)),
        ],
    )
    assert Task.objects.get(pk=task.pk).computing_seconds == 2


# -- the figures -----------------------------------------------------------------------------


def test_usage_adds_up_across_tasks_users_days_and_projects(alice, bob, group, priced):
    from tasks_app import teams

    teams.add_member(group.project, "bob", "member", actor=alice)
    small = services.create_group(alice, machine_type="n2-standard-2", name="small", project="dambreak")
    other = services.create_group(alice, machine_type="c2-standard-4", name="other", project="wind")
    tasks = [make_task(alice, group, to=HAPPY) for _ in range(3)]
    tasks.append(make_task(bob, small, to=HAPPY))
    make_task(alice, other, to=HAPPY)
    start, end = services.month_bounds("")
    report = services.report([group.project_id], start, end)

    # 3 tasks × 10 s × 4 vCPUs, 1 × 10 s × 2 vCPUs.
    assert report.total.tasks == 4
    assert report.total.core_seconds == pytest.approx(3 * 40 + 20)
    assert report.total.memory_gb_hours == pytest.approx((3 * 10 * 16 + 10 * 8) / 3600)
    assert report.total.cost == pytest.approx((3 * 10 * 0.36 + 10 * 0.18) / 3600)
    per_task = [services.task_usage(Task.objects.get(pk=t.pk)) for t in tasks]
    assert sum(u["core_seconds"] for u in per_task) == pytest.approx(report.total.core_seconds)
    assert sum(u["estimated_cost"] for u in per_task) == pytest.approx(report.total.cost, abs=1e-3)
    assert {name: u.core_seconds for name, u in report.users.items()} == {"alice": 120, "bob": 20}
    assert sum(u.core_seconds for u in report.days.values()) == pytest.approx(140)
    both = services.report([group.project_id, other.project_id], start, end)
    assert sorted(u.core_seconds for u in both.projects.values()) == [40, 140]
    assert services.report([group.project_id], *services.month_bounds("2020-01")).total.tasks == 0


def test_a_computing_task_counts_its_time_so_far_today(alice, group):
    task = make_task(alice, group, to=HAPPY[:3])
    started = Task.objects.get(pk=task.pk).started_at
    report = services.report([group.project_id], *services.month_bounds(""))
    seconds = (timezone.now() - started).total_seconds()
    assert report.total.core_seconds == pytest.approx(4 * seconds, rel=0.05)
    assert list(report.days) == [timezone.now().date()]


def test_machine_hours_count_idle_time_and_are_cut_to_the_month(alice, group, priced):
    now = timezone.now()
    Machine.objects.create(
        group=group,
        name="m-1",
        created_at=now - dt.timedelta(hours=2),
        stopped_at=now - dt.timedelta(hours=1),
    )
    Machine.objects.create(group=group, name="m-2", created_at=now - dt.timedelta(minutes=30))
    usage = services.group_usage(group)
    assert usage["machine_hours"] == pytest.approx(1.5, abs=0.01)
    assert usage["core_hours"] == pytest.approx(6, abs=0.05)
    assert usage["cost"] == pytest.approx(1.5 * 0.36, abs=0.01)
    assert usage["estimated_cost_per_hour"] == 0.36
    month_start = services.month_bounds("")[0]
    Machine.objects.create(
        group=group,
        name="m-old",
        created_at=month_start - dt.timedelta(hours=3),
        stopped_at=month_start + dt.timedelta(hours=1),
    )
    last_month_start = month_start - dt.timedelta(days=1)
    month = services.report([group.project_id], *services.month_bounds(""))
    previous = services.report([group.project_id], *services.month_bounds(f"{last_month_start:%Y-%m}"))
    assert previous.machine_hours[group.project_id] == pytest.approx(3, abs=0.01)
    assert month.machine_hours[group.project_id] == pytest.approx(1.5 + 1, abs=0.01)


# -- the doors --------------------------------------------------------------------------------


def test_the_api_gives_usage_to_members_and_refuses_a_bad_month(api, client, alice, bob, group, priced):
    task = make_task(alice, group, to=HAPPY)
    body = api.get("/api/v1/usage", {"project": "dambreak"}).json()
    assert body["total"]["core_seconds"] == 40 and body["currency"] == "USD"
    assert body["users"] == [
        {"user": "alice", **{k: body["total"][k] for k in body["users"][0] if k != "user"}}
    ]
    assert api.get(f"/api/v1/tasks/{task.id}").json()["usage"]["core_seconds"] == 40
    assert api.get("/api/v1/machine-groups/lab/usage").json()["price_per_hour"] == 0.36
    types = {t["name"]: t for t in api.get("/api/v1/machine-types").json()}
    assert types["c2-standard-4"]["price_per_hour"] == 0.36 and types["e2-micro"]["price_per_hour"] == 0
    bad = api.get("/api/v1/usage", {"month": "2026-13"})
    assert bad.status_code == 400 and bad.json()["field"] == "month" and "YYYY-MM" in bad.json()["message"]
    client.defaults.pop("HTTP_AUTHORIZATION")
    client.force_login(bob)
    assert client.get(reverse("project-usage", args=["dambreak"])).status_code == 404
    bob_key = APIKey.issue(bob, "tests")[1]
    outsider = client.get("/api/v1/usage", {"project": "dambreak"}, HTTP_AUTHORIZATION=f"Bearer {bob_key}")
    assert outsider.status_code == 404
    everything = client.get("/api/v1/usage", HTTP_AUTHORIZATION=f"Bearer {bob_key}").json()
    assert everything["total"]["tasks"] == 0 and everything["projects"] == []


def test_the_usage_page_draws_a_day_chart_in_constant_queries(logged_in, alice, group, priced):
    make_task(alice, group, to=HAPPY)
    url = reverse("project-usage", args=["dambreak"])
    with CaptureQueriesContext(connection) as few:
        html = logged_in.get(url).content.decode()
    assert (
        html.count('<rect class="bar-ok"')
        == (services.month_bounds("")[1] - services.month_bounds("")[0]).days
    )
    assert "<title>" in html and "0.011 core-hours" in html  # 40 core-seconds
    for _ in range(20):
        make_task(alice, group, to=HAPPY)
    with CaptureQueriesContext(connection) as many:
        logged_in.get(url)
    assert len(many) == len(few)
    bad = logged_in.get(url, {"month": "December"})
    assert bad.status_code == 400 and "YYYY-MM" in bad.content.decode()
    task_page = logged_in.get(reverse("task-detail", args=[Task.objects.first().id])).content.decode()
    assert (
        'id="task-usage"' in task_page
        and "0.011 core-hours" in task_page
        and "0.36 USD per machine-hour" in task_page
    )


def test_an_admin_sets_a_price_for_a_catalog_type_only(admin_client):
    add = reverse("admin:tasks_app_machineprice_add")
    refused = admin_client.post(add, {"machine_type": "quantum-1", "price_per_hour": "1"})
    assert refused.status_code == 200 and not MachinePrice.objects.exists()
    negative = admin_client.post(add, {"machine_type": "e2-micro", "price_per_hour": "-1"})
    assert negative.status_code == 200 and not MachinePrice.objects.exists()
    admin_client.post(add, {"machine_type": "e2-micro", "price_per_hour": "0.01"})
    assert services.catalog()["e2-micro"].price_per_hour == Decimal("0.01")


# -- for real ------------------------------------------------------------------------------------


@pytest.fixture
def stack_env(mail_server):  # noqa: F811 - the fixture imported above
    # Its scheduler gives up on a dead destination at once and counts it failing after one message.
    return {
        "SIMDECK_NOTIFY_RETRIES": "1",
        "SIMDECK_NOTIFY_RETRY_SECONDS": "0.5",
        "SIMDECK_NOTIFY_FAILING_AFTER": "1",
        # The test's endpoints listen on this host.
        "SIMDECK_NOTIFY_PRIVATE_HOSTS": "true",
        # And its mail server too.
        "EMAIL_URL": mail_server.url,
    }


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_real_tasks_add_up_and_their_endings_reach_a_real_endpoint(
    settings,
    stack,
    client_for,
    alice,
    alice_key,
    tmp_path,
    endpoint,  # noqa: F811 - the endpoint fixture
    mail_server,  # noqa: F811 - the mail server fixture
):
    """Accounting and notifications on one stack: real tasks, the client, the CLI, a real webhook
    and a real mail server; a task's progress file on the way."""
    import time

    import simdeck
    from tasks_app.services import notifications
    from tests.client_fixtures import EXAMPLES, run_cli
    from tests.helpers import wait_for
    from tests.test_notifications import dead_url

    MachinePrice.objects.create(machine_type="n2-standard-2", price_per_hour=Decimal("3.6"))
    settings.SIMDECK_NOTIFY_PRIVATE_HOSTS = True
    env = {
        "SIMDECK_API_URL": stack.url,
        "SIMDECK_API_KEY": alice_key,
        "SIMDECK_CONFIG": str(tmp_path / "c.json"),
    }
    # Destinations through the command line: checked as the console checks them.
    bad = run_cli("notifications", "add", "nosuchscheme://example.org", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: This is not a destination Apprise")
    assert "Traceback" not in bad.stderr
    added = run_cli("notifications", "add", endpoint.url, "--name", "hook", "--batches", "--json", env=env)
    assert added.returncode == 0, added.stderr
    hook = json.loads(added.stdout)
    assert run_cli("notifications", "test", str(hook["id"]), env=env).returncode == 0
    assert endpoint.received.pop()["title"] == "Simdeck: a test"
    mail = run_cli("notifications", "add", "alice@example.org", "--tasks", "failed", env=env)
    assert mail.returncode == 0 and "Added destination" in mail.stderr, mail.stderr
    dead = notifications.add_rule(alice, label="dead", url=dead_url())
    listed = run_cli("notifications", "list", env=env)
    assert listed.returncode == 0 and "hook" in listed.stdout and "alice@example.org" in listed.stdout
    assert "tasks ended, batches (yours)" in listed.stdout
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=2)
    assert mg.estimate_cloud_cost(verbose=False) == pytest.approx(7.2), (
        "before it exists: the catalog's price"
    )
    mg.start()
    sim = simdeck.simulators.Commands()
    began = time.monotonic()
    # A batch of two; one tells how far it got in its progress file.
    tasks = sim.run_many(
        EXAMPLES / "commands-mesh-solve",
        [{"commands": ["echo 0.5 > .simdeck-progress; sleep 1.5"]}, {"commands": ["sleep 1.5"]}],
        on=mg,
    )
    bad = sim.run(EXAMPLES / "commands-mesh-solve", commands=["exit 3"], on=mg)
    for task in tasks:
        assert task.wait(polling_period=0.3, silent_mode=True) == "success"
    assert bad.wait(polling_period=0.3, silent_mode=True) == "failed"
    assert time.monotonic() - began < 60, "the endings waited for no destination"

    infos = [task.get_info() for task in tasks]
    for info in infos:
        # One core-second is 2 vCPUs × a computing second, measured by the database.
        assert 1.5 <= info.usage["computing_seconds"] < 10
        assert info.core_seconds == pytest.approx(2 * info.usage["computing_seconds"], abs=0.01)
        assert info.estimated_cost == pytest.approx(info.usage["computing_seconds"] / 3600 * 3.6, abs=1e-3)
    assert mg.estimate_cloud_cost(verbose=False) == pytest.approx(7.2)
    ended = [*infos, bad.get_info()]
    computing = sum(i.usage["computing_seconds"] for i in ended)
    assert mg.usage()["machine_hours"] >= computing / 3600, "machines were up at least while computing"
    assert Task.objects.get(pk=tasks[0].id).progress == 0.5, "read from its progress file"
    cli = run_cli("costs", "--json", env=env)
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["total"]["tasks"] == sum(1 for i in ended if i.usage["computing_seconds"] > 0)
    assert report["total"]["core_seconds"] == pytest.approx(2 * computing, abs=0.01)
    assert report["total"]["machine_hours"] >= computing / 3600
    table = run_cli("costs", "--by", "user", env=env)
    assert table.returncode == 0 and "alice" in table.stdout and "Total" in table.stdout

    wait_for(lambda: len(endpoint.received) >= 5, timeout=30, message="five notifications")
    titles = sorted(m["title"] for m in endpoint.received)
    batch = Task.objects.get(pk=tasks[0].id).batch_id
    expected = [f"Simdeck: task {t.id} success" for t in tasks] + [
        f"Simdeck: task {bad.id} failed",
        f"Simdeck: batch {batch} ended",
        f"Simdeck: machine group {mg.name} has no task left",
    ]
    assert titles == sorted(expected), titles
    assert "exited with code 3" in next(m["message"] for m in endpoint.received if bad.id in m["title"])
    assert f"All 2 tasks of batch {batch} on {mg.name} ended: 2 succeeded, 0 failed." in [
        m["message"] for m in endpoint.received
    ]
    wait_for(lambda: mail_server.received, timeout=30, message="the failure by e-mail")
    assert mail_server.received[0].rcpt_tos == ["alice@example.org"]
    assert f"Subject: Simdeck: task {bad.id} failed".encode() in mail_server.received[0].content
    assert len(mail_server.received) == 1, "failures only"
    wait_for(
        lambda: NotificationRule.objects.get(pk=dead.pk).failures >= 1,
        timeout=30,
        message="the dead destination to be marked failing",
    )
    assert "did not accept" in NotificationRule.objects.get(pk=dead.pk).last_error
    removed = run_cli("notifications", "remove", str(hook["id"]), "-y", env=env)
    assert removed.returncode == 0 and not NotificationRule.objects.filter(pk=hook["id"]).exists()
    gone = run_cli("notifications", "test", str(hook["id"]), env=env)
    assert gone.returncode == 3 and "No notification destination" in gone.stderr
    mg.terminate()


# -- budgets --------------------------------------------------------------------------------------


def submit(client, **overrides):
    body = {
        "simulator": "commands",
        "machine_group": "lab",
        "input_files": ["run.sh"],
        "parameters": {"commands": ["sh run.sh"]},
    } | overrides
    return client.post("/api/v1/tasks", body, content_type="application/json")


def test_a_budget_warns_at_80_percent_and_refuses_new_tasks_at_100(api, client, alice, bob, group):
    from tasks_app import teams

    services.start_group(group)
    teams.add_member(group.project, "bob", "member", actor=alice)
    make_task(alice, group, to=HAPPY)  # 40 core-seconds
    bob_key = APIKey.issue(bob, "tests")[1]
    as_bob = {"HTTP_AUTHORIZATION": f"Bearer {bob_key}"}

    # 45 core-seconds a month: 89 % used.
    refused = client.put(
        "/api/v1/projects/dambreak/budget",
        {"kind": "core-hours", "monthly_limit": 0.0125},
        content_type="application/json",
        **as_bob,
    )
    assert refused.status_code == 403 and "maintainer" in refused.json()["message"]
    body = api.put(
        "/api/v1/projects/dambreak/budget",
        {"kind": "core-hours", "monthly_limit": 0.0125},
        content_type="application/json",
    ).json()
    assert body["level"] == "warning" and body["percent"] == 88 and body["set_by"] == "alice"
    assert client.get("/api/v1/projects/dambreak/budget", **as_bob).json()["percent"] == 88
    assert submit(api).status_code == 201, "a warning refuses nothing"
    client.force_login(bob)
    overview = client.get(reverse("overview")).content.decode()
    assert "budget-warning" in overview and "88 %" in overview and "0.01 core-hours" in overview

    # 36 core-seconds a month: used up.
    api.put(
        "/api/v1/projects/dambreak/budget",
        {"kind": "core-hours", "monthly_limit": "0.01"},
        content_type="application/json",
    )
    answer = (
        submit(client, **{}, **as_bob)
        if False
        else client.post(
            "/api/v1/tasks",
            {
                "simulator": "commands",
                "machine_group": "lab",
                "input_files": ["run.sh"],
                "parameters": {"commands": ["x"]},
            },
            content_type="application/json",
            **as_bob,
        )
    )
    assert answer.status_code == 403 and answer.json()["error"] == "budget_exhausted"
    message = answer.json()["message"]
    assert "monthly budget of 0.01 core-hours" in message and "used 0.01" in message and "111 %" in message
    assert "alice (maintainers of dambreak)" in message
    batch = api.post(
        "/api/v1/tasks/batch",
        {
            "machine_group": "lab",
            "input_files": ["run.sh"],
            "tasks": [{"simulator": "commands", "parameters": {"commands": ["x"]}}],
        },
        content_type="application/json",
    )
    assert batch.status_code == 403 and batch.json()["error"] == "budget_exhausted"
    # In money it counts the machines, which cost nothing here: new tasks go again.
    api.put(
        "/api/v1/projects/dambreak/budget",
        {"kind": "money", "monthly_limit": 5},
        content_type="application/json",
    )
    assert submit(api).status_code == 201
    assert api.delete("/api/v1/projects/dambreak/budget").status_code == 204
    assert api.get("/api/v1/projects/dambreak/budget").json() is None
    kinds = [a.kind for a in group.project.activities.order_by("at")]
    assert kinds.count("budget-set") == 3 and kinds[-1] == "budget-removed"


def test_members_see_a_budget_past_80_percent_on_every_page_in_one_query(client, alice, bob, group):
    from tasks_app.services import budgets

    task = make_task(alice, group, to=HAPPY)  # 40 core-seconds
    budgets.set_budget(alice, group.project, "core-hours", "0.0125")  # 88 %
    client.force_login(alice)
    pages = [
        reverse("overview"),
        reverse("task-list"),
        reverse("task-detail", args=[task.id]),
        reverse("group-list"),
        reverse("account"),
        reverse("notification-rules"),
        reverse("status-reference"),
    ]
    for page in pages:
        shown = client.get(page).content.decode()
        assert shown.count("budget-warning") == 1, page
        assert "Project dambreak has used 0.01 core-hours of its monthly budget" in shown, page
        assert "(88 %)" in shown and "New tasks will be refused at 100 %." in shown, page

    def queries(page):
        with CaptureQueriesContext(connection) as done:
            assert client.get(page).status_code == 200
        return len(done)

    other = services.create_group(alice, machine_type="c2-standard-4", name="lab2", project="wind")
    make_task(alice, other, to=HAPPY)
    budgets.set_budget(alice, other.project, "core-hours", "100")  # far from it
    one = queries(reverse("account"))
    budgets.set_budget(alice, other.project, "core-hours", "0.01")  # 111 %
    assert queries(reverse("account")) == one, "the banner is one query, however many budgets"
    shown = client.get(reverse("account")).content.decode()
    assert shown.count("budget-warning") == 2 and "New tasks of wind are refused" in shown
    client.force_login(bob)
    assert "budget-warning" not in client.get(reverse("account")).content.decode(), "not bob's project"


def test_a_bad_budget_is_refused_with_a_clear_message(api, logged_in, alice, group):
    for payload, field, words in [
        ({"kind": "hours", "monthly_limit": 5}, "kind", "'core-hours' or 'money'"),
        ({"kind": "money", "monthly_limit": "lots"}, "monthly_limit", "not a number"),
        ({"kind": "money", "monthly_limit": 0}, "monthly_limit", "more than 0"),
        ({"kind": "money", "monthly_limit": "1e12"}, "monthly_limit", "at most"),
        ({"kind": "money", "monthly_limit": "NaN"}, "monthly_limit", "more than 0"),
    ]:
        answer = api.put("/api/v1/projects/dambreak/budget", payload, content_type="application/json")
        assert (
            answer.status_code == 400
            and answer.json()["field"] == field
            and words in answer.json()["message"]
        ), payload
    page = logged_in.post(
        reverse("project-budget", args=["dambreak"]), {"kind": "money", "monthly_limit": "-3"}
    )
    assert page.status_code == 400 and "more than 0" in page.content.decode()
    done = logged_in.post(
        reverse("project-budget", args=["dambreak"]), {"kind": "money", "monthly_limit": "12.5"}
    )
    assert done.status_code == 302
    page = logged_in.get(reverse("project-usage", args=["dambreak"])).content.decode()
    assert 'id="budget-state"' in page and "12.50 USD" in page and "(0 %)" in page
