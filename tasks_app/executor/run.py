"""What a machine does with one task, from claiming it to its final status.

    submitted -> preparing-to-compute   claim the head of the queue, fetch its input
              -> started                run the simulator's commands, watching them
              -> finalizing             store outputs and logs
              -> success | failed       by the simulator's exit code

The broker's messages are only "a task is waiting in group G" tokens: the
order of the queue is the database's (``queued_at``), so a task requeued
after losing its machine goes back to the front, and a token delivered twice
claims at most one task each time. A machine that has finished a task takes
the next token off its queue itself and goes on (see :func:`execute_next`).
Any move may lose a race (the task was killed, its group terminated): the
lifecycle then answers False and the executor stops the simulation, keeps
the logs and leaves the status to whoever changed it, finishing a kill when
that is what happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.utils import timezone

from tasks_app import archives, broker, live, sandbox
from tasks_app import simulators as sims
from tasks_app.executor import PlaneError, os_error_message
from tasks_app.executor.machine import signal_near, told_to_stop
from tasks_app.executor.plane import Direct
from tasks_app.executor.process import Outcome, run_invocations, tail
from tasks_app.executor.progress import ProgressWatch
from tasks_app.executor.sampling import ResourceMeter
from tasks_app.lifecycle import TERMINAL, Status
from tasks_app.models import Machine, Task
from tasks_app.services import remote_assets
from tasks_app.simulators.base import Invocation

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
# Measuring a large work directory costs a walk of its tree; do it this often.
DISK_CHECK_SECONDS = 2.0
# A task on a machine outlives a database restart this long: its steps wait
# for the database to come back rather than leave the task stuck midway.
DATABASE_OUTAGE_SECONDS = 600.0
# A machine goes on from task to task by itself (see execute_next) for at
# most this long before it hands back to Celery.
CHAIN_SECONDS = 10.0
# A command still running this long after its spawn has its task moved to
# started; one that ended sooner is recorded with its ending (record_start).
START_RECORD_SECONDS = 0.05
# Outputs up to this size (logs included) are stored before the task leaves
# started, and it moves through finalizing to its ending in one update.
QUICK_STORE_BYTES = 4 << 20
# Inputs up to this size are fetched before viewers are told of the claim,
# which then goes to Redis with the task's next news (see claim_and_run).
HELD_INPUT_BYTES = 1 << 20
# A simulation that died of one of these within this long of the machine's
# worker receiving the same was stopped from outside together with its
# machine (see Execution.taken_down).
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
TOGETHER_SECONDS = 2.0


def through_outage(action, what: str):
    """``action()``, repeated while the database cannot be reached (a restart)."""
    deadline = time.monotonic() + DATABASE_OUTAGE_SECONDS
    pause = 0.5
    while True:
        try:
            return action()
        except (OperationalError, InterfaceError):
            if time.monotonic() > deadline:
                raise
            log.warning("The database is unreachable while %s; trying again", what, exc_info=True)
            connection.close()  # a broken connection is never reopened by itself
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


@functools.cache
def _machine_environment() -> dict[str, str]:
    """The environment every simulation on this machine starts from: the machine's own, less its secrets."""
    env = dict(os.environ)
    # Command lines say "python": give them this machine's interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    withheld = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "CELERY_BROKER_URL")
    for name in (*withheld, "SIMDECK_JOIN_TOKEN", "SIMDECK_MACHINE_TOKEN"):
        env.pop(name, None)
    return env


class RuntimeFailure(Exception):
    """A problem of the machine, not of the simulation: ends ``executor-failed``."""


def directory_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # removed while we looked
    return total


