"""Every durable fact of Simdeck: projects, machine groups, machines, tasks.

Statuses live in :mod:`tasks_app.statuses`, their transitions in :mod:`tasks_app.lifecycle`; nothing
here writes ``Task.status`` directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import secrets
import string

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from tasks_app import statuses
from tasks_app.statuses import Status

ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 25


def new_task_id() -> str:
    """25 random lowercase alphanumerics: about 129 bits, never reused."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


class Project(models.Model):
    """A team: its members (with their roles), its tasks and its machine groups.

    Every user has one personal project (``personal_owner`` set), made the
    first time it is needed; it is where tasks go when no project is named.
    """

    name = models.CharField(max_length=128, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    personal_owner = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="personal_project",
    )

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    """What a member may do in a project; each role includes the ones before it."""

    VIEWER = "viewer", "Viewer"
    MEMBER = "member", "Member"
    MAINTAINER = "maintainer", "Maintainer"

    @property
    def rank(self) -> int:
        return ROLE_RANK[self]


ROLE_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.MAINTAINER: 3}


class Membership(models.Model):
    """One user's role in one project.

    viewer: reads everything in the project. member: also submits tasks,
    edits metadata, comments, reviews and kills their own tasks. maintainer:
    also kills any task, manages the project's machine groups and members.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_project")]
        indexes = [models.Index(fields=["user", "project"], name="membership_user_project")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project}: {self.role}"


class Quota(models.Model):
    """Limits for one user or one project (exactly one of the two is set).

    An empty limit means no limit of this record; the site-wide defaults
    (``SIMDECK_QUOTA_*`` settings) apply where no record says otherwise.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="quota"
    )
    project = models.OneToOneField(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="quota"
    )
    max_machines = models.PositiveIntegerField(
        null=True, blank=True, help_text="Machines running at once, over all machine groups."
    )
    max_group_ttl_minutes = models.FloatField(
        null=True, blank=True, help_text="Longest time to live of a machine group, in minutes."
    )
    max_task_ttl_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Longest time to live of a task, in seconds."
    )
    max_storage_gb = models.FloatField(
        null=True,
        blank=True,
        help_text="Stored files, in GB: uploads to storage and tasks' inputs and outputs.",
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, project__isnull=True)
                | models.Q(user__isnull=True, project__isnull=False),
                name="quota_for_user_or_project",
            )
        ]

    def __str__(self) -> str:
        return f"quota of {self.user or self.project}"


class MachineGroup(models.Model):
    class State(models.TextChoices):
        CREATED = "created", "Not started"
        STARTED = "started", "Started"
        TERMINATING = "terminating", "Terminating"
        TERMINATED = "terminated", "Terminated"

    # The states in which a group takes new tasks.
    ACCEPTING = (State.CREATED, State.STARTED)

    name = models.CharField(max_length=64, unique=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="machine_groups")
    provider = models.CharField(max_length=32, default="local")
    # What the provider needs beyond the machine type, e.g. Slurm's partition, account and qos.
    provider_options = models.JSONField(default=dict, blank=True)
    machine_type = models.CharField(max_length=64)
    num_machines = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    # Elastic groups grow from min_machines towards max_machines while tasks
    # wait, and shrink back when machines idle. Fixed groups leave both empty.
    min_machines = models.PositiveIntegerField(null=True, blank=True)
    max_machines = models.PositiveIntegerField(null=True, blank=True)
    spot = models.BooleanField(default=False)
    data_disk_gb = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(65536)]
    )
    auto_resize_disk_max_gb = models.PositiveIntegerField(null=True, blank=True)
    # Minutes, fractions allowed. Idle means no task queued or running.
    max_idle_time_minutes = models.FloatField(null=True, blank=True, default=3)
    auto_terminate_minutes = models.FloatField(null=True, blank=True)
    resubmit_on_preemption = models.BooleanField(default=False)
    # Simulations see only loopback unless an admin lets this group's reach out (admin site only).
    allow_network = models.BooleanField(
        default=False,
        help_text="Let this group's simulations open outbound network connections. "
        "Only an admin can set it; the task pages say so.",
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.CREATED)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    terminated_at = models.DateTimeField(null=True, blank=True)
    termination_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "provider"])]

    def __str__(self) -> str:
        return self.name

    @property
    def queue_name(self) -> str:
        """The Celery queue its machines consume: one per group."""
        return f"{settings.SIMDECK_QUEUE_PREFIX}.group.{self.pk}"

    @property
    def is_accepting_tasks(self) -> bool:
        return self.state in self.ACCEPTING

    def simulators_online(self) -> dict[str, list[str]]:
        """The simulators its online machines reported, each with the versions found (prefetched machines)."""
        found: dict[str, set[str]] = {}
        for machine in self.machines.all():
            if machine.state == Machine.State.ONLINE:
                for name, version in machine.simulators.items():
                    found.setdefault(name, set()).add(version)
        return {name: sorted(versions) for name, versions in sorted(found.items())}

    @property
    def is_elastic(self) -> bool:
        return self.max_machines is not None


