"""Fewer index entries to write at each status move.

A move writes an entry into every index of the task table, and each event
row into every index of the event table. Indexes of columns that most rows
leave empty (a resubmission's original, who reviewed it, a review state
other than "unreviewed", the person behind an event) now hold only the rows
where they are set. Dropped outright: the events' plain index on the task,
which the index on (task, at) already serves, with its ``LIKE`` twin; the
count summary's index on the project, which ``status_count_project`` starts
with; and the ``LIKE`` twin of the task id, since the tasks table searches
an id prefix as a range of the primary key (views/table.py). As in 0010,
only the indexes change, so no foreign key is validated again.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

DROPPED = {
    "tasks_app_projectstatuscount_project_id_d7f02bd4": ("tasks_app_projectstatuscount", '"project_id"'),
    "tasks_app_task_resubmitted_from_id_06752fac": ("tasks_app_task", '"resubmitted_from_id"'),
    "tasks_app_task_review_state_c6c19d24": ("tasks_app_task", '"review_state"'),
    "tasks_app_task_reviewed_by_id_85423548": ("tasks_app_task", '"reviewed_by_id"'),
    "tasks_app_task_id_f6fb25eb_like": ("tasks_app_task", '"id" varchar_pattern_ops'),
    "tasks_app_taskevent_actor_id_20d8da78": ("tasks_app_taskevent", '"actor_id"'),
    "tasks_app_taskevent_task_id_71b1f23c": ("tasks_app_taskevent", '"task_id"'),
    "tasks_app_taskevent_task_id_71b1f23c_like": ("tasks_app_taskevent", '"task_id" varchar_pattern_ops'),
}


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0010_task_fewer_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="projectstatuscount",
                    name="project",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="status_counts",
                        to="tasks_app.project",
                    ),
                ),
                migrations.AlterField(
                    model_name="task",
                    name="resubmitted_from",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="resubmissions",
                        to="tasks_app.task",
                    ),
                ),
                migrations.AlterField(
                    model_name="task",
                    name="review_state",
                    field=models.CharField(
                        choices=[
                            ("unreviewed", "Unreviewed"),
                            ("approved", "Approved"),
                            ("needs-attention", "Needs attention"),
                        ],
                        default="unreviewed",
                        max_length=20,
                    ),
                ),
                migrations.AlterField(
                    model_name="task",
                    name="reviewed_by",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="taskevent",
                    name="actor",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="taskevent",
                    name="task",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="tasks_app.task",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({columns})',
                )
                for name, (table, columns) in DROPPED.items()
            ],
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("review_state", "unreviewed"), _negated=True),
                fields=["review_state", "-created_at"],
                name="task_reviewed",
            ),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("resubmitted_from__isnull", False)),
                fields=["resubmitted_from"],
                name="task_resubmitted_from",
            ),
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("reviewed_by__isnull", False)),
                fields=["reviewed_by"],
                name="task_reviewed_by",
            ),
        ),
        migrations.AddIndex(
            model_name="taskevent",
            index=models.Index(
                condition=models.Q(("actor__isnull", False)), fields=["actor"], name="event_actor"
            ),
        ),
    ]
