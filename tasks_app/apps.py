from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    name = "tasks_app"
    verbose_name = "Simdeck tasks"

    def ready(self) -> None:
        # The services check a group's provider before starting it; Slurm's own
        # check (it asks Slurm) lives above them, so it is handed down here.
        from tasks_app import provider_rules
        from tasks_app.providers import slurm

        provider_rules.START_CHECKS["slurm"] = slurm.check_group
        from tasks_app.services import hosts

        provider_rules.START_CHECKS["hosts"] = hosts.check_start
