"""Per-project task counts by status, kept by triggers on the task table.

Every change to the task table that moves a task into or out of a (project,
status) pair, or changes its compute time (``ended_at - preparing_at``),
appends rows to ``tasks_app_projectstatuscount``: -1 and the old compute for
where the task was, +1 and the new compute for where it is. Triggers see every
path: ``lifecycle.transition``, bulk inserts, the benchmark's ``INSERT ...
SELECT``, deletions, even SQL typed by hand.

The rows are only ever appended here, never updated, so concurrent workers
moving tasks of one busy project never wait for each other on a shared row
and cannot deadlock on it. ``tasks_app.task_counts.fold`` periodically
replaces a pair's rows by their sum; readers sum whatever rows there are.

Inserts and deletes are counted per statement from their transition tables
(one row per pair, however many tasks a bulk insert makes); updates per row,
and only when one of the four columns changed, so the many updates that do
not move a task (outputs, metadata, reviews) cost nothing.
"""

from django.db import migrations, models

COUNTS = "tasks_app_projectstatuscount"
TASKS = "tasks_app_task"
COMPUTE = "coalesce({t}.ended_at - {t}.preparing_at, interval '0')"

FORWARD = f"""
CREATE FUNCTION tasks_app_count_inserted_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {COUNTS} (project_id, status, tasks, compute)
    SELECT project_id, status, count(*), sum({COMPUTE.format(t="added")})
    FROM added GROUP BY project_id, status;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_app_count_deleted_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {COUNTS} (project_id, status, tasks, compute)
    SELECT project_id, status, -count(*), -sum({COMPUTE.format(t="removed")})
    FROM removed GROUP BY project_id, status;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_app_count_moved_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {COUNTS} (project_id, status, tasks, compute) VALUES
        (OLD.project_id, OLD.status, -1, -{COMPUTE.format(t="OLD")}),
        (NEW.project_id, NEW.status, 1, {COMPUTE.format(t="NEW")});
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_app_count_truncated_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM {COUNTS};
    RETURN NULL;
END $$;

CREATE TRIGGER task_counts_insert AFTER INSERT ON {TASKS}
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_app_count_inserted_tasks();
CREATE TRIGGER task_counts_delete AFTER DELETE ON {TASKS}
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_app_count_deleted_tasks();
CREATE TRIGGER task_counts_update AFTER UPDATE ON {TASKS}
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.project_id IS DISTINCT FROM NEW.project_id
          OR OLD.preparing_at IS DISTINCT FROM NEW.preparing_at
          OR OLD.ended_at IS DISTINCT FROM NEW.ended_at)
    EXECUTE FUNCTION tasks_app_count_moved_task();
CREATE TRIGGER task_counts_truncate AFTER TRUNCATE ON {TASKS}
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_app_count_truncated_tasks();

-- The tasks there already, counted once.
INSERT INTO {COUNTS} (project_id, status, tasks, compute)
SELECT project_id, status, count(*), sum({COMPUTE.format(t=TASKS)})
FROM {TASKS} GROUP BY project_id, status;
"""

BACKWARD = f"""
DROP TRIGGER task_counts_insert ON {TASKS};
DROP TRIGGER task_counts_delete ON {TASKS};
DROP TRIGGER task_counts_update ON {TASKS};
DROP TRIGGER task_counts_truncate ON {TASKS};
DROP FUNCTION tasks_app_count_inserted_tasks();
DROP FUNCTION tasks_app_count_deleted_tasks();
DROP FUNCTION tasks_app_count_moved_task();
DROP FUNCTION tasks_app_count_truncated_tasks();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0004_teams"),
    ]

    operations = [
        migrations.CreateModel(
            name="ProjectStatusCount",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
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
                ("compute", models.DurationField()),
                (
                    "project",
                    models.ForeignKey(
                        db_constraint=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="status_counts",
                        to="tasks_app.project",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["project", "status"], name="status_count_project")],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
