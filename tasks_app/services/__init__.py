"""Operations on tasks and machine groups, shared by the API, the console and the scheduler.

Each function checks what it needs, changes the database in one
transaction, and queues work for machines only after that transaction
commits (a machine must never see a task the database does not have yet).
The modules are named after their subject; callers use the names below.
"""

from tasks_app.errors import Refused
from tasks_app.services.accounting import catalog, group_usage, month_bounds, report, task_usage
from tasks_app.services.files import (
    missing_input,
    missing_outputs,
    open_input_file,
    open_output_file,
    output_listing,
    remove_outputs,
)
from tasks_app.services.groups import (
    create_group,
    lock_group_shared,
    parse_duration,
    start_group,
    terminate_group,
)
from tasks_app.services.kills import kill_all, kill_task
from tasks_app.services.machines import machine_lost, reclaim_machine, runner_lost
from tasks_app.services.metadata import set_metadata, unset_metadata, validate_metadata
from tasks_app.services.projects import PROJECT_NAME, project_of_task, project_to_use
from tasks_app.services.quota_use import overview as quota_overview
from tasks_app.services.remote_assets import chain as task_chain
from tasks_app.services.submissions import (
    BATCH_MAX_TASKS,
    accept_direct_input,
    accept_input,
    batch_key,
    close_silent_sweeps,
    create_task,
    create_tasks,
    end_sweep,
    enqueue,
    start_direct_input,
)
from tasks_app.services.timeline import time_breakdown, timeline, total_time

__all__ = [
    "BATCH_MAX_TASKS",
    "PROJECT_NAME",
    "Refused",
    "accept_direct_input",
    "accept_input",
    "batch_key",
    "catalog",
    "close_silent_sweeps",
    "create_group",
    "create_task",
    "create_tasks",
    "end_sweep",
    "enqueue",
    "group_usage",
    "kill_all",
    "kill_task",
    "lock_group_shared",
    "machine_lost",
    "missing_outputs",
    "month_bounds",
    "missing_input",
    "open_input_file",
    "open_output_file",
    "output_listing",
    "parse_duration",
    "project_of_task",
    "project_to_use",
    "quota_overview",
    "reclaim_machine",
    "remove_outputs",
    "report",
    "runner_lost",
    "set_metadata",
    "start_direct_input",
    "start_group",
    "task_chain",
    "task_usage",
    "terminate_group",
    "time_breakdown",
    "timeline",
    "total_time",
    "unset_metadata",
    "validate_metadata",
]
