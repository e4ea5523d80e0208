"""Shapes of the JSON API: what comes in, what goes out."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from ninja import Field, Schema
from pydantic import ValidationInfo, field_validator

from tasks_app import inputs, lifecycle, services, storage


def _related(path: str) -> staticmethod:
    """A resolver of ``relation.attribute``: None where the relation is unset, without a query for it."""
    relation, attribute = path.split(".")

    def resolve(obj):
        if getattr(obj, f"{relation}_id") is None:
            return None
        return getattr(getattr(obj, relation), attribute)

    return staticmethod(resolve)


class In(Schema):
    """What a request sends: every text in it, however deep, is checked before use.

    A text PostgreSQL cannot store (a NUL, a lone surrogate) is refused with
    the field's name (:func:`tasks_app.inputs.texts`), the same check the
    services make for the console.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _storable_texts(cls, value: Any, info: ValidationInfo) -> Any:
        inputs.texts(info.field_name, value)
        return value


def bounded(name: str, default: Any, description: str) -> Any:
    """A number field documented with the range :data:`tasks_app.inputs.NUMBERS` gives it.

    The range is in the OpenAPI document; the services check it, so the API
    and the console refuse the same values with the same message.
    """
    bounds = inputs.NUMBERS[name]
    low = {"exclusiveMinimum": bounds.low} if bounds.above else {"minimum": bounds.low}
    return Field(
        default,
        description=f"{description} {bounds.describe().capitalize()}.",
        json_schema_extra={**low, "maximum": bounds.high},
    )


class Error(Schema):
    error: str = Field(description="A stable code, e.g. 'not_found', 'invalid', 'bad_upload'.")
    message: str = Field(description="What is wrong and what to do about it.")
    field: str | None = None


class WhoAmIOut(Schema):
    username: str
    is_staff: bool
    email: str = ""
    name: str = Field("", description="First and last name, as the account has them.")


class QuotaOut(Schema):
    id: str = Field(
        description="max_machines, max_group_ttl_minutes, max_task_ttl_seconds or max_storage_gb."
    )
    label: str
    max_allowed: float | None = Field(description="The limit; null for none.")
    in_use: float | None = Field(
        description="What counts against it now (machines of started groups, GB stored); "
        "null for a per-object limit."
    )
    unit: str
    scope: str = Field(description="global: spent across groups; instance: bounds each group or task.")


class ProjectQuotasOut(Schema):
    name: str
    role: str
    quotas: list[QuotaOut]


class QuotasOut(Schema):
    username: str
    quotas: list[QuotaOut] = Field(description="Your own limits.")
    projects: list[ProjectQuotasOut] = Field(description="Those of each project you belong to; both apply.")


class GuidanceOut(Schema):
    what_happened: str
    why: str
    what_to_do: str


class EventOut(Schema):
    from_status: str
    to_status: str
    label: str
    at: datetime
    reason: str
    actor: str | None = None
    machine: str | None = None

    @staticmethod
    def resolve_label(obj) -> str:
        return obj.to_label

    resolve_actor = _related("actor.username")
    resolve_machine = _related("machine.name")