class Execution:
    def __init__(self, task: Task, machine: Machine, plane=None):
        self.task = task
        self.machine = machine
        # The database and storage, or the server's machine interface (see tasks_app.executor.plane).
        self.plane = plane or DIRECT
        self.group = machine.group
        base = Path(settings.SIMDECK_WORK_DIR) / machine.name / task.id
        self.base = base
        self.workdir = base / "work"
        self.tmpdir = base / "tmp"  # the sandbox's /tmp
        self.logdir = base / "logs"
        self.stdout = self.logdir / "stdout.txt"
        self.stderr = self.logdir / "stderr.txt"
        self.inputs: dict[str, tuple[int, int]] = {}
        unit = settings.SIMDECK_DISK_GB_BYTES
        self.disk_limit = self.group.data_disk_gb * unit
        self.disk_max = (self.group.auto_resize_disk_max_gb or self.group.data_disk_gb) * unit
        self.limits = sandbox.Limits.for_machine_type(self.group.machine_type)
        # As the group said at the claim: an admin may allow or forbid the network while it runs.
        self.network = getattr(task, "allow_network", self.group.allow_network)
        self.memory_limit = self.limits.memory_bytes
        self.box: sandbox.Box | None = None  # set once the work folder is ready, unless sandboxes are off
        self.resident: sandbox.Resident | None = None  # the machine's lasting sandbox, where it has one
        self.failure: str | None = None  # set by a watch that stopped the task
        self.next_disk_check = 0.0
        self.meter: ResourceMeter | None = None  # set when the simulator starts
        self.progress: ProgressWatch | None = None  # set once the input is in place

    # -- moves ---------------------------------------------------------------

    def move(self, new: Status, reason: str, **fields) -> bool:
        old = Status(self.task.status)
        tries = 0

        def attempt() -> bool:
            nonlocal tries
            tries += 1
            return self.plane.move(self.task, new, reason, machine=self.machine, expected=old, **fields)

        moved = through_outage(attempt, f"moving task {self.task.id} to {new.value}")
        if not moved and tries > 1 and self.task.status == new:
            # The connection broke after the commit went through: the move is ours.
            log.info("Task %s reached %s before the database went away", self.task.id, new.value)
            through_outage(lambda: self.plane.refresh_status(self.task), f"reading task {self.task.id}")
            return True
        if not moved:
            log.info("Task %s is now %s; %s not applied", self.task.id, self.task.status, new.value)
        return moved

    def fail_runtime(self, message: str) -> None:
        if not self.move(Status.EXECUTOR_FAILED, message, error_detail=message):
            self.finish_kill()

    def finish_kill(self) -> None:
        """A kill requested while we worked: complete it."""
        if self.task.status == Status.PENDING_KILL:
            self.move(Status.KILLED, "Stopped on request.")

    # -- phases --------------------------------------------------------------

    def run(self) -> None:
        """Run a task this machine has claimed (it is preparing-to-compute).

        Whatever goes wrong on the machine's side ends the task: a fault of
        the machine (a bug, the system refusing a process or a file) must
        not leave it preparing or started while the machine goes on.
        """
        try:
            self.run_claimed()
        except Exception as exc:
            log.exception("Task %s: the machine failed while running it", self.task.id)
            message = (
                f"The machine failed while running this task ({type(exc).__name__}: {exc}). "
                "Submit it again; if it fails the same way, tell an admin, quoting the task id."
            )
            try:
                self.plane.refresh_status(self.task)
                if self.task.status not in TERMINAL:
                    self.fail_runtime(message)
                self.plane.end_log(self.task)
            finally:
                self.cleanup()

    def run_claimed(self) -> None:
        try:
            simulator, invocations = self.prepare()
        except RuntimeFailure as exc:
            self.fail_runtime(str(exc))
            self.plane.close_log(self.task)  # followers of an earlier attempt learn it ended
            self.cleanup()
            return
        version = simulator.version()
        where = "in its sandbox" if self.box else "WITHOUT a sandbox (turned off by an admin)"
        self.start = (
            f"{simulator.label} started (version {version}) {where}.",
            # An earlier attempt's progress is not this one's.
            {
                "simulator_version": version,
                "sandboxed": self.box is not None,
                "progress": None,
                "progress_eta": None,
            },
        )
        self.meter = self.resource_meter()
        self.plane.begin_log(self.task)
        self.spawned_at = timezone.now()
        try:
            outcome = self.run_lines(invocations, first_look_seconds=START_RECORD_SECONDS)
            if outcome.stopped is None and self.task.cleanup_commands:
                outcome = self.run_cleanup_commands(outcome)
        except sandbox.ResidentGone:
            # The machine's lasting sandbox ended under the command: a signal to
            # every process of the machine (see taken_down) ends its first process too.
            self.ended_at = time.monotonic()
            name = signal_near(self.ended_at, TOGETHER_SECONDS)
            if name is None:
                raise
            self.plane.end_log(self.task)
            self.end_with_machine(name)
            self.cleanup()
            return
        self.ended_at = time.monotonic()
        self.plane.end_log(self.task)
        self.record_progress(ended=True)
        self.finish(outcome)
        self.cleanup()

    def run_lines(self, invocations: list[Invocation], first_look_seconds: float | None = None) -> Outcome:
        """Command lines in the task's sandbox and folder, watched, their output to its log."""
        return run_invocations(
            invocations,
            self.workdir,
            self.stdout,
            self.stderr,
            self.should_stop,
            base_env=self.environment(),
            box=self.box,
            grace_seconds=settings.SIMDECK_KILL_GRACE_SECONDS,
            first_look_seconds=first_look_seconds,
            publish=self.publish,
        )

    def run_cleanup_commands(self, outcome: Outcome) -> Outcome:
        """The task's ``on_finish_cleanup`` lines, after a simulation that ended by itself.

        They run as its commands do (in its sandbox and folder, their output
        in its log), whether the simulation succeeded or not; the task ends
        as the simulation did, unless it is stopped while they run. A line
        that fails stops the rest and is said in the log.
        """
        lines = [Invocation(["sh", "-c", c], display=c) for c in self.task.cleanup_commands]
        self.note(self.stdout, "stdout", "[simdeck] The simulation ended; running on_finish_cleanup.\n")
        cleaned = self.run_lines(lines)
        if cleaned.stopped is not None:
            return cleaned
        if cleaned.exit_code:
            self.note(
                self.stderr,
                "stderr",
                f"[simdeck] on_finish_cleanup failed (exit code {cleaned.exit_code}).\n",
            )
        return outcome

    def note(self, path: Path, stream: str, text: str) -> None:
        """A line of the platform's own in the task's log, stored and live."""
        with open(path, "ab") as f:
            f.write(text.encode())
        self.publish(stream, text.encode())

    def publish(self, stream: str, data: bytes) -> None:
        """A batch of the simulation's output lines: to the live log, and past the progress reader."""
        if self.progress is not None:
            self.progress.lines(data)
        self.plane.append_log(self.task, stream, data)

    def record_progress(self, ended: bool = False) -> None:
        """Record how far the simulation got and when it may end, if that changed; tell its viewers."""
        due = self.progress.due(ended) if self.progress is not None else None
        if due is None:
            return
        fraction, eta = due
        try:
            self.plane.record_progress(self.task, fraction, eta)
        except (DatabaseError, PlaneError):
            # A missed report is a bar a second late; the next one is recorded.
            log.warning("Could not record the progress of task %s", self.task.id, exc_info=True)
            self.progress.recorded = (None, None)

    def record_start(self) -> bool:
        """Move the task to started (once), dated when its first command was spawned.

        It is not written before the spawn but at the first look at the
        running command (``START_RECORD_SECONDS`` later), or, for a command
        that is over by then, together with its ending (:meth:`start_steps`):
        a task of a few milliseconds then costs one status write, not three.
        A kill or a termination that came while it was preparing makes this
        move fail, and the command is stopped at once.
        """
        if self.task.status == Status.STARTED:
            return True
        reason, fields = self.start
        return self.move(Status.STARTED, reason, at=self.spawned_at, **fields)

    def start_steps(self) -> tuple[list, dict]:
        """The started step still to record on the way to an ending, and its fields."""
        if self.task.status == Status.STARTED:
            return [], {}
        reason, fields = self.start
        return [(Status.STARTED, reason, self.spawned_at)], fields

    def prepare(self):
        if self.base.exists():
            shutil.rmtree(self.base)
        self.base.parent.mkdir(parents=True, exist_ok=True)  # the machine's folder, made once
        self.resident = _resident(self.machine, self.limits, self.network) if sandbox.enabled() else None
        if self.resident:
            # The lasting sandbox's /task and /tmp are the same two folders for every task;
            # the task's own folder points at them, for a look at its files while it runs.
            self.workdir, self.tmpdir = self.resident.task_dir, self.resident.tmp_dir
            for folder in (self.base, self.logdir):
                folder.mkdir(mode=0o700)
            (self.base / "work").symlink_to(self.workdir)
        else:
            for folder in (self.base, self.workdir, self.tmpdir, self.logdir):
                folder.mkdir(mode=0o700)
        missing = f"The simulator is not available on machine {self.machine.name}"
        try:
            simulator = sims.get(self.task.simulator)
            version = simulator.version()
        except (sims.UnknownSimulator, sims.SimulatorMissing) as exc:
            raise RuntimeFailure(f"{missing}: {exc}") from exc
        if unfit := simulator.unfit(version, self.task.parameters):
            raise RuntimeFailure(
                f"Machine {self.machine.name} has {simulator.label} {version}, and {unfit}. "
                "Run it on a group whose machines have that version, or submit it without asking for one."
            )
        if (self.task.input_size or 0) > HELD_INPUT_BYTES:
            self.plane.release()  # fetching takes a while: the claim is shown now
        try:
            with self.plane.open_input(self.task) as archive:
                files = archives.safe_extract(archive, self.workdir)
        except (OSError, archives.UnsafeArchive, ValueError) as exc:
            log.warning("Task %s: the input could not be unpacked", self.task.id, exc_info=True)
            why = os_error_message(exc, self.workdir) if isinstance(exc, OSError) else str(exc)
            raise RuntimeFailure(
                f"The input could not be fetched from storage ({why}). Submit the task again."
            ) from exc
        try:
            files += self.plane.stage_assets(self.task, self.workdir)
        except (OSError, archives.UnsafeArchive, remote_assets.AssetMissing) as exc:
            log.warning("Task %s: its remote assets could not be fetched", self.task.id, exc_info=True)
            why = os_error_message(exc, self.workdir) if isinstance(exc, OSError) else str(exc)
            raise RuntimeFailure(
                f"The remote assets could not be fetched from storage ({why}). "
                "Check them with 'simdeck storage ls' and submit the task again."
            ) from exc
        for path in files:
            st = path.stat()
            self.inputs[path.relative_to(self.workdir).as_posix()] = (st.st_size, st.st_mtime_ns)
        run_dir = self.workdir
        if sandbox.enabled():
            self.box = self.make_box(simulator)
            run_dir = Path(sandbox.WORKDIR)
        self.progress = ProgressWatch(
            simulator.progress_reader(self.workdir, self.task.parameters), folder=self.workdir
        )
        try:
            invocations = simulator.invocations(self.workdir, self.task.parameters, run_dir=run_dir)
        except sims.SimulatorMissing as exc:
            raise RuntimeFailure(f"{missing}: {exc}") from exc
        except sims.InvalidParameters as exc:
            raise RuntimeFailure(f"The input does not fit the simulator: {exc}") from exc
        return simulator, invocations

    def environment(self) -> dict[str, str]:
        return _machine_environment() | self.identity()

    def resource_meter(self) -> ResourceMeter:
        return ResourceMeter(
            self.task.id, settings.SIMDECK_RESOURCE_SAMPLE_SECONDS, record=self.plane.record_sample
        )

    def identity(self) -> dict[str, str]:
        """What a simulation is told of itself: its task, and which attempt at it this is."""
        return {"SIMDECK_TASK_ID": self.task.id, "SIMDECK_TASK_ATTEMPT": str(self.task.attempt)}

    def make_box(self, simulator: sims.Simulator) -> sandbox.Box:
        """The task's sandbox: its work folder handed to the sandbox user, the machine's limits."""
        sandbox.hand_over(self.workdir)
        if not self.resident:
            # (The lasting sandbox's /tmp is the sandbox user's already; what else is in it
            # are the root-owned folders leading to installs bound there, which stay root's.)
            sandbox.hand_over(self.tmpdir)
        machine_dir = self.base.parent
        cgroups = sandbox.cgroups(self.machine.name, self.limits)
        cgroups.hit()  # what an earlier task reached is not this one's
        return sandbox.Box(
            workdir=self.workdir,
            tmp=self.tmpdir,
            identity=_identity(machine_dir),
            env=sandbox.environment(self.limits, self.identity()),
            limits=self.limits,
            read_only=simulator.sandbox_folders(),
            network=self.network,
            cgroups=cgroups,
            loopback=sandbox.loopback(),
            resident=self.resident,
        )

    # -- watching the running simulation --------------------------------------

    def should_stop(self, pid: int) -> str | None:
        """Asked about once a second while the simulator runs; a reason stops it.

        It also measures the resources the simulation uses and records them
        now and then (see :mod:`tasks_app.executor.sampling`).
        """
        try:
            return self.watch(pid)
        except DatabaseError:
            # Restarting, most likely: the simulation goes on and the next
            # look, a second later, tries again on a fresh connection.
            log.warning("Could not look at task %s; carrying on", self.task.id, exc_info=True)
            connection.close()
            return None

    def watch(self, pid: int) -> str | None:
        self.plane.release()  # still running: what is held about it is shown now
        if self.task.status != Status.STARTED and not self.record_start():
            return f"the task became {self.task.status}"
        status = self.plane.status(self.task)
        if status is None:
            return "the task was taken by another attempt"
        if status != Status.STARTED:
            return f"the task became {status}"
        ttl = self.task.time_to_live_seconds
        if ttl and (timezone.now() - self.task.started_at).total_seconds() > ttl:
            return "time to live exceeded"
        self.record_progress()
        meter = self.meter = self.meter or self.resource_meter()
        if self.box and self.limit_reached(self.box.hit()):
            meter.record()
            return "limit reached"
        used = meter.tick(pid)
        if self.memory_limit and used > self.memory_limit:
            self.failure = (
                f"The simulation used {used / 2**30:.2f} GB of memory, more than the "
                f"{self.group.machine_type} machine's {self.memory_limit / 2**30:.2f} GB. "
                "Use a machine type with more memory."
            )
            meter.record()  # the moment it was stopped is the one worth seeing
            return "memory limit exceeded"
        stop = None
        if time.monotonic() >= self.next_disk_check:
            self.next_disk_check = time.monotonic() + DISK_CHECK_SECONDS
            stop = self.check_disk()
        if stop or meter.due():
            meter.record()
        return stop

    def limit_reached(self, hit: list[str]) -> bool:
        """Name the first of the machine type's limits the kernel enforced, as the task's failure."""
        kind = self.group.machine_type
        if "memory" in hit:
            self.failure = (
                f"The simulation reached the {kind} machine's memory limit of "
                f"{(self.memory_limit or 0) / 2**30:.2f} GB, and the kernel stopped it. "
                "Use a machine type with more memory, or make the simulation use less "
                "(fewer threads or ranks)."
            )
        elif "pids" in hit:
            self.failure = (
                f"The simulation tried to run more than {self.limits.pids} processes and threads at once, "
                f"the limit of a {kind} machine, and was stopped. Use fewer threads or processes, or a "
                "machine type with more vCPUs."
            )
        return bool(hit)

    def limit_at_exit(self, outcome: Outcome) -> bool:
        """Whether a command that ended by itself was ended by one of the machine's limits."""
        if self.limit_reached(self.box.hit()):
            return True
        if outcome.exit_code == 128 + signal.SIGXFSZ:  # bubblewrap reports a signal as 128 + its number
            self.failure = (
                f"The simulation wrote a file larger than {self.limits.file_size_bytes / 2**30:.0f} GB, "
                "the largest a machine allows, and was stopped. Write the output in smaller files."
            )
            return True
        return False

    def check_disk(self) -> str | None:
        used = directory_size(self.workdir) + directory_size(self.tmpdir)
        if self.meter:
            self.meter.disk_bytes = used
        while used > self.disk_limit and self.disk_limit < self.disk_max:
            # Auto-resize: grow by the group's base size, up to its maximum.
            unit = settings.SIMDECK_DISK_GB_BYTES
            old = self.disk_limit
            self.disk_limit = min(self.disk_max, self.disk_limit + self.group.data_disk_gb * unit)
            self.plane.disk_resized(self.task, self.machine, old // unit, self.disk_limit // unit, used)
        if used > self.disk_limit:
            unit = settings.SIMDECK_DISK_GB_BYTES
            self.failure = (
                f"The work directory outgrew the machine's disk: {used / unit:.2f} GB used of "
                f"{self.disk_limit // unit} GB. Use a group with a larger data_disk_gb, or set "
                "auto_resize_disk_max_gb to let the disk grow."
            )
            return "disk full"
        return None

    # -- endings ---------------------------------------------------------------

    def finish(self, outcome: Outcome) -> None:
        if outcome.stopped is None and self.box and self.limit_at_exit(outcome):
            # Ended by the kernel at a limit, perhaps before anyone saw it start.
            self.store(logs_only=False)
            steps, fields = self.start_steps()
            failure = self.failure
            moved = self.move(
                Status.EXECUTOR_FAILED,
                failure,
                passing=steps,
                error_detail=failure,
                exit_code=outcome.exit_code,
                **fields,
            )
            if not moved:
                self.finish_kill()
            return
        if outcome.stopped is None and self.taken_down(outcome):
            return
        if outcome.stopped is None:
            # The move to finalizing is guarded: a kill that came meanwhile makes it fail.
            self.finish_normally(outcome)
            return
        through_outage(lambda: self.plane.refresh_status(self.task), f"reading task {self.task.id}")
        # Stopped from outside or by a watch. Whatever it wrote so far is kept.
        status = Status(self.task.status)
        if self.failure and status == Status.STARTED:
            self.store(logs_only=False)
            self.fail_runtime(self.failure)
        elif status == Status.PENDING_KILL:
            self.store(logs_only=False)
            self.move(Status.KILLED, "Stopped on request.", exit_code=outcome.exit_code)
        elif status == Status.STARTED and outcome.stopped == "time to live exceeded":
            self.store(logs_only=False)
            ttl = self.task.time_to_live_seconds
            self.move(
                Status.TTL_EXCEEDED,
                f"Computing took longer than the time to live of {ttl} s.",
                exit_code=outcome.exit_code,
                error_detail=f"The task was stopped after its time to live of {ttl} seconds.",
            )
        else:
            # Ended by its group's termination or by losing the machine: logs only.
            self.store(logs_only=True)

    def taken_down(self, outcome: Outcome) -> bool:
        """End the task as its machine's loss if the simulation was stopped together with the machine.

        A signal that reaches the machine's worker and its simulation at
        once comes from outside, and is meant for the machine: Slurm sends
        one to every process of a pilot job it cancels or ends at its time
        limit (which may end the machine's lasting sandbox first: see
        :meth:`run_claimed`). The simulation did not fail: the task ends as
        when a machine is lost, requeued with ``resubmit_on_preemption``,
        and the worker stops as it was told to. A signal to the worker alone
        (a provider stopping its machine) lets the task run to its end; a
        simulation that dies of such a signal alone fails, found so up to
        ``TOGETHER_SECONDS`` later while the worker's own signal is awaited.
        """
        signum = signal_of(outcome.exit_code)
        if signum not in SHUTDOWN_SIGNALS or signal_near(self.ended_at, TOGETHER_SECONDS) != signum.name:
            return False
        self.end_with_machine(signum.name)
        return True

    def end_with_machine(self, signal_name: str) -> None:
        """End the task as its machine's loss: the machine and its simulation were signalled together."""
        self.store(logs_only=True)
        reason = (
            f"Machine {self.machine.name} was stopped from outside while the task ran: "
            f"{signal_name} reached its worker and the simulation together."
        )
        if job := os.environ.get("SLURM_JOB_ID"):
            reason += f" The machine is Slurm job {job}; the group's page says how Slurm ended it."
        log.warning("Task %s: %s", self.task.id, reason)
        through_outage(
            lambda: self.plane.runner_lost(self.task, self.machine, reason), f"ending task {self.task.id}"
        )

    def finish_normally(self, outcome: Outcome) -> None:
        exited, exited_at = f"The simulator exited with code {outcome.exit_code}.", timezone.now()
        outputs = self.outputs()
        if outputs[1] <= QUICK_STORE_BYTES:
            self.finish_quickly(outcome, exited, exited_at, outputs)
            return
        if not self.move_to_finalizing(outcome, exited):
            self.store(logs_only=True)
            self.finish_kill()
            return
        self.plane.release()  # storing takes a while: finalizing is shown now
        ending, reason, fields = self.ending(outcome)  # before the logs go to storage
        try:
            stored = self.store(record=False, outputs=outputs)
        except OSError as exc:
            self.fail_runtime(f"The outputs could not be stored: {os_error_message(exc, self.workdir)}")
            return
        # What was stored is written with the final status, in the same update.
        if not self.move(ending, reason, **fields, **stored):
            # Ended otherwise meanwhile (its group terminated): the outputs are still there.
            through_outage(lambda: self.plane.record_outputs(self.task, stored), "recording outputs")

    def move_to_finalizing(self, outcome: Outcome, exited: str) -> bool:
        steps, fields = self.start_steps()
        return self.move(Status.FINALIZING, exited, passing=steps, exit_code=outcome.exit_code, **fields)

    def finish_quickly(self, outcome: Outcome, exited: str, exited_at: dt.datetime, outputs: tuple) -> None:
        """Store small outputs first, then move through finalizing to the ending in one update.

        Storing a few kilobytes takes less time than a status change, so the
        task is not shown as finalizing while it happens; its timeline still
        has the finalizing step, at the moment the simulator exited. A kill
        that arrives meanwhile wins: the outputs are kept and the kill ends it.
        """
        ending, reason, end_fields = self.ending(outcome)  # before the logs go to storage
        try:
            stored = self.store(record=False, outputs=outputs)
        except OSError as exc:
            if self.move_to_finalizing(outcome, exited):
                self.fail_runtime(f"The outputs could not be stored: {os_error_message(exc, self.workdir)}")
            else:
                self.finish_kill()
            return
        steps, fields = self.start_steps()
        steps.append((Status.FINALIZING, exited, exited_at))
        fields |= end_fields | stored | {"exit_code": outcome.exit_code}
        if not self.move(ending, reason, passing=steps, **fields):
            through_outage(
                lambda: self.plane.record_outputs(self.task, {"exit_code": outcome.exit_code, **stored}),
                "recording outputs",
            )
            self.finish_kill()

    def ending(self, outcome: Outcome) -> tuple[Status, str, dict]:
        """The final status of a simulation that exited by itself, its reason and its fields."""
        if outcome.exit_code == 0:
            return Status.SUCCESS, "Outputs stored.", {}
        detail = f"The simulator exited with code {outcome.exit_code}."
        fields = {}
        simulator = sims.get(self.task.simulator)
        if found := simulator.diagnose(self.stdout, self.stderr):
            detail = f"{simulator.label} said: {found.quote}\n{found.recommendation}\n{detail}"
            fields["diagnosis"] = {"quote": found.quote, "recommendation": found.recommendation}
        stderr = tail(self.stderr, STDERR_TAIL_LINES)
        if stderr:
            detail += f" Last lines of stderr:\n{stderr}"
        return Status.FAILED, f"Exit code {outcome.exit_code}.", {"error_detail": detail, **fields}

    def outputs(self) -> tuple[list[tuple[Path, str]], int]:
        """The files to store as outputs (logs, and what the simulation made or changed), and their size."""
        files, size = [], 0
        for path, name in ((self.stdout, "stdout.txt"), (self.stderr, "stderr.txt")):
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                continue
            files.append((path, name))
        for path, rel, st in sorted(_walk_files(self.workdir, "")):
            if self.inputs.get(rel) == (st.st_size, st.st_mtime_ns):
                continue  # an input the simulation left untouched
            files.append((path, rel))
            size += st.st_size
        return files, size

    def store(self, logs_only: bool = False, record: bool = True, outputs: tuple | None = None) -> dict:
        """Upload logs, and the files the simulation made or changed.

        Returns the task's fields that describe the stored outputs; with
        ``record`` they are written at once, otherwise the caller writes them.
        The logs are moved into storage, last: read anything of them before.
        """
        fields = {}
        if not logs_only:
            files, size = outputs or self.outputs()
            archive = self.base / "outputs.zip"
            with open(archive, "wb") as out:
                count = archives.write_zip(out, files)
            fields = self.plane.store_outputs(self.task, archive, size, count)
        for stream, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            if path.exists():  # (not when the simulator never started)
                self.plane.store_log(self.task, stream, path)
        if fields and record:
            through_outage(lambda: self.plane.record_outputs(self.task, fields), "recording outputs")
        return fields

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        if self.resident:
            try:
                self.resident.reset()
            except sandbox.ResidentGone:
                log.warning("The sandbox of machine %s ended; the next task makes another", self.machine.name)
                _drop_resident(self.machine.name)


DIRECT = Direct()

# A machine's lasting sandbox, by machine name: made in the process that runs its tasks.
_residents: dict[str, sandbox.Resident | None] = {}


def _resident(machine: Machine, limits: sandbox.Limits, network: bool) -> sandbox.Resident | None:
    """The machine's lasting sandbox, made at its first task (and again if it ended, or if
    its group's network allowance changed since: the sandbox was made with or without one).

    Where one cannot be made, each command gets a sandbox of its own, as
    safe but slower to start: the machine says so once in its log.
    """
    name = machine.name
    if name in _residents:
        found = _residents[name]
        if found is None or (found.alive() and found.network == network):
            return found
        _drop_resident(name)
    machine_dir = Path(settings.SIMDECK_WORK_DIR) / name
    try:
        made = sandbox.Resident(
            machine_dir / ".sandbox",
            identity=_identity(machine_dir),
            limits=limits,
            read_only=_simulator_folders(),
            network=network,
            cgroups=sandbox.cgroups(name, limits),
            loopback=sandbox.loopback(),
            env=_machine_environment(),
        )
    except (sandbox.ResidentGone, OSError):
        log.warning("Machine %s: no lasting sandbox; each command gets one of its own", name, exc_info=True)
        made = None
    _residents[name] = made
    return made


def warm_up(machine: Machine) -> None:
    """Make the machine's lasting sandbox now, so that its first task starts as fast as the next."""
    if sandbox.enabled():
        Path(settings.SIMDECK_WORK_DIR, machine.name).mkdir(parents=True, exist_ok=True)
        limits = sandbox.Limits.for_machine_type(machine.group.machine_type)
        _resident(machine, limits, machine.group.allow_network)


def forget_machine(name: str) -> None:
    """A machine of this process stopped (one of a joined host's): its lasting sandbox and cgroups go."""
    _drop_resident(name)
    sandbox.remove_cgroups(name)


def _drop_resident(name: str) -> None:
    found = _residents.pop(name, None)
    if found is not None:
        with contextlib.suppress(OSError):
            found.close()


def _simulator_folders() -> list[Path]:
    """What every simulator of this machine needs bound read-only (their installs)."""
    folders = set()
    for simulator in sims.REGISTRY.values():
        with contextlib.suppress(sims.SimulatorMissing):
            folders.update(simulator.sandbox_folders())
    return sorted(folders)


def signal_of(exit_code: int | None) -> signal.Signals | None:
    """The signal that ended a command (``subprocess`` says minus its number, a shell or bwrap 128 plus)."""
    if exit_code is None:
        return None
    number = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 128 + signal.NSIG else None
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


@functools.cache
def _identity(machine_dir: Path) -> Path:
    """The machine's passwd and group files for its sandboxes, written once."""
    return sandbox.write_identity(machine_dir / ".identity")


def _walk_files(folder: Path, prefix: str):
    """``(path, relative name, stat)`` of the regular files under ``folder``, links left out."""
    with os.scandir(folder) as entries:
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_files(Path(entry.path), f"{rel}/")
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path), rel, entry.stat(follow_symlinks=False)


