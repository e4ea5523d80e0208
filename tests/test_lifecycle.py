"""The lifecycle: allowed moves work, others are refused, races have one winner."""

import datetime as dt
import threading

import pytest
from django.db import connection, connections
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app import lifecycle, services, statuses
from tasks_app.lifecycle import Status, transition
from tasks_app.models import Machine, Task, TaskEvent

ALL_MOVES = [(old, new) for old in Status for new in Status]


def make_task(owner, group, status: Status) -> Task:
    # Test setup only: put a task directly into a status to test moves from it.
    return Task.objects.create(
        owner=owner, project=group.project, machine_group=group, simulator="commands", status=status
    )


def test_every_status_has_a_label_guidance_and_a_row():
    for status in Status:
        guidance = lifecycle.GUIDANCE[status]
        assert status.label and guidance.what_happened and guidance.why and guidance.what_to_do
        assert status in lifecycle.TRANSITIONS


def test_terminal_statuses_are_those_with_nowhere_to_go_but_a_resubmission():
    assert Status.SUCCESS in lifecycle.TERMINAL
    assert Status.SPOT_PREEMPTED in lifecycle.TERMINAL
    assert Status.SUBMITTED not in lifecycle.TERMINAL
    assert Status.PENDING_KILL not in lifecycle.TERMINAL
    assert lifecycle.FAILURES == lifecycle.TERMINAL - {Status.SUCCESS}


@pytest.mark.parametrize(
    "text, status",
    [
        ("completed", Status.SUCCESS),
        ("Success", Status.SUCCESS),
        ("in-queue", Status.SUBMITTED),
        ("computation-started", Status.STARTED),
        ("computation-ended", Status.FINALIZING),
        ("executer-failed", Status.EXECUTOR_FAILED),
        ("executer-terminated-ttl-exceeded", Status.EXECUTOR_TERMINATED_TTL),
        ("executor-terminated-TTL-exceeded", Status.EXECUTOR_TERMINATED_TTL),
        (" zombie ", Status.ZOMBIE),
    ],
)
def test_it_accepts_every_spelling_of_a_status(text, status):
    assert lifecycle.parse_status(text) == status


def test_it_names_the_known_statuses_for_an_unknown_one():
    with pytest.raises(ValueError, match="Known statuses: pending-input"):
        lifecycle.parse_status("finished")


@pytest.mark.django_db
@pytest.mark.parametrize("old, new", ALL_MOVES, ids=[f"{o.value}->{n.value}" for o, n in ALL_MOVES])
def test_a_move_works_exactly_when_the_table_allows_it(alice, group, old, new):
    task = make_task(alice, group, old)
    if new in lifecycle.TRANSITIONS[old]:
        assert transition(task, new, reason="test")
        task.refresh_from_db()
        assert task.status == new
        event = TaskEvent.objects.get(task=task)
        assert (event.from_status, event.to_status, event.reason) == (old, new, "test")
    else:
        with pytest.raises(lifecycle.IllegalTransition):
            transition(task, new, reason="test")
        task.refresh_from_db()
        assert task.status == old
        assert not TaskEvent.objects.filter(task=task).exists()


@pytest.mark.django_db
def test_a_move_from_a_stale_status_loses_and_writes_nothing(alice, group):
    task = make_task(alice, group, Status.SUBMITTED)
    stale = Task.objects.get(pk=task.pk)
    assert transition(task, Status.KILLED, reason="user")
    assert not transition(stale, Status.PREPARING, reason="machine")
    assert Task.objects.get(pk=task.pk).status == Status.KILLED
    assert TaskEvent.objects.filter(task=task).count() == 1


@pytest.mark.django_db
def test_moves_stamp_the_phase_timestamps(alice, group):
    task = make_task(alice, group, Status.PENDING_INPUT)
    transition(task, Status.SUBMITTED)
    transition(task, Status.PREPARING)
    transition(task, Status.STARTED)
    transition(task, Status.FINALIZING)
    transition(task, Status.SUCCESS)
    task.refresh_from_db()
    assert task.queued_at <= task.preparing_at <= task.started_at <= task.finalizing_at <= task.ended_at