class TaskOut(Schema):
    id: str
    status: str
    status_label: str
    is_terminal: bool
    guidance: GuidanceOut
    simulator: str
    simulator_version: str
    sandboxed: bool | None = Field(
        None, description="Whether its simulator ran in a sandbox; null until it starts."
    )
    parameters: dict
    metadata: dict[str, str]
    project: str
    owner: str
    machine_group: str
    machine_type: str
    machine: str | None
    attempt: int
    resubmit_on_preemption: bool
    time_to_live_seconds: int | None
    created_at: datetime
    queued_at: datetime | None
    preparing_at: datetime | None
    started_at: datetime | None
    finalizing_at: datetime | None
    ended_at: datetime | None
    exit_code: int | None
    error_detail: str
    input_size: int | None
    output_size: int | None
    output_files: int | None
    review_state: str = Field(description="unreviewed, approved or needs-attention.")
    progress: float | None = Field(
        None,
        description="How far its simulation got (0 to 1) as it reported it, while it computes; "
        "null otherwise or when it reports nothing.",
    )
    progress_eta: datetime | None = Field(
        None,
        description="When its simulation should end at its pace, while it computes; "
        "null unless that pace is steady.",
    )

    @staticmethod
    def resolve_progress(obj) -> float | None:
        return obj.progress if obj.progress_percent is not None else None

    @staticmethod
    def resolve_progress_eta(obj) -> datetime | None:
        return obj.eta

    @staticmethod
    def resolve_status_label(obj) -> str:
        # get_status_display() rebuilds a mapping of the choices on every call: pages of tasks add up.
        return lifecycle.Status(obj.status).label

    @staticmethod
    def resolve_guidance(obj) -> dict:
        g = obj.guidance
        return {"what_happened": g.what_happened, "why": g.why, "what_to_do": g.what_to_do}

    resolve_project = _related("project.name")
    resolve_owner = _related("owner.username")
    resolve_machine_group = _related("machine_group.name")
    resolve_machine_type = _related("machine_group.machine_type")
    resolve_machine = _related("machine.name")


class TimelineEntryOut(Schema):
    status: str
    label: str
    at: datetime
    duration_seconds: float | None = Field(description="Null for the final status of an ended task.")
    ongoing: bool


class TimeBreakdownOut(Schema):
    """Seconds in each phase; null for a phase the task has not reached."""

    waiting_for_input: float | None
    in_queue: float | None
    preparing: float | None
    computing: float | None
    finalizing: float | None


def _timeline(obj) -> list[dict]:
    # Several fields derive from the timeline; build it once per task.
    if not hasattr(obj, "_timeline"):
        obj._events = list(obj.events.select_related("actor", "machine"))
        obj._timeline = services.timeline(obj, obj._events)
    return obj._timeline


class UsageFigures(Schema):
    """What some tasks used (see tasks_app.services.accounting for each figure's definition)."""

    tasks: int
    computing_seconds: float
    core_seconds: float
    core_hours: float
    memory_gb_hours: float
    estimated_cost: float


class TaskUsageOut(UsageFigures):
    price_per_hour: float | None = Field(
        description="Of its machine type, now; null for a type no longer offered."
    )
    currency: str


class GroupUsageOut(Schema):
    machine_hours: float = Field(description="Every machine's time up, idle included.")
    core_hours: float
    cost: float = Field(description="Machine-hours at the machine type's price per hour.")
    price_per_hour: float
    estimated_cost_per_hour: float = Field(
        description="With all its machines up (an elastic group's maximum)."
    )
    currency: str


class DayUsageOut(UsageFigures):
    day: str


class UserUsageOut(UsageFigures):
    user: str


class ProjectUsageOut(UsageFigures):
    project: str
    machine_hours: float
    machine_cost: float


class TotalUsageOut(UsageFigures):
    machine_hours: float
    machine_cost: float


class BudgetIn(Schema):
    kind: str = Field(description="core-hours (the project's tasks) or money (the cost of its machines).")
    monthly_limit: float | str = Field(
        description="More than 0: core-hours, or an amount in the server's currency."
    )


class BudgetOut(Schema):
    kind: str
    monthly_limit: float
    used: float = Field(description="This UTC month, in the budget's unit.")
    percent: int
    level: str = Field(description="ok, warning (80 % or more) or exhausted (100 %: new tasks are refused).")
    month: str
    currency: str
    set_by: str | None
    set_at: datetime


class UsageOut(Schema):
    month: str
    start: datetime
    end: datetime
    currency: str
    total: TotalUsageOut
    days: list[DayUsageOut]
    users: list[UserUsageOut]
    projects: list[ProjectUsageOut]


