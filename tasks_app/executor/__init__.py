"""The machine side: a Celery worker running one task at a time."""