@pytest.mark.django_db
def test_a_move_through_statuses_records_each_with_its_time_in_one_write(alice, group):
    task = make_task(alice, group, Status.PREPARING)
    spawned = timezone.now() - dt.timedelta(milliseconds=30)
    exited = spawned + dt.timedelta(milliseconds=10)
    steps = [(Status.STARTED, "started", spawned), (Status.FINALIZING, "exited", exited)]
    with CaptureQueriesContext(connection) as queries:
        assert transition(task, Status.SUCCESS, reason="stored", passing=steps, exit_code=0)
    assert len(queries) == 1
    task.refresh_from_db()
    assert (task.status, task.exit_code) == (Status.SUCCESS, 0)
    assert (task.started_at, task.finalizing_at) == (spawned, exited)
    assert exited < task.ended_at == task.status_changed_at
    events = list(TaskEvent.objects.filter(task=task).values_list("from_status", "to_status", "reason", "at"))
    assert events == [
        (Status.PREPARING, Status.STARTED, "started", spawned),
        (Status.STARTED, Status.FINALIZING, "exited", exited),
        (Status.FINALIZING, Status.SUCCESS, "stored", task.ended_at),
    ]


@pytest.mark.django_db
def test_a_move_through_statuses_is_refused_whole_or_lost_whole(alice, group):
    task = make_task(alice, group, Status.PREPARING)
    now = timezone.now()
    with pytest.raises(lifecycle.IllegalTransition):  # preparing cannot go straight to finalizing
        transition(task, Status.SUCCESS, passing=[(Status.FINALIZING, "", now)])
    stale = Task.objects.get(pk=task.pk)
    assert transition(task, Status.PENDING_KILL, reason="user")
    steps = [(Status.STARTED, "", now), (Status.FINALIZING, "", now)]
    assert not transition(stale, Status.SUCCESS, passing=steps)
    events = TaskEvent.objects.filter(task=task).values_list("to_status", flat=True)
    assert list(events) == [Status.PENDING_KILL]


@pytest.mark.django_db
def test_a_machine_cannot_move_a_task_that_was_claimed_again_meanwhile(alice, group):
    # Reclaimed while preparing, back in the queue, claimed again: the same status, another attempt.
    task = make_task(alice, group, Status.PREPARING)
    Task.objects.filter(pk=task.pk).update(attempt=2)
    assert not transition(task, Status.STARTED, in_attempt=1)
    assert not transition(task, Status.STARTED, in_attempt=1, attempt=F("attempt"))  # through the ORM
    assert Task.objects.get(pk=task.pk).status == Status.PREPARING
    assert transition(task, Status.STARTED, in_attempt=2)


@pytest.mark.django_db
def test_a_move_may_write_expressions_and_model_instances(alice, group):
    task = make_task(alice, group, Status.SUBMITTED)
    machine = Machine.objects.create(group=group, name="m-1", state=Machine.State.ONLINE)
    assert transition(task, Status.PREPARING, by_machine=machine, machine=machine, attempt=F("attempt") + 1)
    task.refresh_from_db()
    assert (task.status, task.machine, task.attempt) == (Status.PREPARING, machine, 1)
    assert TaskEvent.objects.get(task=task).machine == machine