class TaskDetailOut(TaskOut):
    usage: TaskUsageOut
    position_in_queue: int | None
    events: list[EventOut]
    timeline: list[TimelineEntryOut]
    time_breakdown: TimeBreakdownOut
    total_time_seconds: float
    computation_time_seconds: float | None
    outputs_available: bool
    output_archive_size: int | None = Field(description="Size of the zipped outputs, in bytes.")
    inputs_available: bool
    machine_vcpus: int | None = Field(description="vCPUs of its machine type.")
    machine_memory_gb: float | None = Field(description="Memory of its machine type, in GB.")
    provider: str = Field(description="What runs its group's machines: local or slurm.")
    storage_dir: str = Field(description="The storage folder its outputs are also kept in; '' for none.")
    on_finish_cleanup: list[str] = Field(
        description="Command lines run after the simulation, before its outputs are stored."
    )
    remote_assets: list[str] = Field(description="Paths of storage it takes as inputs besides its upload.")
    inputs_from: list[str] = Field(description="Ids of the tasks whose files it takes (those you can see).")
    used_by: list[str] = Field(description="Ids of the tasks that take its files (those you can see).")

    @staticmethod
    def resolve_on_finish_cleanup(obj) -> list[str]:
        return obj.cleanup_commands

    @staticmethod
    def resolve_remote_assets(obj) -> list[str]:
        return _chain(obj)["assets"]

    @staticmethod
    def resolve_inputs_from(obj) -> list[str]:
        return sorted({link["id"] for link in _chain(obj)["inputs_from"]})

    @staticmethod
    def resolve_used_by(obj) -> list[str]:
        return sorted({link["id"] for link in _chain(obj)["used_by"]})

    @staticmethod
    def resolve_machine_vcpus(obj) -> int | None:
        spec = settings.SIMDECK_MACHINE_TYPES.get(obj.machine_group.machine_type)
        return int(spec["vcpus"]) if spec else None

    @staticmethod
    def resolve_machine_memory_gb(obj) -> float | None:
        spec = settings.SIMDECK_MACHINE_TYPES.get(obj.machine_group.machine_type)
        return float(spec["memory_gb"]) if spec else None

    resolve_provider = _related("machine_group.provider")

    @staticmethod
    def resolve_usage(obj) -> dict:
        return services.task_usage(obj)

    @staticmethod
    def resolve_position_in_queue(obj) -> int | None:
        return obj.position_in_queue()

    @staticmethod
    def resolve_events(obj):
        _timeline(obj)
        return obj._events

    @staticmethod
    def resolve_timeline(obj) -> list[dict]:
        return _timeline(obj)

    @staticmethod
    def resolve_time_breakdown(obj) -> dict:
        return services.time_breakdown(_timeline(obj))

    @staticmethod
    def resolve_total_time_seconds(obj) -> float:
        return services.total_time(obj)

    @staticmethod
    def resolve_computation_time_seconds(obj) -> float | None:
        return services.time_breakdown(_timeline(obj))["computing"]

    @staticmethod
    def resolve_outputs_available(obj) -> bool:
        return storage.exists(obj.output_path)

    @staticmethod
    def resolve_output_archive_size(obj) -> int | None:
        return default_storage.size(obj.output_path) if storage.exists(obj.output_path) else None

    @staticmethod
    def resolve_inputs_available(obj) -> bool:
        return storage.exists(obj.input_path)


