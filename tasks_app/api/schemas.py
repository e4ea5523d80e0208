"""Shapes of the JSON API: what comes in, what goes out."""

from __future__ import annotations

from datetime import datetime

from ninja import Field, Schema

from tasks_app import lifecycle


class Error(Schema):
    error: str = Field(description="A stable code, e.g. 'not_found', 'invalid', 'bad_upload'.")
    message: str = Field(description="What is wrong and what to do about it.")
    field: str | None = None


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

    @staticmethod
    def resolve_actor(obj) -> str | None:
        return obj.actor.username if obj.actor_id else None

    @staticmethod
    def resolve_machine(obj) -> str | None:
        return obj.machine.name if obj.machine_id else None


class TaskOut(Schema):
    id: str
    status: str
    status_label: str
    is_terminal: bool
    guidance: GuidanceOut
    simulator: str
    simulator_version: str
    parameters: dict
    metadata: dict[str, str]
    project: str
    owner: str
    machine_group: str
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

    @staticmethod
    def resolve_status_label(obj) -> str:
        return obj.get_status_display()

    @staticmethod
    def resolve_guidance(obj) -> dict:
        g = obj.guidance
        return {"what_happened": g.what_happened, "why": g.why, "what_to_do": g.what_to_do}

    @staticmethod
    def resolve_project(obj) -> str:
        return obj.project.name

    @staticmethod
    def resolve_owner(obj) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_machine_group(obj) -> str:
        return obj.machine_group.name

    @staticmethod
    def resolve_machine(obj) -> str | None:
        return obj.machine.name if obj.machine_id else None


class TaskDetailOut(TaskOut):
    position_in_queue: int | None
    events: list[EventOut]

    @staticmethod
    def resolve_position_in_queue(obj) -> int | None:
        return obj.position_in_queue()

    @staticmethod
    def resolve_events(obj):
        return list(obj.events.select_related("actor", "machine"))


class TaskPage(Schema):
    items: list[TaskOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class TaskIn(Schema):
    simulator: str = Field(examples=["splishsplash", "commands"])
    machine_group: str = Field(description="Name or id of the machine group to run on.")
    input_files: list[str] = Field(description="Relative paths of the files in the input archive.")
    parameters: dict = Field(default_factory=dict, examples=[{"sim_config_filename": "config.json"}])
    project: str | None = None
    resubmit_on_preemption: bool = False
    time_to_live: str | None = Field(None, examples=["90s", "10m", "1h30m"])
    metadata: dict[str, str] | None = None


class TaskCreated(TaskOut):
    upload_url: str
    position_in_queue: int | None = None


class KillOut(Schema):
    id: str
    status: str
    changed: bool
    message: str


class MetadataIn(Schema):
    metadata: dict


class MachineTypeOut(Schema):
    name: str
    vcpus: int
    memory_gb: float


class SimulatorOut(Schema):
    name: str
    label: str
    version: str | None
    available: bool
    problem: str | None = None


class GroupIn(Schema):
    machine_type: str = Field(examples=["c2-standard-4"])
    name: str | None = None
    project: str | None = None
    num_machines: int = 1
    spot: bool = False
    data_disk_gb: int = 10
    auto_resize_disk_max_gb: int | None = None
    max_idle_time: float | None = Field(3, description="Minutes without a task before the group stops itself.")
    auto_terminate_minutes: float | None = Field(None, description="Minutes until the group stops itself.")
    min_machines: int | None = Field(None, description="Elastic groups: fewest machines kept.")
    max_machines: int | None = Field(None, description="Elastic groups: most machines while tasks wait.")
    resubmit_on_preemption: bool = Field(False, description="Default for tasks submitted here.")
    start: bool = Field(False, description="Start the group right away.")


class MachineOut(Schema):
    name: str
    state: str
    hostname: str
    last_heartbeat_at: datetime | None


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
    state: str
    project: str
    created_at: datetime
    started_at: datetime | None
    terminated_at: datetime | None
    termination_reason: str
    machines: list[MachineOut]
    machines_online: int
    queue_length: int

    @staticmethod
    def resolve_project(obj) -> str:
        return obj.project.name

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
    def resolve_machines_online(obj) -> int:
        return sum(1 for m in obj.machines.all() if m.state == "online")

    @staticmethod
    def resolve_queue_length(obj) -> int:
        return obj.tasks.filter(status=lifecycle.Status.SUBMITTED).count()


class StatusOut(Schema):
    value: str
    label: str
    terminal: bool
    next: list[str]
    what_happened: str
    why: str
    what_to_do: str
