"""The Celery application: machines are its workers, one queue per group."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("simdeck")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
