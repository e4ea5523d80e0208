"""Console pages: they render for a logged-in user and refuse everyone else."""

import pytest
from django.urls import reverse

from tasks_app import lifecycle, services
from tasks_app.lifecycle import Status
from tasks_app.models import Task

pytestmark = pytest.mark.django_db

PAGES = ["task-list", "group-list", "status-reference"]


@pytest.fixture
def task(alice):
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab")
    task = Task.objects.create(
        owner=alice,
        project=group.project,
        machine_group=group,
        simulator="commands",
        metadata={"note": "<script>alert(1)</script>"},
    )
    lifecycle.transition(task, Status.SUBMITTED, reason="Input received; queued.")
    return task


@pytest.mark.parametrize("name", PAGES)
def test_anonymous_visitors_are_sent_to_log_in(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_anonymous_visitors_cannot_open_a_task(client, task):
    response = client.get(reverse("task-detail", args=[task.id]))
    assert response.status_code == 302


@pytest.mark.parametrize("name", PAGES)
def test_pages_render_for_a_logged_in_user(client, alice, task, name):
    client.force_login(alice)
    response = client.get(reverse(name))
    assert response.status_code == 200


def test_the_task_table_shows_id_simulator_status_and_group(client, alice, task):
    client.force_login(alice)
    html = client.get(reverse("task-list")).content.decode()
    assert task.id in html and "commands" in html and "In Queue" in html and "lab" in html


def test_the_task_table_answers_htmx_with_rows_only(client, alice, task):
    client.force_login(alice)
    html = client.get(reverse("task-list"), {"status": "in-queue"}, HTTP_HX_REQUEST="true").content.decode()
    assert task.id in html and "<html" not in html


def test_the_task_page_shows_the_guidance_and_the_status_changes(client, alice, task):
    client.force_login(alice)
    html = client.get(reverse("task-detail", args=[task.id])).content.decode()
    guidance = lifecycle.GUIDANCE[Status.SUBMITTED]
    for text in (guidance.what_happened, guidance.why, guidance.what_to_do):
        assert text.replace("'", "&#x27;") in html
    assert "Input received; queued." in html
    assert "Tasks ahead in the queue" in html


def test_user_text_is_escaped(client, alice, task):
    client.force_login(alice)
    html = client.get(reverse("task-detail", args=[task.id])).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_another_users_task_is_not_found(client, bob, task):
    client.force_login(bob)
    assert client.get(reverse("task-detail", args=[task.id])).status_code == 404
    assert task.id not in client.get(reverse("task-list")).content.decode()


def test_the_task_table_uses_a_constant_number_of_queries(client, alice, task, django_assert_max_num_queries):
    client.force_login(alice)
    for _ in range(20):
        Task.objects.create(
            owner=alice, project=task.project, machine_group=task.machine_group, simulator="commands"
        )
    # session, user, saved views, the project and group name lists, the page of tasks
    # One of them is every page's budget banner (tasks_app.context_processors).
    with django_assert_max_num_queries(7):
        client.get(reverse("task-list"))


def test_killing_a_queued_task_from_its_page_ends_it(client, alice, task):
    client.force_login(alice)
    response = client.post(reverse("task-kill", args=[task.id]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert "was killed before it ran" in html and "Killed" in html and "<html" not in html
    task.refresh_from_db()
    assert task.status == Status.KILLED


def test_killing_needs_a_post_with_a_csrf_token(alice, task):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.get(reverse("task-kill", args=[task.id])).status_code == 405
    assert strict.post(reverse("task-kill", args=[task.id])).status_code == 403
    task.refresh_from_db()
    assert task.status == Status.SUBMITTED


def test_nobody_kills_another_users_task(client, bob, task):
    client.force_login(bob)
    assert client.post(reverse("task-kill", args=[task.id])).status_code == 404
    task.refresh_from_db()
    assert task.status == Status.SUBMITTED
