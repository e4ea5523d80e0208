"""Per-project counts of ended tasks by hour and final status, kept by triggers on the task table;
an index of the latest failures.

The same scheme as ``0005_project_status_counts``: rows are only appended
(``+1`` for the hour and status a task ended in, ``-1`` for where it no longer
counts), per statement for inserts and deletes and per row for updates that
change ``ended_at``, or the status or project of an ended task; readers sum
them, and ``tasks_app.task_counts.fold`` sums them up now and then.

Hours are whole UTC hours (``date_trunc`` in UTC), whatever the session's time
zone says. Both serve the overview, which read every task that ended in the
last day to count them, and walked past every recent success to find the
latest failures.
"""

from django.db import migrations, models

HOURS = "tasks_app_projecthourcount"
TASKS = "tasks_app_task"
HOUR = "date_trunc('hour', {t}.ended_at, 'UTC')"

FORWARD = f"""
CREATE FUNCTION tasks_app_hour_inserted_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {HOURS} (project_id, hour, status, tasks)
    SELECT project_id, {HOUR.format(t="added")}, status, count(*)
    FROM added WHERE ended_at IS NOT NULL GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_app_hour_deleted_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {HOURS} (project_id, hour, status, tasks)
    SELECT project_id, {HOUR.format(t="removed")}, status, -count(*)
    FROM removed WHERE ended_at IS NOT NULL GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_app_hour_moved_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.ended_at IS NOT NULL THEN
        INSERT INTO {HOURS} (project_id, hour, status, tasks)
        VALUES (OLD.project_id, {HOUR.format(t="OLD")}, OLD.status, -1);
    END IF;
    IF NEW.ended_at IS NOT NULL THEN
        INSERT INTO {HOURS} (project_id, hour, status, tasks)
        VALUES (NEW.project_id, {HOUR.format(t="NEW")}, NEW.status, 1);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_app_hour_truncated_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {HOURS};
    RETURN NULL;
END $$;

CREATE TRIGGER task_hours_insert AFTER INSERT ON {TASKS}
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_app_hour_inserted_tasks();
CREATE TRIGGER task_hours_delete AFTER DELETE ON {TASKS}
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_app_hour_deleted_tasks();
CREATE TRIGGER task_hours_update AFTER UPDATE ON {TASKS}
    FOR EACH ROW
    WHEN (OLD.ended_at IS DISTINCT FROM NEW.ended_at
          OR (NEW.ended_at IS NOT NULL
              AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.project_id IS DISTINCT FROM NEW.project_id)))
    EXECUTE FUNCTION tasks_app_hour_moved_task();
CREATE TRIGGER task_hours_truncate AFTER TRUNCATE ON {TASKS}
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_app_hour_truncated_tasks();

-- The tasks that ended already, counted once.
INSERT INTO {HOURS} (project_id, hour, status, tasks)
SELECT project_id, {HOUR.format(t=TASKS)}, status, count(*)
FROM {TASKS} WHERE ended_at IS NOT NULL GROUP BY 1, 2, 3;
"""

BACKWARD = f"""
DROP TRIGGER task_hours_insert ON {TASKS};
DROP TRIGGER task_hours_delete ON {TASKS};
DROP TRIGGER task_hours_update ON {TASKS};
DROP TRIGGER task_hours_truncate ON {TASKS};
DROP FUNCTION tasks_app_hour_inserted_tasks();
DROP FUNCTION tasks_app_hour_deleted_tasks();
DROP FUNCTION tasks_app_hour_moved_task();
DROP FUNCTION tasks_app_hour_truncated_tasks();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0008_task_group_succeeded"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectHourCount",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("hour", models.DateTimeField()),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending-input", "Waiting for Input"),
                            ("submitted", "In Queue"),
                            ("preparing-to-compute", "Preparing to Compute"),
                            ("started", "In Progress"),
                            ("finalizing", "Finalizing"),
                            ("pending-kill", "Pending Kill"),
                            ("success", "Success"),
                            ("failed", "Failed"),
                            ("killed", "Killed"),
                            ("zombie", "Machine Terminated in Queue"),
                            ("spot-instance-preempted", "Spot Reclaimed"),
                            ("executor-terminated", "Task Runner Terminated"),
                            ("executor-terminated-by-user", "Machine Terminated by User"),
                            ("executor-terminated-TTL-exceeded", "Machine Time Limit Reached"),
                            ("executor-failed", "Runtime Error"),
                            ("ttl-exceeded", "Task Timed Out"),
                        ],
                        max_length=40,
                    ),
                ),
                ("tasks", models.BigIntegerField()),
                (
                    "project",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="hour_counts",
                        to="tasks_app.project",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["hour", "project"], name="hour_count_hour")],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(
                    (
                        "status__in",
                        [
                            "executor-failed",
                            "executor-terminated",
                            "executor-terminated-TTL-exceeded",
                            "executor-terminated-by-user",
                            "failed",
                            "killed",
                            "spot-instance-preempted",
                            "ttl-exceeded",
                            "zombie",
                        ],
                    )
                ),
                fields=["-ended_at"],
                name="task_failed_ended",
            ),
        ),
    ]