class Machine(models.Model):
    class State(models.TextChoices):
        PROVISIONING = "provisioning", "Starting"
        ONLINE = "online", "Online"
        STOPPING = "stopping", "Stopping"
        STOPPED = "stopped", "Stopped"
        LOST = "lost", "Lost"
        RECLAIMED = "reclaimed", "Reclaimed"

    group = models.ForeignKey(MachineGroup, on_delete=models.CASCADE, related_name="machines")
    name = models.CharField(max_length=100, unique=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROVISIONING)
    hostname = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    online_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    # On a batch scheduler (Slurm), the machine is a pilot job: its id, and
    # while it waits in the scheduler's queue, the scheduler's reason.
    job_id = models.CharField(max_length=32, blank=True)
    job_state = models.CharField(max_length=32, blank=True)
    job_reason = models.CharField(max_length=200, blank=True)
    # The simulators this machine found installed when it started: name -> version.
    simulators = models.JSONField(default=dict, blank=True)
    # A machine on another host talks to the server with a token of its own (only its hash is
    # kept), given when a host that joined with ``join_token`` took it on. Machines on the
    # server's host have neither.
    token_digest = models.CharField(max_length=64, blank=True, db_index=True)
    join_token = models.ForeignKey(
        "JoinToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="machines"
    )

    class Meta:
        indexes = [models.Index(fields=["group", "state"])]

    PREFIX = "sdm_"

    def __str__(self) -> str:
        return self.name

    def issue_token(self) -> str:
        """A new token for this machine, in place of any before; returns the secret, never stored."""
        secret = self.PREFIX + secrets.token_urlsafe(32)
        self.token_digest = APIKey.hash(secret)
        return secret


class Batch(models.Model):
    """The tasks of one sweep (the client's ``run_many``), made by one or several batch requests.

    ``size`` is how many tasks the sweep holds: its first request says so,
    the later ones join by the batch's id. ``closed_at`` is when it stopped
    taking tasks: it holds its size, or its sweep ended short of it (a
    request was refused, or its client went silent: see
    tasks_app.housekeeping), and ``size`` is then what it holds. Once it is
    closed and every task of it ended, whoever subscribed hears it once
    (tasks_app.services.notifications).
    """

    id = models.CharField(primary_key=True, max_length=ID_LENGTH, default=new_task_id)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    machine_group = models.ForeignKey(MachineGroup, on_delete=models.CASCADE, related_name="batches")
    size = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # Housekeeping looks for sweeps still open, a few among many.
        indexes = [
            models.Index(fields=["created_at"], name="batch_open", condition=models.Q(closed_at__isnull=True))
        ]

    def __str__(self) -> str:
        return self.id


class TaskQuerySet(models.QuerySet):
    def queued_in(self, group_id: int):
        return self.filter(machine_group_id=group_id, status=Status.SUBMITTED)