class TaskPage(Schema):
    items: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class TaskFilters(In):
    """Filters of the task list; all given ones must match."""

    status: list[str] | None = Field(
        None,
        description="Statuses to include (repeat, or separate with commas). Aliases work: "
        "'completed' is 'success', 'in-queue' is 'submitted', 'executer-…' is 'executor-…'.",
    )
    id: list[str] | None = Field(None, description="Only these task ids.")
    project: str | None = Field(None, description="Project name.")
    simulator: str | None = Field(None, description="Simulator name, e.g. splishsplash.")
    machine_group: str | None = Field(None, description="Machine group name.")
    owner: str | None = Field(None, description="Username of the task's owner.")
    metadata: list[str] | None = Field(None, description="key=value pairs that must all match.")
    review: str | None = Field(None, description="Review state: unreviewed, approved or needs-attention.")
    created_after: datetime | None = Field(
        None, description="Created at or after this time (ISO 8601; UTC when no zone is given)."
    )
    created_before: datetime | None = Field(
        None, description="Created before this time (ISO 8601; UTC when no zone is given)."
    )
    limit: int = Field(50, ge=1, le=500, description="Tasks per page.")
    cursor: str | None = Field(None, description="The next_cursor of the previous page.")


# What a task alone and a task of a batch ask alike, described once; a
# FieldInfo of its own for each model that declares it.
def _project_field():
    return Field(
        None, description="The machine group's project, where the task is filed; another is refused."
    )


def _time_to_live_field():
    return Field(
        None, examples=["90s", "10m", "1h30m"], description="At most a year (8760h); null for no limit."
    )


def _input_sha256_field():
    return Field(None, description="SHA-256 (hex) of the archive in input_archive.")


def _remote_assets_field():
    return Field(
        None,
        examples=[["<task id>/outputs/frames", "my-data/mesh.msh"]],
        description=(
            "Paths of storage the machine adds to the input: another task's files "
            "(<task id>/outputs/… or <task id>/input/…) or files uploaded to the project's storage. "
            "Each is placed in the task's folder under its last name. With them the input may be empty."
        ),
    )


def _storage_dir_field():
    return Field(
        "",
        description="A folder of the project's storage the outputs are also kept in, as "
        "<storage_dir>/<task id>/outputs.zip.",
    )


def _on_finish_cleanup_field():
    return Field(
        None,
        examples=[["rm -rf scratch"]],
        description="Shell command lines run in the task's sandbox, in its folder, after the simulation "
        "ends by itself (not after a kill or its time to live), before its outputs are stored.",
    )


class TaskIn(In):
    simulator: str = Field(examples=["splishsplash", "commands"])
    machine_group: str = Field(description="Name or id of the machine group to run on.")
    input_files: list[str] = Field(description="Relative paths of the files in the input archive.")
    parameters: dict = Field(default_factory=dict, examples=[{"sim_config_filename": "config.json"}])
    project: str | None = _project_field()
    resubmit_on_preemption: bool = False
    time_to_live: str | None = _time_to_live_field()
    metadata: dict[str, str] | None = None
    input_archive: str | None = Field(
        None,
        description=(
            "A small input folder sent along: the zip archive, base64-encoded, at most "
            "1 MiB once decoded. The task is queued at once and nothing is uploaded after. "
            "Leave it out for larger inputs and PUT the archive to upload_url."
        ),
    )
    input_sha256: str | None = _input_sha256_field()
    remote_assets: list[str] | None = _remote_assets_field()
    storage_dir: str = _storage_dir_field()
    on_finish_cleanup: list[str] | None = _on_finish_cleanup_field()
    batch: str | None = Field(
        None, description="A sweep of single tasks: the batch id its first task's answer gave; joins it."
    )
    batch_size: int | None = Field(
        None,
        description="The first task of a sweep of single tasks: how many tasks the sweep holds.",
    )


class TaskSpecIn(In):
    """One task of a batch: what differs from task to task in a sweep."""

    simulator: str = Field(examples=["splishsplash", "commands"])
    parameters: dict = Field(default_factory=dict, examples=[{"commands": ["python solve.py --re 100"]}])
    project: str | None = _project_field()
    resubmit_on_preemption: bool = False
    time_to_live: str | None = _time_to_live_field()
    metadata: dict[str, str] | None = None


