"""Indexes for the console at a million tasks.

The metadata GIN index moves to jsonb_path_ops (filters are ``@>`` only). Two
small partial indexes cover the tasks on machines: each group's running count
and the overview's longest-running list no longer visit every task of a status.
"""

import django.contrib.postgres.indexes
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('tasks_app', '0005_project_status_counts'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='task',
            name='task_metadata',
        ),
        migrations.AddIndex(
            model_name='task',
            index=django.contrib.postgres.indexes.GinIndex(fields=['metadata'], name='task_metadata', opclasses=['jsonb_path_ops']),
        ),
        migrations.AddIndex(
            model_name='task',
            index=models.Index(condition=models.Q(('status__in', ['finalizing', 'pending-kill', 'preparing-to-compute', 'started'])), fields=['machine_group'], name='task_group_on_machine'),
        ),
        migrations.AddIndex(
            model_name='task',
            index=models.Index(condition=models.Q(('status__in', ['finalizing', 'pending-kill', 'preparing-to-compute', 'started'])), fields=['preparing_at'], name='task_on_machine'),
        ),
    ]