class Task(models.Model):
    id = models.CharField(primary_key=True, max_length=ID_LENGTH, default=new_task_id)
    # Owner, project and group are indexed by task_owner_created, task_project_created
    # and task_group_created, which start with them: three indexes less to write at every move.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, db_index=False)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="tasks", db_index=False)
    machine_group = models.ForeignKey(
        MachineGroup, on_delete=models.PROTECT, related_name="tasks", db_index=False
    )
    machine = models.ForeignKey(
        Machine, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks"
    )
    simulator = models.CharField(max_length=64)
    simulator_version = models.CharField(max_length=64, blank=True)
    # Whether its simulator ran in a sandbox (None until it starts); off only where an admin turned them off.
    sandboxed = models.BooleanField(null=True, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=40, choices=Status.choices, default=Status.PENDING_INPUT)
    status_changed_at = models.DateTimeField(default=timezone.now)
    attempt = models.PositiveIntegerField(default=0)
    resubmit_on_preemption = models.BooleanField(default=False)
    time_to_live_seconds = models.PositiveIntegerField(null=True, blank=True)

    # One timestamp per phase; the event list holds every change, these make
    # the common questions (when did it start? how long did it run?) cheap.
    created_at = models.DateTimeField(default=timezone.now)
    queued_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    preparing_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    exit_code = models.IntegerField(null=True, blank=True)
    # How far the current attempt's simulation got (0 to 1), as it reported
    # (tasks_app.simulators.progress), and when it should end at its pace:
    # set only while the pace is steady (tasks_app.executor.progress).
    progress = models.FloatField(null=True, blank=True)
    progress_eta = models.DateTimeField(null=True, blank=True)
    # Seconds its simulation computed, over every attempt that ended computing
    # (an attempt still computing adds its time since started_at). Kept by a
    # trigger (migration 0016), whatever path moves the task: accounting's base.
    computing_seconds = models.FloatField(db_default=0.0, default=0.0, editable=False)
    error_detail = models.TextField(blank=True)
    # A failed simulation's own error line ("quote") and what it usually means
    # ("recommendation"), found in its output; they make its guidance.
    diagnosis = models.JSONField(null=True, blank=True)

    input_path = models.CharField(max_length=300, blank=True)
    input_size = models.BigIntegerField(null=True, blank=True)
    input_sha256 = models.CharField(max_length=64, blank=True)
    output_path = models.CharField(max_length=300, blank=True)
    output_size = models.BigIntegerField(null=True, blank=True)
    output_files = models.PositiveIntegerField(null=True, blank=True)
    # A folder of the project's storage the outputs are also stored in (``<storage_dir>/<id>/``).
    storage_dir = models.CharField(max_length=500, blank=True)
    # Shell command lines run in its sandbox after the simulation ends by itself, before its
    # outputs are stored (``run(on_finish_cleanup=...)``).
    cleanup_commands = models.JSONField(default=list, blank=True)

    # The sweep it was made in (run_many), if any.
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks", db_index=False
    )
    # A resubmission points at the task it repeats; the original lists its
    # resubmissions through ``resubmissions``. Deleting one keeps the other.
    resubmitted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="resubmissions", db_index=False
    )

    class Review(models.TextChoices):
        UNREVIEWED = "unreviewed", "Unreviewed"
        APPROVED = "approved", "Approved"
        NEEDS_ATTENTION = "needs-attention", "Needs attention"

    review_state = models.CharField(max_length=20, choices=Review.choices, default=Review.UNREVIEWED)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    # The client's key for the request that made the task (``Idempotency-Key``):
    # a request sent again after a timeout or a restart finds its task instead
    # of making a second one. NULL, not "", for no key: the unique constraint skips NULLs.
    request_key = models.CharField(max_length=100, null=True, blank=True, editable=False)  # noqa: DJ001

    objects = TaskQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "request_key"],
                name="one_task_per_request_key",
                condition=models.Q(request_key__isnull=False),
            )
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="task_owner_created"),
            models.Index(fields=["project", "-created_at"], name="task_project_created"),
            models.Index(fields=["status", "-created_at"], name="task_status_created"),
            models.Index(fields=["machine_group", "-created_at"], name="task_group_created"),
            models.Index(fields=["-created_at", "-id"], name="task_created"),
            # Queue position: tasks of one group still waiting, in queue order.
            models.Index(
                fields=["machine_group", "queued_at", "id"],
                name="task_queue",
                condition=models.Q(status=Status.SUBMITTED),
            ),
            # Metadata filters are containment (``@>``) only: jsonb_path_ops indexes each
            # key-value path once, smaller and more exact than the default opclass.
            GinIndex(fields=["metadata"], name="task_metadata", opclasses=["jsonb_path_ops"]),
            # Recently ended tasks: the overview's counts, chart and failures, a group's history.
            models.Index(fields=["-ended_at"], name="task_ended", condition=models.Q(ended_at__isnull=False)),
            # The latest failures, wherever the successes around them are: the overview's list.
            models.Index(
                fields=["-ended_at"],
                name="task_failed_ended",
                condition=models.Q(status__in=sorted(statuses.FAILURES)),
            ),
            # A group's latest successes: a queued task's start estimate (views/waiting.py).
            models.Index(
                fields=["machine_group", "-ended_at"],
                name="task_group_succeeded",
                condition=models.Q(status=Status.SUCCESS),
            ),
            # Tasks on machines, a few among millions: each group's running count, and the
            # overview's longest-running list, without visiting every task of a status.
            models.Index(
                fields=["machine_group"],
                name="task_group_on_machine",
                condition=models.Q(status__in=sorted(statuses.ON_MACHINE)),
            ),
            models.Index(
                fields=["preparing_at"],
                name="task_on_machine",
                condition=models.Q(status__in=sorted(statuses.ON_MACHINE)),
            ),
            # Columns most tasks leave empty are indexed where they are set
            # (see migration 0011): the others are no entry to write at each move.
            models.Index(
                fields=["review_state", "-created_at"],
                name="task_reviewed",
                condition=~models.Q(review_state="unreviewed"),
            ),
            models.Index(
                fields=["resubmitted_from"],
                name="task_resubmitted_from",
                condition=models.Q(resubmitted_from__isnull=False),
            ),
            models.Index(
                fields=["reviewed_by"], name="task_reviewed_by", condition=models.Q(reviewed_by__isnull=False)
            ),
            models.Index(fields=["batch"], name="task_batch", condition=models.Q(batch__isnull=False)),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def status_enum(self) -> Status:
        return Status(self.status)

    @property
    def guidance(self) -> statuses.Guidance:
        general = statuses.GUIDANCE[self.status_enum]
        if self.status == Status.FAILED and self.diagnosis:
            return statuses.Guidance(
                what_happened=general.what_happened,
                why=f"The simulator said: {self.diagnosis['quote']}",
                what_to_do=self.diagnosis["recommendation"],
            )
        return general

    @property
    def is_terminal(self) -> bool:
        return self.status_enum in statuses.TERMINAL

    @property
    def progress_percent(self) -> int | None:
        """The reported progress in whole percent while the simulation computes, else None."""
        if self.progress is None or self.status_enum not in statuses.COMPUTING:
            return None
        return math.floor(self.progress * 100)

    @property
    def eta(self):
        """When the simulation should end at its steady pace, while it computes; else None."""
        return self.progress_eta if self.progress_percent is not None else None

    def position_in_queue(self) -> int | None:
        """How many tasks of the same group are ahead of this one, or None."""
        if self.status != Status.SUBMITTED:
            return None
        ahead = Task.objects.queued_in(self.machine_group_id).filter(
            models.Q(queued_at__lt=self.queued_at) | models.Q(queued_at=self.queued_at, id__lt=self.id)
        )
        return ahead.count()

    @property
    def duration(self):
        """Time on a machine: from preparing to the end (or now)."""
        if not self.preparing_at:
            return None
        return (self.ended_at or timezone.now()) - self.preparing_at


