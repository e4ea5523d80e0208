"""Celery task definitions: what machines and the scheduler execute."""

from celery import shared_task, signals
from django.conf import settings
from django.db import close_old_connections

from tasks_app import broker, housekeeping
from tasks_app.executor import inspect as _inspect  # noqa: F401  (registers the remote-control command)
from tasks_app.executor import machine as _machine  # noqa: F401  (connects the worker signals)
from tasks_app.executor.machine import current_machine
from tasks_app.executor.run import execute_next


# Acknowledged as soon as the machine takes it, before the claim: a simulation
# may run for hours, longer than a broker holds a message unacknowledged
# (RabbitMQ's consumer_timeout closes the channel, Redis' visibility timeout
# hands the message out again). The token only says "a task waits"; the claim
# in the database is the lock, a machine lost mid-task is reaped and its task
# requeued, and a token lost before its claim is re-announced by the scheduler
# (housekeeping.restore_lost_tokens).
@shared_task(name=broker.RUN_NEXT, acks_late=False)
def run_next(group_id: int) -> str | None:
    """A task waits in this machine's group: claim the head of the queue and run it."""
    return execute_next(group_id, current_machine())


@signals.task_prerun.connect
def _usable_connection(**_) -> None:
    # The database connection is kept from task to task (CELERY_DB_REUSE_MAX):
    # drop it if it broke or aged since, e.g. across a database restart.
    close_old_connections()


@shared_task(name="simdeck.clean_abandoned_uploads")
def clean_abandoned_uploads() -> int:
    return housekeeping.clean_abandoned_uploads(settings.SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES)


@shared_task(name="simdeck.housekeeping")
def run_housekeeping() -> dict:
    return housekeeping.run()