class TaskBatchIn(In):
    machine_group: str = Field(description="Name or id of the machine group every task runs on.")
    input_files: list[str] = Field(description="Relative paths of the files in the shared input archive.")
    tasks: list[TaskSpecIn] = Field(description="The tasks, at most 1000; each gets the same input.")
    input_archive: str | None = Field(
        None,
        description=(
            "The input folder every task gets: the zip archive, base64-encoded, at most 1 MiB once "
            "decoded. The tasks are queued at once. Leave it out for larger inputs and PUT the "
            "archive to each task's upload_url."
        ),
    )
    input_sha256: str | None = _input_sha256_field()
    # Every task of the batch takes these alike.
    remote_assets: list[str] | None = _remote_assets_field()
    storage_dir: str = _storage_dir_field()
    on_finish_cleanup: list[str] | None = _on_finish_cleanup_field()
    batch: str | None = Field(
        None,
        description=(
            "A sweep sent in several requests: the batch id the first one answered. Its tasks "
            "join that batch; when all of a batch's tasks ended, its subscribers hear it once."
        ),
    )
    batch_size: int | None = Field(
        None,
        description=(
            "In the first request of a sweep sent in several: how many tasks the whole sweep holds "
            "(this request's count by default)."
        ),
    )


class TaskBatchItemOut(Schema):
    id: str
    status: str
    upload_url: str | None = Field(description="Where to PUT the input archive; null when it came inline.")


class TaskBatchCreated(Schema):
    machine_group: str
    batch: str | None = Field(
        description="The batch these tasks belong to; name it in the sweep's next request."
    )
    tasks: list[TaskBatchItemOut] = Field(description="The new tasks, in the order they were given.")


class TaskCreated(TaskOut):
    upload_url: str | None = Field(description="Where to PUT the input archive; null when it came inline.")
    position_in_queue: int | None = None
    batch: str | None = Field(None, description="The batch the task belongs to, if it is one of a sweep.")

    @staticmethod
    def resolve_batch(obj) -> str | None:
        return obj.batch_id


class PositionOut(Schema):
    id: str
    status: str
    position_in_queue: int | None = Field(description="Tasks ahead in the queue; null when not queued.")


class ResourcePointOut(Schema):
    at: datetime = Field(description="The middle of the stretch of samples this point sums up.")
    samples: int = Field(description="How many samples the stretch holds.")
    cpu_percent: float = Field(description="Average CPU over the stretch, percent of one core.")
    cpu_percent_max: float = Field(description="Highest CPU of a sample in the stretch.")
    memory_bytes: int = Field(description="Highest resident memory in the stretch.")
    disk_bytes: int = Field(description="Largest work directory in the stretch.")


class ResourceSampleOut(Schema):
    at: datetime
    cpu_percent: float = Field(description="Percent of one core: 200 means two cores busy.")
    memory_bytes: int
    disk_bytes: int


class ResourcePeaksOut(Schema):
    cpu_percent: float
    memory_bytes: int
    disk_bytes: int


class ResourcesOut(Schema):
    id: str
    status: str
    samples: int = Field(description="Samples recorded for the task.")
    started: datetime | None = Field(description="The first sample's time; null before the first.")
    span_seconds: float = Field(description="From the first sample to the last.")
    latest: ResourceSampleOut | None = Field(description="The last sample: what the task uses now.")
    peak: ResourcePeaksOut
    points: list[ResourcePointOut] = Field(description="The samples in order, cut into `points` stretches.")


class KillOut(Schema):
    id: str
    status: str
    changed: bool
    message: str


class KillManyIn(In):
    ids: list[str] = Field(default_factory=list, description="Tasks to kill.")
    all: bool = Field(False, description="Kill every task of yours that has not ended.")
    project: str | None = Field(None, description="With all: only the tasks of this project.")


class MetadataIn(In):
    metadata: dict = Field(examples=[{"viscosity": "0.01", "run": "2"}])


class OutputFileOut(Schema):
    path: str
    size: int
    compressed_size: int


class OutputListingOut(Schema):
    files: list[OutputFileOut]
    total_size: int = Field(description="Bytes once unzipped.")
    archive_size: int = Field(description="Bytes of the zip archive.")