class _ProjectTaskCount(models.Model):
    """A change in how many of a project's tasks are in one status, added by a trigger on the tasks.

    A count is the sum of its rows; :func:`tasks_app.task_counts.fold`
    folds them, so that reading a count costs a few rows whatever the
    number of tasks.
    """

    status = models.CharField(max_length=40, choices=Status.choices)
    tasks = models.BigIntegerField()

    class Meta:
        abstract = True


class ProjectStatusCount(_ProjectTaskCount):
    """A change in how many tasks of a project are in one status, and in their compute time.

    The sum of a project's rows per status is its count, whatever the number of
    tasks. Rows are written only by triggers on the task table (migration
    ``0005``), so every path that changes tasks is counted, and folded into one
    row per project and status by :func:`tasks_app.task_counts.fold`.
    """

    # No foreign key constraint: checking it would take a lock on the project's
    # row for every status change. A project's rows sum to zero once its tasks
    # are gone, and folding then removes them.
    # Looked up through status_count_project, which starts with it.
    project = models.ForeignKey(
        Project,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="status_counts",
        db_index=False,
    )
    # Time on a machine (preparing to end) of the tasks that ended there.
    compute = models.DurationField()

    class Meta:
        indexes = [models.Index(fields=["project", "status"], name="status_count_project")]

    def __str__(self) -> str:
        return f"{self.project_id} {self.status}: {self.tasks:+d}"


