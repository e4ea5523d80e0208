import django.db.models.deletion
from django.db import migrations, models

# The plain index on machine_group_id is redundant: task_group_created starts
# with that column. Only the index is dropped; Django would also drop and
# re-add the foreign key, validating every task of a large table again.
FK_INDEX = "tasks_app_task_machine_group_id_9b5182c1"


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0007_task_request_key"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="task",
                    name="machine_group",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="tasks",
                        to="tasks_app.machinegroup",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{FK_INDEX}"',
                    reverse_sql=f'CREATE INDEX IF NOT EXISTS "{FK_INDEX}" ON "tasks_app_task" ("machine_group_id")',
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="task",
            index=models.Index(
                condition=models.Q(("status", "success")),
                fields=["machine_group", "-ended_at"],
                name="task_group_succeeded",
            ),
        ),
    ]