class RemovedOut(Schema):
    removed: list[str]
    freed_bytes: int


class LogChunkOut(Schema):
    offset: int = Field(description="Byte offset where `text` begins.")
    next_offset: int = Field(description="Pass this back as the offset to get what follows.")
    size: int = Field(description="Size of the whole log so far, in bytes.")
    text: str


class LogsOut(Schema):
    status: str
    live: bool = Field(description="True when read from the machine running the task.")
    stdout: LogChunkOut | None = None
    stderr: LogChunkOut | None = None


class MachineFileOut(Schema):
    path: str
    size: int
    modified: float = Field(description="Seconds since the epoch.")


class MachineFilesOut(Schema):
    files: list[MachineFileOut]
    truncated: bool


class LastModifiedOut(Schema):
    file: MachineFileOut | None
    now: float = Field(description="The machine's clock, seconds since the epoch.")


class TailedFileOut(Schema):
    path: str
    missing: bool = False
    offset: int | None = None
    next_offset: int | None = None
    size: int | None = None
    text: str | None = None


class TailOut(Schema):
    files: list[TailedFileOut]


class ProcessOut(Schema):
    pid: int
    ppid: int
    name: str
    command: str
    status: str
    cpu_percent: float
    memory_bytes: int
    threads: int
    started: float


class MachineShareOut(Schema):
    """The machine a task runs on, as its type sizes it: its share of the host it runs on."""

    name: str
    machine_type: str
    vcpus: int = Field(description="The vCPUs of its machine type.")
    memory_gb: float = Field(description="The memory of its machine type, in GB.")

    @staticmethod
    def resolve_machine_type(obj) -> str:
        return obj.group.machine_type

    @staticmethod
    def resolve_vcpus(obj) -> int:
        return settings.SIMDECK_MACHINE_TYPES.get(obj.group.machine_type, {}).get("vcpus", 0)

    @staticmethod
    def resolve_memory_gb(obj) -> float:
        return settings.SIMDECK_MACHINE_TYPES.get(obj.group.machine_type, {}).get("memory_gb", 0)


class TopOut(Schema):
    processes: list[ProcessOut]
    machine: MachineShareOut = Field(
        description="The task's machine: its vCPUs and memory as its type gives them, which the task may use."
    )
    cpus: int = Field(description="The vCPUs of the host the machine runs on (it may hold other machines).")
    load_average: list[float]
    memory_total_bytes: int = Field(description="The host's memory, as cpus.")
    memory_available_bytes: int
    now: float


class ProjectOut(Schema):
    id: int
    name: str
    created_at: datetime
    personal: bool = Field(description="A user's own project, where tasks go when no project is named.")
    role: str | None = Field(
        description="Your role in it: viewer, member or maintainer (null for staff who are not members)."
    )
    num_tasks: int
    active: int = Field(description="Tasks waiting, queued or on a machine.")
    succeeded: int
    failed: int = Field(description="Tasks that ended in any other way than success.")

    @staticmethod
    def resolve_personal(obj) -> bool:
        return obj.personal_owner_id is not None


class MemberOut(Schema):
    username: str
    role: str = Field(description="viewer, member or maintainer.")
    added_by: str | None
    added_at: datetime

    resolve_username = _related("user.username")
    resolve_added_by = _related("added_by.username")


class MemberIn(In):
    username: str
    role: str = Field("member", description="viewer, member or maintainer.")


class ProjectIn(In):
    name: str = Field(description="1 to 128 letters, digits, spaces, dots, dashes or underscores.")


class RoleIn(In):
    role: str = Field(description="viewer, member or maintainer.")


class MachineTypeOut(Schema):
    name: str
    vcpus: int
    memory_gb: float
    price_per_hour: float = Field(description="Set by an admin; 0 unless set.")
    currency: str


class SimulatorOut(Schema):
    name: str
    label: str
    version: str | None
    available: bool
    problem: str | None = None