class ProjectHourCount(_ProjectTaskCount):
    """A change in how many tasks of a project ended in one hour with one final status.

    Kept as :class:`ProjectStatusCount` is (triggers, migration ``0009``, and
    :func:`tasks_app.task_counts.fold`), so the overview counts and charts the
    tasks that ended in the last day from a few rows per hour rather than
    from every one of those tasks.
    """

    project = models.ForeignKey(
        Project, on_delete=models.DO_NOTHING, db_constraint=False, related_name="hour_counts"
    )
    # The hour (UTC) the tasks ended in.
    hour = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["hour", "project"], name="hour_count_hour")]

    def __str__(self) -> str:
        return f"{self.project_id} {self.hour:%Y-%m-%d %H}h {self.status}: {self.tasks:+d}"


class TaskEvent(models.Model):
    """One status change; the task's timeline, append-only."""

    # Looked up through the index on (task, at) below, which also serves the foreign key.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events", db_index=False)
    from_status = models.CharField(max_length=40, choices=Status.choices, blank=True)
    to_status = models.CharField(max_length=40, choices=Status.choices)
    at = models.DateTimeField(default=timezone.now)
    reason = models.TextField(blank=True)
    # Set for changes people made, not for a machine's: indexed where set.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, db_index=False
    )
    machine = models.ForeignKey(Machine, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        ordering = ["at", "id"]
        indexes = [
            models.Index(fields=["task", "at"]),
            models.Index(fields=["actor"], name="event_actor", condition=models.Q(actor__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.task_id}: {self.from_status or '—'} → {self.to_status}"

    @property
    def to_label(self) -> str:
        return Status(self.to_status).label


class ResourceSample(models.Model):
    """What a running task used at one moment: CPU, memory and its work disk.

    Written by the machine while the simulation runs, kept after it ends, so
    the task page can draw resource use over time.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="resource_samples")
    at = models.DateTimeField(default=timezone.now)
    cpu_percent = models.FloatField(help_text="Of one core; 200 means two cores busy.")
    memory_bytes = models.BigIntegerField()
    disk_bytes = models.BigIntegerField()

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["task", "at"])]

    def __str__(self) -> str:
        return f"{self.task_id} at {self.at:%H:%M:%S}: {self.cpu_percent:.0f}% CPU"


class MachinePrice(models.Model):
    """What one hour of a machine of a catalog type costs (``SIMDECK_MACHINE_TYPES``); none is 0.

    Admins set it on the admin site; estimated costs everywhere use the price
    of the moment they are asked (tasks_app.services.accounting).
    """

    machine_type = models.CharField(max_length=64, unique=True)
    price_per_hour = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.machine_type}: {self.price_per_hour} per hour"


class Budget(models.Model):
    """A project's monthly budget, in core-hours of its tasks or in money spent on its machines.

    What counts and when it warns or refuses: tasks_app.services.budgets.
    """

    class Kind(models.TextChoices):
        CORE_HOURS = "core-hours", "core-hours"
        MONEY = "money", "money"

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="budget")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    monthly_limit = models.DecimalField(max_digits=14, decimal_places=4)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    set_at = models.DateTimeField(default=timezone.now)
    # The level this month's use reached ("ok", "warning" from 80 %, "exhausted" from 100 %),
    # as last measured, with its summary: the banner on every page reads these (one
    # query), and a level reached at alert_at is told to who subscribed, once a month.
    alert_level = models.CharField(max_length=16, default="ok")
    alert_month = models.DateField(null=True, blank=True)
    alert_at = models.DateTimeField(null=True, blank=True)
    alert_summary = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.project_id}: {self.monthly_limit} {self.kind} a month"


class NotificationRule(models.Model):
    """Where a user hears of endings: an Apprise URL (or an e-mail address), and what it is told about.

    Without a project, the user's own tasks, batches and groups and the
    budgets of every project they are in; with one, every task, batch and
    group of that project they may see, and its budget. Sent by the scheduler
    (tasks_app.services.notifications); a destination whose messages keep
    failing is marked failing and skipped until a test gets through.
    """

    class Tasks(models.TextChoices):
        ENDED = "ended", "every task that ends"
        FAILED = "failed", "tasks that fail"
        NONE = "none", "no task"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_rules"
    )
    label = models.CharField(max_length=100)
    url = models.TextField()
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    tasks = models.CharField(max_length=8, choices=Tasks.choices, default=Tasks.ENDED)
    groups_terminated = models.BooleanField(default=False)
    # A batch (run_many) whose tasks all ended, and a machine group with no task left to run.
    batches = models.BooleanField(default=False)
    # A monthly budget reaching 80 % and 100 %.
    budgets = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    # Endings up to this moment were looked at; the next look starts here.
    checked_until = models.DateTimeField(default=timezone.now)
    # Messages that could not be delivered after every retry, since the last that was.
    failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_sent_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.label}"


class Delivery(models.Model):
    """A message for a destination, kept until the destination took it or its last try failed.

    Written in the transaction that moves the destination's mark
    (tasks_app.services.notifications.queue): a scheduler stopped or killed
    at any moment loses none. ``due_at`` is when it is tried next; while a
    sending thread tries it, it lies past the longest a try may take, so
    one whose sender died with its process is tried again then.
    """

    rule = models.ForeignKey(NotificationRule, on_delete=models.CASCADE, related_name="+")
    title = models.TextField()
    body = models.TextField()
    attempt = models.PositiveSmallIntegerField(default=1)
    due_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["due_at"], name="delivery_due")]

    def __str__(self) -> str:
        return f"{self.rule_id}: {self.title}"


class Activity(models.Model):
    """Something worth telling that is not a status change, and the audit trail.

    Machine-side news (a disk resized, a machine reclaimed, a group stopping
    itself) and what people did: ``actor`` is who, ``kind`` what, and for
    audited changes ``data`` holds ``{"before": …, "after": …}``. ``project``
    is set on every row written for a person's action, so a project's feed is
    one indexed query. Kinds written by people's actions (see ``AUDITED``):
    ``submitted``, ``failed``, ``killed``, ``metadata-edited``,
    ``group-terminated``, ``role-changed``, ``member-added``,
    ``member-removed``, ``commented``, ``reviewed``, ``budget-set``,
    ``budget-removed``. Shown on task, group and
    project pages.
    """

    AUDITED = (
        "submitted",
        "failed",
        "killed",
        "metadata-edited",
        "group-terminated",
        "role-changed",
        "member-added",
        "member-removed",
        "commented",
        "reviewed",
        "budget-set",
        "budget-removed",
    )

    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=40)
    message = models.TextField()
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="activities"
    )
    task = models.ForeignKey(Task, null=True, blank=True, on_delete=models.CASCADE, related_name="activities")
    group = models.ForeignKey(
        MachineGroup, null=True, blank=True, on_delete=models.CASCADE, related_name="activities"
    )
    machine = models.ForeignKey(Machine, null=True, blank=True, on_delete=models.SET_NULL)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [
            models.Index(fields=["task", "at"]),
            models.Index(fields=["group", "at"]),
            models.Index(fields=["project", "-at"], name="activity_project_feed"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class Comment(models.Model):
    """A note on a task. ``body`` is Markdown source; pages render it sanitised."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="comments")
    body = models.TextField(max_length=20000)
    created_at = models.DateTimeField(default=timezone.now)
    edited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["task", "created_at"], name="comment_task_created")]

    def __str__(self) -> str:
        return f"{self.author} on {self.task_id}"


LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class APIKey(models.Model):
    """A secret a user gives the client or CLI. Only its hash is stored."""

    PREFIX = "sdk_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    hint = models.CharField(max_length=16, help_text="First characters, to recognise the key.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @staticmethod
    def hash(secret: str) -> str:
        # A plain SHA-256 suffices: the secret is 256 random bits, not a password.
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name: str) -> tuple[APIKey, str]:
        """Create a key; returns it with its secret, which is never stored."""
        secret = cls.PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(user=user, name=name, hint=secret[:10], digest=cls.hash(secret))
        return key, secret

    @classmethod
    def find(cls, secret: str) -> APIKey | None:
        """The active key ``secret`` is, with its active user, or None; marks it used."""
        key = (
            cls.objects.select_related("user")
            .filter(digest=cls.hash(secret), revoked_at__isnull=True, user__is_active=True)
            .first()
        )
        now = timezone.now()
        # The account page shows the minute; writing it on every request would
        # add a write to each read of the API.
        if key is not None and (key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION):
            cls.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        return key

    @classmethod
    def authenticate(cls, secret: str):
        """The active user owning ``secret``, or None."""
        key = cls.find(secret)
        return key.user if key is not None else None

    def revoke(self) -> bool:
        """Refuse this key from now on: the next request, and open sockets within seconds.

        Returns False when it was already revoked.
        """
        now = timezone.now()
        if not APIKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now):
            return False
        self.revoked_at = now
        return True