def claim_next(group_id: int, machine: Machine) -> Task | None:
    """Take the head of the group's queue for this machine, or None if it is empty.

    One statement (:func:`lifecycle.claim_head`): machines claim in parallel
    without waiting on each other, and each claim is exactly-once.
    """
    try:
        task, online = DIRECT.claim(group_id, machine, reason=f"Picked up by machine {machine.name}.")
    except (OperationalError, InterfaceError):
        # The connection broke: the claim may have committed with its answer
        # lost on the way. Nobody else would ever run or end such a task (this
        # machine is alive and says so), so it is looked for and run.
        log.warning("Machine %s lost its database connection while claiming", machine.name, exc_info=True)
        connection.close()
        task = through_outage(lambda: unanswered_claim(machine), "looking for a claim whose answer was lost")
        if task is None:
            raise  # it did not commit: the token is taken again or re-announced, as before
        return task
    if not online:
        # Reclaimed or lost a moment ago: the token goes back for another machine.
        log.warning("Machine %s is no longer online; its token goes back to the queue", machine.name)
        broker.publish_tokens(machine.group, 1)
    return task


def unanswered_claim(machine: Machine) -> Task | None:
    """The task this machine claimed without hearing back, if any.

    A machine runs one task at a time and runs what it claims at once: a
    task it holds as preparing-to-compute while it is about to claim is one
    whose claim it never heard of.
    """
    task = Task.objects.filter(machine=machine, status=Status.PREPARING).order_by("-preparing_at").first()
    if task is not None:
        log.info("Task %s was claimed by machine %s before its connection broke", task.id, machine.name)
        live.task_changed(
            task.pk,
            task.machine_group_id,
            task.owner_id,
            Status.PREPARING.value,
            left_queue=True,
            project_id=task.project_id,
        )
    return task


