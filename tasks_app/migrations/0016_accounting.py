"""Accounting: prices of machine types, and each task's computing time kept by a trigger.

A task computes while it is started or pending a kill (the computing phase of
``tasks_app.statuses``). Each time it leaves that phase, one attempt's
computing ends: from ``started_at`` to ``finalizing_at`` when the attempt
reached it, else to the move (a kill, a lost machine, a limit). A BEFORE
trigger adds it to ``computing_seconds`` in the same row write, so every
path counts (``lifecycle.transition``, the quick path that passes through
started in one update, SQL typed by hand, tasks inserted already ended) and
a task run again after losing its machine keeps the time of each attempt.
An attempt counts only when it started after its machine took it
(``started_at >= preparing_at``): a task killed while preparing did not
compute, whatever an earlier attempt left in ``started_at``.
"""

import django.core.validators
from django.db import migrations, models

TASKS = "tasks_app_task"
COMPUTING = "('started', 'pending-kill')"
THIS_ATTEMPT = (
    "{t}.started_at IS NOT NULL AND ({t}.preparing_at IS NULL OR {t}.started_at >= {t}.preparing_at)"
)
SECONDS = (
    "greatest(0, extract(epoch FROM (CASE WHEN {t}.finalizing_at >= {t}.started_at "
    "THEN {t}.finalizing_at ELSE {t}.status_changed_at END) - {t}.started_at))"
)

FORWARD = f"""
UPDATE {TASKS} SET computing_seconds = {SECONDS.format(t=TASKS)}
WHERE status NOT IN {COMPUTING} AND {THIS_ATTEMPT.format(t=TASKS)};

CREATE FUNCTION tasks_app_add_computing_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.computing_seconds := coalesce(NEW.computing_seconds, 0) + {SECONDS.format(t="NEW")};
    RETURN NEW;
END $$;

CREATE TRIGGER task_computing_insert BEFORE INSERT ON {TASKS}
    FOR EACH ROW
    WHEN (NEW.status NOT IN {COMPUTING} AND {THIS_ATTEMPT.format(t="NEW")})
    EXECUTE FUNCTION tasks_app_add_computing_time();
CREATE TRIGGER task_computing_update BEFORE UPDATE ON {TASKS}
    FOR EACH ROW
    WHEN (NEW.status NOT IN {COMPUTING} AND {THIS_ATTEMPT.format(t="NEW")}
          AND (OLD.status IN {COMPUTING} OR OLD.started_at IS DISTINCT FROM NEW.started_at))
    EXECUTE FUNCTION tasks_app_add_computing_time();
"""

BACKWARD = f"""
DROP TRIGGER task_computing_insert ON {TASKS};
DROP TRIGGER task_computing_update ON {TASKS};
DROP FUNCTION tasks_app_add_computing_time();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0015_task_progress"),
    ]

    operations = [
        migrations.CreateModel(
            name="MachinePrice",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("machine_type", models.CharField(max_length=64, unique=True)),
                (
                    "price_per_hour",
                    models.DecimalField(
                        decimal_places=4,
                        default=0,
                        max_digits=12,
                        validators=[django.core.validators.MinValueValidator(0)],
                    ),
                ),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.AddField(
            model_name="task",
            name="computing_seconds",
            field=models.FloatField(db_default=0.0, default=0.0, editable=False),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