@pytest.mark.django_db(transaction=True)
def test_two_connections_racing_from_one_status_have_exactly_one_winner(alice, group):
    task = make_task(alice, group, Status.SUBMITTED)
    barrier = threading.Barrier(2)
    results = {}

    def contend(new):
        try:
            copy = Task.objects.get(pk=task.pk)
            barrier.wait()
            results[new] = transition(copy, new, reason="race")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=contend, args=(s,)) for s in (Status.PREPARING, Status.KILLED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [False, True]
    winner = next(s for s, won in results.items() if won)
    assert Task.objects.get(pk=task.pk).status == winner
    assert list(TaskEvent.objects.filter(task=task).values_list("to_status", flat=True)) == [winner]
    assert connection.vendor == "postgresql"


def test_nothing_else_writes_the_status_column():
    """Only the lifecycle (and the SQL it runs) updates ``status``; grep the code to keep it so."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent / "tasks_app"
    pattern = re.compile(r"(\.status\s*=[^=]|[(,]\s*status\s*=\s*(Status|lifecycle|new|\"))")
    offenders = []
    for path in root.rglob("*.py"):
        if path.name in ("lifecycle.py", "lifecycle_sql.py") or "migrations" in path.parts:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if ".update(" in line and pattern.search(line):
                offenders.append(f"{path.name}:{lineno}: {line.strip()}")
            elif re.search(r"\btask\.status\s*=[^=]", line) and path.name != "remote.py":
                # (A machine elsewhere mirrors in memory what the server answered; the server moved it.)
                offenders.append(f"{path.name}:{lineno}: {line.strip()}")
    assert offenders == []


def online_machine(group, name="m1"):
    from tasks_app.models import Machine

    return Machine.objects.create(group=group, name=name, state=Machine.State.ONLINE)


@pytest.mark.django_db
def test_a_claim_takes_the_head_of_the_queue_and_records_it(alice, group):
    import datetime as dt

    from django.utils import timezone

    machine = online_machine(group)
    first, second = make_task(alice, group, Status.SUBMITTED), make_task(alice, group, Status.SUBMITTED)
    now = timezone.now()
    Task.objects.filter(pk=second.pk).update(queued_at=now)
    Task.objects.filter(pk=first.pk).update(queued_at=now - dt.timedelta(seconds=1), attempt=1)
    claimed, online = lifecycle.claim_head(group.pk, machine, reason="Picked up.")
    assert online and claimed.pk == first.pk
    assert (claimed.status, claimed.machine_id, claimed.attempt) == (Status.PREPARING, machine.pk, 2)
    assert claimed.parameters == {} and claimed.preparing_at is not None  # read back as the ORM would
    stored = Task.objects.get(pk=first.pk)
    assert (stored.status, stored.machine_id, stored.attempt) == (Status.PREPARING, machine.pk, 2)
    event = TaskEvent.objects.get(task=first)
    assert (event.from_status, event.to_status, event.machine_id) == (
        Status.SUBMITTED,
        Status.PREPARING,
        machine.pk,
    )
    assert Task.objects.get(pk=second.pk).status == Status.SUBMITTED


@pytest.mark.django_db
def test_a_claim_passes_over_tasks_that_left_the_queue_and_finds_it_empty(alice, group):
    machine = online_machine(group)
    make_task(alice, group, Status.KILLED)
    assert lifecycle.claim_head(group.pk, machine, reason="Picked up.") == (None, True)
    assert not TaskEvent.objects.exists()


@pytest.mark.django_db
def test_a_machine_no_longer_online_claims_nothing(alice, group):
    from tasks_app.models import Machine

    machine = online_machine(group)
    task = make_task(alice, group, Status.SUBMITTED)
    Machine.objects.filter(pk=machine.pk).update(state=Machine.State.RECLAIMED)
    assert lifecycle.claim_head(group.pk, machine, reason="Picked up.") == (None, False)
    assert Task.objects.get(pk=task.pk).status == Status.SUBMITTED
    assert not TaskEvent.objects.exists()


def test_the_status_facts_agree_with_the_transition_table():
    """Whether a status is final and whether a kill applies are facts of it; the moves bear them out."""
    for status in Status:
        moves = lifecycle.TRANSITIONS[status]
        assert statuses.FACTS[status].final == (not moves - {Status.SUBMITTED}), status
        facts = statuses.FACTS[status]
        # A kill ends a task no machine holds, and asks the machine of one it holds.
        kill_applies = (Status.KILLED in moves and not facts.on_machine) or Status.PENDING_KILL in moves
        assert facts.killable == kill_applies, status


def test_killing_every_task_passes_over_one_that_is_finalizing(db, alice, group):
    """A task storing its outputs cannot be killed, so a kill of all does not count it."""
    finalizing = make_task(alice, group, Status.FINALIZING)
    queued = make_task(alice, group, Status.SUBMITTED)
    results = services.kill_all(Task.objects.filter(pk__in=[finalizing.pk, queued.pk]), actor=alice)
    assert results == [(queued.pk, True, f"Task {queued.pk} was killed before it ran.")]
    assert Task.objects.get(pk=finalizing.pk).status == Status.FINALIZING
