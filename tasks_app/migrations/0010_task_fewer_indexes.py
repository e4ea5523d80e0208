"""Indexes on the task table that no query needs, dropped: each one is written at every status move.

A move changes ``status``, which indexes include, so PostgreSQL adds an entry
to every index of the table for each move. The plain indexes on ``owner_id``
and ``project_id`` repeat the first column of ``task_owner_created`` and
``task_project_created``; the ``varchar_pattern_ops`` twins Django adds for
``LIKE`` on ``resubmitted_from_id`` and ``review_state`` serve no query
(the one on ``id`` stays: the tasks table searches ids by prefix). Only the
indexes are dropped, as in 0008, so the foreign keys are not validated again.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

DROPPED = {
    "tasks_app_task_owner_id_0f56036a": '"owner_id"',
    "tasks_app_task_project_id_1ff3252f": '"project_id"',
    "tasks_app_task_resubmitted_from_id_06752fac_like": '"resubmitted_from_id" varchar_pattern_ops',
    "tasks_app_task_review_state_c6c19d24_like": '"review_state" varchar_pattern_ops',
}


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("tasks_app", "0009_project_hour_counts"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="task",
                    name="owner",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="task",
                    name="project",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="tasks",
                        to="tasks_app.project",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=f'CREATE INDEX IF NOT EXISTS "{name}" ON "tasks_app_task" ({columns})',
                )
                for name, columns in DROPPED.items()
            ],
        ),
    ]