class GroupIn(In):
    machine_type: str = Field(examples=["c2-standard-4"])
    name: str | None = None
    project: str | None = None
    num_machines: int = bounded("num_machines", 1, "Machines of a fixed group.")
    spot: bool = False
    data_disk_gb: int = bounded("data_disk_gb", 10, "Disk of each machine.")
    auto_resize_disk_max_gb: int | None = bounded(
        "auto_resize_disk_max_gb", None, "The disk grows up to this; at least data_disk_gb."
    )
    max_idle_time: float | None = bounded(
        "max_idle_time", 3, "Minutes without a task before the group stops itself; null for never."
    )
    auto_terminate_minutes: float | None = bounded(
        "auto_terminate_minutes", None, "Minutes until the group stops itself; null for no limit."
    )
    min_machines: int | None = bounded("min_machines", None, "Elastic groups: fewest machines kept.")
    max_machines: int | None = bounded(
        "max_machines", None, "Elastic groups: most machines while tasks wait."
    )
    resubmit_on_preemption: bool = Field(False, description="Default for tasks submitted here.")
    provider: str = Field("local", description="What runs its machines: local or slurm.")
    provider_options: dict[str, str] = Field(
        default_factory=dict,
        description="For slurm: partition, account, qos.",
        examples=[{"partition": "debug"}],
    )
    start: bool = Field(False, description="Start the group right away.")


def _reachable(minutes: float | None) -> float | None:
    """A group's limit as the scheduler applies it: NaN or infinity (rows stored before
    limits were checked) is never reached, so it is no limit, and JSON holds neither."""
    return minutes if minutes is None or math.isfinite(minutes) else None


class MachineOut(Schema):
    name: str
    state: str
    hostname: str
    last_heartbeat_at: datetime | None
    job_id: str = Field(description="Slurm: the id of the machine's pilot job.")
    job_state: str = Field(description="Slurm: its pilot's state (PENDING, RUNNING...).")
    job_reason: str = Field(description="Slurm: why its pilot waits (Priority, Resources...).")
    simulators: dict[str, str] = Field(
        description="The simulators the machine found installed when it started, and their versions."
    )


class GroupOut(Schema):
    id: int
    name: str
    machine_type: str
    n_vcpus: int
    memory_gb: float
    num_machines: int
    spot: bool
    data_disk_gb: int
    auto_resize_disk_max_gb: int | None
    max_idle_time: float | None = Field(alias="max_idle_time_minutes")
    auto_terminate_minutes: float | None
    min_machines: int | None
    max_machines: int | None
    resubmit_on_preemption: bool
    provider: str
    provider_options: dict[str, str]
    state: str
    project: str
    created_at: datetime
    started_at: datetime | None
    terminated_at: datetime | None
    termination_reason: str
    machines: list[MachineOut]
    machines_online: int
    simulators: dict[str, list[str]] = Field(
        description="The simulators the group's online machines have, each with the versions found."
    )
    queue_length: int

    resolve_project = _related("project.name")

    @staticmethod
    def resolve_max_idle_time(obj) -> float | None:
        return _reachable(obj.max_idle_time_minutes)

    @staticmethod
    def resolve_auto_terminate_minutes(obj) -> float | None:
        return _reachable(obj.auto_terminate_minutes)

    @staticmethod
    def resolve_n_vcpus(obj) -> int:
        from django.conf import settings

        return settings.SIMDECK_MACHINE_TYPES.get(obj.machine_type, {}).get("vcpus", 0)

    @staticmethod
    def resolve_memory_gb(obj) -> float:
        from django.conf import settings

        return settings.SIMDECK_MACHINE_TYPES.get(obj.machine_type, {}).get("memory_gb", 0)

    @staticmethod
    def resolve_machines(obj):
        return [m for m in obj.machines.all() if m.state not in ("stopped", "lost")]

    @staticmethod
    def resolve_simulators(obj) -> dict[str, list[str]]:
        return obj.simulators_online()

    @staticmethod
    def resolve_machines_online(obj) -> int:
        return sum(1 for m in obj.machines.all() if m.state == "online")

    @staticmethod
    def resolve_queue_length(obj) -> int:
        return obj.tasks.filter(status=lifecycle.Status.SUBMITTED).count()


