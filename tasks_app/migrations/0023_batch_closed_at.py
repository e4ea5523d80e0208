from django.db import migrations, models
from django.db.models import Count, F


def close_full_batches(apps, schema_editor):
    """A batch that already holds its size took its last task when it was made."""
    Batch = apps.get_model("tasks_app", "Batch")
    full = Batch.objects.annotate(held=Count("tasks")).filter(held__gte=F("size"))
    Batch.objects.filter(pk__in=full.values("pk")).update(closed_at=F("created_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("tasks_app", "0022_joined_hosts"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="closed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="batch",
            index=models.Index(
                condition=models.Q(("closed_at__isnull", True)), fields=["created_at"], name="batch_open"
            ),
        ),
        migrations.RunPython(close_full_batches, migrations.RunPython.noop),
    ]
