"""Celery task definitions: what machines and the scheduler execute."""

from celery import shared_task
from django.conf import settings

from tasks_app import services
from tasks_app.executor import machine as _machine  # noqa: F401  (connects the worker signals)
from tasks_app.executor.machine import current_machine
from tasks_app.executor.run import execute


@shared_task(name="tasks_app.run_task")
def run_task(task_id: str) -> None:
    execute(task_id, current_machine())


@shared_task(name="tasks_app.scheduler.clean_abandoned_uploads")
def clean_abandoned_uploads() -> int:
    return services.clean_abandoned_uploads(settings.SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES)