def execute_next(group_id: int, machine: Machine) -> str | None:
    """Handle one token: run the task at the head of the queue, if any, then the next ones.

    A machine that has finished a task takes the next token of its group's
    queue itself (:func:`tasks_app.broker.take_token`) and claims at once, rather than
    returning to Celery for it: the same one claim per token, without the
    worker's round trip per message, which is most of what a tiny task
    costs. It goes back to Celery when no token waits, when the queue turns
    out empty, after ``CHAIN_SECONDS`` (so a warm shutdown never waits on a
    long run of tasks), and at once when the worker was told to stop. A
    terminated group, a machine stopped or reclaimed, stops it at the next
    claim, as before.

    Returns the id of the first task run.
    """
    if machine.group_id != group_id:
        log.warning("Machine %s got a token for group %s; dropped", machine.name, group_id)
        return None
    if told_to_stop():
        # Its row may still say online (a signal from outside): the token goes to another machine.
        log.info("Machine %s is stopping; its token goes back to the queue", machine.name)
        broker.publish_tokens(machine.group, 1)
        return None
    until = time.monotonic() + CHAIN_SECONDS
    first, more = claim_and_run(group_id, machine, until)
    while more:
        # No task_prerun between these claims to look at the connection: a
        # database restart meanwhile is waited out here.
        _, more = claim_and_run(group_id, machine, until, wait_out_outages=True)
    return first


def claim_and_run(
    group_id: int, machine: Machine, until: float, wait_out_outages: bool = False
) -> tuple[str | None, bool]:
    """Claim the head of the group's queue and run it; then, before ``until``, take the next token.

    Returns the task's id (None when the queue was empty) and whether a
    token was taken for the next claim. What viewers and log followers are
    told of the task waits and goes to Redis at once at the end
    (``live.together``), with the next token when the broker is the same
    Redis: for a tiny task, the claim, the end of its log, its ending and
    the next token in one round trip. A task still running at its first
    look is shown at once (:meth:`Execution.watch`).
    """
    with live.together():
        if wait_out_outages:
            task = through_outage(lambda: claim_next(group_id, machine), "claiming the next task")
        else:
            task = claim_next(group_id, machine)
        if task is None:
            log.info("Nothing queued in group %s; token dropped", group_id)
            return None, False
        Execution(task, machine).run()
        if time.monotonic() > until or told_to_stop():
            return task.id, False
        taken = broker.take_token_later(machine.group)
    took = taken() if taken else broker.take_token(machine.group)
    return task.id, took