class SavedView(models.Model):
    """A named filter of the tasks table: the query string it stands for.

    Personal unless ``project`` is set, in which case everyone who sees that
    project sees the view too. At most one default per user: the table opens
    with it when no filter is given.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_views")
    name = models.CharField(max_length=100)
    query = models.CharField(max_length=2000, blank=True)
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="saved_views"
    )
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="saved_view_name_per_owner"),
            models.UniqueConstraint(
                fields=["owner"], condition=models.Q(is_default=True), name="one_default_view_per_owner"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class StoredFile(models.Model):
    """A file a user put in their project's storage (:mod:`tasks_app.services.project_storage`).

    The bytes are in the default storage under ``storage/<project id>/<path>``;
    this row is their index: listings, sizes and quotas read it, not the
    bucket. Folders are the paths' prefixes.
    """

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="stored_files")
    path = models.CharField(max_length=1024)
    size = models.BigIntegerField()
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "path"], name="one_stored_file_per_path")]
        indexes = [models.Index(fields=["owner"], name="stored_file_owner")]

    def __str__(self) -> str:
        return self.path


class TaskAsset(models.Model):
    """A file or folder a task takes from storage besides its input (``remote_assets``).

    ``source_task`` is the task whose input or outputs it comes from, or
    None for the project's uploaded files; the chain of tasks reads both ways.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="assets")
    position = models.PositiveSmallIntegerField()
    path = models.CharField(max_length=1024)
    source_task = models.ForeignKey(
        Task, null=True, blank=True, on_delete=models.SET_NULL, related_name="used_by"
    )

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["task", "position"], name="one_asset_per_position")]

    def __str__(self) -> str:
        return f"{self.task_id}: {self.path}"


class JoinToken(models.Model):
    """Lets a host join: machines of ``hosts`` groups then run there (``simdeck-machine join``).

    An admin makes one per host or per lab and hands it over once: only its
    hash is kept. Revoking it stops every machine the host runs, and the
    host can take no more.
    """

    PREFIX = "sdj_"

    name = models.CharField(max_length=100, unique=True)
    hint = models.CharField(max_length=16, help_text="First characters, to recognise the token.")
    digest = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # What the host said of itself when it last asked for work.
    hostname = models.CharField(max_length=255, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    def issue(cls, name: str, created_by=None) -> tuple[JoinToken, str]:
        """Create a token; returns it with its secret, which is never stored."""
        secret = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            name=name, hint=secret[:10], digest=APIKey.hash(secret), created_by=created_by
        )
        return token, secret