class StatusOut(Schema):
    value: str
    label: str
    terminal: bool
    failure: bool = Field(description="An ending other than success.")
    next: list[str]
    aliases: list[str] = Field(description="Other spellings accepted wherever a status is given.")
    what_happened: str
    why: str
    what_to_do: str


class DirectUploadIn(In):
    size: int = Field(..., ge=1, description="The input archive's size in bytes.")


class UploadPartOut(Schema):
    number: int = Field(description="The part's number, to send back with its ETag.")
    url: str = Field(description="Presigned URL: PUT the part's bytes there, without the API key.")
    offset: int = Field(description="Where the part starts in the archive.")
    size: int = Field(description="How many bytes the part has.")


class DirectUploadOut(Schema):
    upload_id: str | None = Field(description="The bucket's id of a multipart upload; null for a single PUT.")
    parts: list[UploadPartOut]


class UploadedPartIn(In):
    number: int = Field(..., ge=1, le=10_000)
    etag: str = Field(..., min_length=1, max_length=200, description="The ETag header the bucket answered.")


class DirectUploadDoneIn(In):
    upload_id: str | None = Field(None, max_length=1000)
    parts: list[UploadedPartIn] = Field(default_factory=list, max_length=10_000)
    size: int = Field(..., ge=1)
    sha256: str = Field(..., min_length=64, max_length=64, description="SHA-256 (hex) of the whole archive.")


def _chain(obj) -> dict:
    """The task's chain as its viewer may see it (the view sets ``viewer``), read once per answer."""
    if not hasattr(obj, "_chain"):
        obj._chain = services.task_chain(obj, getattr(obj, "viewer", None))
    return obj._chain


# -- storage -------------------------------------------------------------------------


def _storage_project_field():
    return Field(None, description="The project whose storage; your personal project by default.")


class StorageEntryOut(Schema):
    name: str = Field(description="The name within the listed folder (the full path with recursive).")
    path: str = Field(description="Its path from the root of the project's storage.")
    is_dir: bool
    size_bytes: int = Field(description="Its size; a folder's is the total of the files it holds.")
    created_at: datetime | None


class StorageListOut(Schema):
    project: str
    path: str
    items: list[StorageEntryOut]
    count: int = Field(description="Entries in the folder, of which items holds the first max_results.")
    total_bytes: int = Field(description="Bytes of everything in the folder.")


class StorageSizeOut(Schema):
    project: str
    total_bytes: int = Field(description="Uploaded files plus the stored inputs and outputs of its tasks.")
    uploaded_bytes: int
    task_bytes: int
    max_storage_gb: float | None = Field(description="The project's quota; null for none.")


class StoredFileOut(Schema):
    project: str
    path: str
    size_bytes: int


class StorageRemovedOut(Schema):
    project: str
    removed: int = Field(description="How many files were removed.")
    freed_bytes: int


class StorageCopyIn(In):
    project: str | None = _storage_project_field()
    source: str = Field(examples=["my-data", "<task id>/outputs/frames"])
    target: str = Field(examples=["my-data-copy"])


class StorageCopiedOut(Schema):
    project: str
    copied: int = Field(description="How many files were copied.")
    size_bytes: int


class SignedUrlsIn(In):
    project: str | None = _storage_project_field()
    paths: list[str] = Field(max_length=1000, examples=[["my-data/mesh.msh"]])


class SignedUrlsOut(Schema):
    urls: list[str] = Field(
        description="One per path, in order: a presigned URL of the bucket (no key needed, it expires), "
        "or this API's URL of the file (send the API key) where the server keeps files itself."
    )
