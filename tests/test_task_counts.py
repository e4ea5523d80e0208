"""Per-project task counts by status: kept by triggers, equal to a fresh count whatever
path changed the tasks, folded and rebuilt on demand, read by the projects page."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.urls import reverse
from django.utils import timezone

from tasks_app import housekeeping, services, task_counts
from tasks_app.lifecycle import Status, transition
from tasks_app.models import ProjectHourCount, ProjectStatusCount, Task

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]

HAPPY = [Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS]


def make_task(owner, group, to=(), *, start=None) -> Task:
    task = Task.objects.create(
        owner=owner, project=group.project, machine_group=group, simulator="commands", parameters={}
    )
    start = start or timezone.now() - dt.timedelta(hours=1)
    for i, status in enumerate(to):
        assert transition(task, status, reason="test", at=start + dt.timedelta(seconds=10 * (i + 1)))
    return task


EVER = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def assert_counts_match():
    assert task_counts.current() == task_counts.counted()
    assert task_counts.ended_by_hour() == task_counts.ended_by_hour_counted()


def test_counts_follow_transitions_bulk_kills_and_deletions(alice, bob, group):
    other = services.create_group(bob, machine_type="c2-standard-4", name="other", project="sweeps")
    done = [make_task(alice, group, HAPPY) for _ in range(3)]
    make_task(alice, group, [*HAPPY[:4], Status.FAILED])
    make_task(alice, group, HAPPY[:3])
    queued = [make_task(alice, group, [Status.SUBMITTED]) for _ in range(4)]
    make_task(bob, other, [Status.SUBMITTED, Status.PREPARING, Status.EXECUTOR_TERMINATED, Status.SUBMITTED])
    make_task(bob, other, [Status.SUBMITTED, Status.PREPARING, Status.STARTED])
    assert_counts_match()
    assert task_counts.current()[(group.project_id, Status.SUCCESS)] == (3, dt.timedelta(seconds=90))

    # A bulk kill, a group taken down with its queue, a bulk insert, a move between projects.
    services.kill_all(Task.objects.filter(pk__in=[t.pk for t in queued[:2]]), actor=alice)
    services.terminate_group(other, actor=bob)
    Task.objects.bulk_create(
        Task(owner=alice, project=group.project, machine_group=group, simulator="commands") for _ in range(5)
    )
    Task.objects.filter(pk=done[0].pk).update(project=other.project)
    assert_counts_match()

    # Deletions, one and many; then the rows of emptied pairs fold away.
    done[1].delete()
    Task.objects.filter(status=Status.PENDING_INPUT).delete()
    assert_counts_match()
    task_counts.fold()
    assert_counts_match()
    Task.objects.all().delete()
    task_counts.fold()
    assert task_counts.current() == {} and not ProjectStatusCount.objects.exists()
    assert not ProjectHourCount.objects.exists()


def test_ended_tasks_are_counted_in_the_hour_they_ended(alice, bob, group):
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=5)
    late = make_task(alice, group, HAPPY, start=hour + dt.timedelta(minutes=59, seconds=30))
    make_task(alice, group, [*HAPPY[:4], Status.FAILED], start=hour)
    make_task(alice, group, HAPPY[:3], start=hour)
    next_hour = hour + dt.timedelta(hours=1)
    assert task_counts.ended_by_hour(hour) == {(next_hour, Status.SUCCESS): 1, (hour, Status.FAILED): 1}
    assert task_counts.ended_by_hour(next_hour) == {(next_hour, Status.SUCCESS): 1}
    # Moved by hand, in time and to another status: counted where it is now.
    Task.objects.filter(pk=late.pk).update(ended_at=hour, status=Status.KILLED)
    assert task_counts.ended_by_hour(hour) == {(hour, Status.KILLED): 1, (hour, Status.FAILED): 1}
    other = services.create_group(bob, machine_type="c2-standard-4", name="other", project="sweeps")
    make_task(bob, other, HAPPY, start=hour)
    assert task_counts.ended_by_hour(hour, [other.project_id]) == {(hour, Status.SUCCESS): 1}
    assert_counts_match()


def test_fold_leaves_one_row_per_project_and_status(alice, group):
    start = timezone.now() - dt.timedelta(hours=1)
    for _ in range(3):
        make_task(alice, group, HAPPY, start=start)
    before = task_counts.current()
    assert ProjectStatusCount.objects.filter(project=group.project, status=Status.SUCCESS).count() > 1
    assert task_counts.fold() > 0
    assert task_counts.current() == before
    pairs = ProjectStatusCount.objects.values_list("project_id", "status")
    assert len(pairs) == len(set(pairs)) == len(before)
    hours = ProjectHourCount.objects.values_list("project_id", "hour", "status")
    assert len(hours) == len(set(hours)) == 1
    assert task_counts.fold() == 0
    assert_counts_match()


def test_the_housekeeping_folds_the_counts(alice, group, monkeypatch):
    monkeypatch.setattr(housekeeping, "restore_lost_tokens", lambda: 0)
    make_task(alice, group, HAPPY)
    assert housekeeping.run()["task_counts_folded"] > 0


def test_rebuild_repairs_counts_that_drifted(alice, group):
    make_task(alice, group, HAPPY)
    call_command("taskcounts")
    ProjectStatusCount.objects.create(
        project=group.project, status=Status.FAILED, tasks=7, compute=dt.timedelta(0)
    )
    ProjectHourCount.objects.create(project=group.project, hour=EVER, status=Status.FAILED, tasks=2)
    with pytest.raises(CommandError, match="2 counts differ"):
        call_command("taskcounts")
    call_command("taskcounts", rebuild=True)
    assert_counts_match()
    assert ProjectStatusCount.objects.count() == ProjectHourCount.objects.count() == 1


def test_the_projects_page_reads_the_counts(logged_in, alice, group, django_assert_max_num_queries):
    make_task(alice, group, HAPPY)
    make_task(alice, group, [Status.SUBMITTED])
    make_task(alice, group, [*HAPPY[:4], Status.FAILED])
    # Not a task anywhere: the page shows what the summary says.
    ProjectStatusCount.objects.create(
        project=group.project, status=Status.KILLED, tasks=1000, compute=dt.timedelta(0)
    )
    with django_assert_max_num_queries(5):
        response = logged_in.get(reverse("project-list"))
    project = next(p for p in response.context["projects"] if p.name == "dambreak")
    assert (project.total, project.active, project.succeeded, project.failed) == (1003, 1, 1, 1001)
    assert project.compute == dt.timedelta(seconds=60)


def test_a_project_without_compute_shows_none(logged_in, alice, group):
    make_task(alice, group, [Status.SUBMITTED])
    response = logged_in.get(reverse("project-list"))
    project = next(p for p in response.context["projects"] if p.name == "dambreak")
    assert (project.total, project.compute) == (1, None)


@pytest.mark.django_db(transaction=True)
def test_workers_moving_tasks_of_one_project_do_not_wait_for_each_other(alice, group):
    first, second = make_task(alice, group, [Status.SUBMITTED]), make_task(alice, group, [Status.SUBMITTED])
    moved, holding = threading.Event(), threading.Event()
    errors = []

    def hold_first():
        try:
            with transaction.atomic():
                assert transition(Task.objects.get(pk=first.pk), Status.PREPARING)
                holding.set()
                moved.wait(10)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            holding.set()
            connections.close_all()

    worker = threading.Thread(target=hold_first)
    worker.start()
    try:
        holding.wait(10)
        with transaction.atomic(), connection.cursor() as cursor:
            # Waiting on the other transaction's counter row would fail here, not hang.
            cursor.execute("SET LOCAL lock_timeout = '2s'")
            assert transition(Task.objects.get(pk=second.pk), Status.PREPARING)
    finally:
        moved.set()
        worker.join()
    assert errors == []
    assert_counts_match()
    assert task_counts.current()[(group.project_id, Status.PREPARING)][0] == 2
