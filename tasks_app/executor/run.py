"""What a machine does with one task, from picking it up to its final status.

    submitted -> preparing-to-compute   fetch the input into a fresh work directory
              -> started                run the simulator's commands
              -> finalizing             store outputs and logs
              -> success | failed       by the simulator's exit code

Any move may lose a race (the task was killed, its group terminated): the
lifecycle then answers False and the executor stops the simulation, keeps
the logs and leaves the status to whoever changed it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from tasks_app import archives, lifecycle, storage
from tasks_app import simulators as sims
from tasks_app.executor.process import Outcome, run_invocations, tail
from tasks_app.lifecycle import Status
from tasks_app.models import Machine, Task

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20


class RuntimeFailure(Exception):
    """A problem of the machine, not of the simulation: ends ``executor-failed``."""


class Execution:
    def __init__(self, task: Task, machine: Machine):
        self.task = task
        self.machine = machine
        base = Path(settings.SIMDECK_WORK_DIR) / machine.name / task.id
        self.base = base
        self.workdir = base / "work"
        self.logdir = base / "logs"
        self.stdout = self.logdir / "stdout.txt"
        self.stderr = self.logdir / "stderr.txt"
        self.inputs: dict[str, tuple[int, int]] = {}

    # -- moves ---------------------------------------------------------------

    def move(self, new: Status, reason: str, **fields) -> bool:
        moved = lifecycle.transition(self.task, new, reason=reason, by_machine=self.machine, **fields)
        if not moved:
            self.task.refresh_from_db(fields=["status"])
            log.info("Task %s is now %s; %s not applied", self.task.id, self.task.status, new.value)
        return moved

    def fail_runtime(self, message: str) -> None:
        self.move(Status.EXECUTOR_FAILED, message, error_detail=message)

    # -- phases --------------------------------------------------------------

    def run(self) -> None:
        if not self.move(
            Status.PREPARING,
            f"Picked up by machine {self.machine.name}.",
            machine=self.machine,
            attempt=F("attempt") + 1,
        ):
            return
        try:
            simulator, invocations = self.prepare()
        except RuntimeFailure as exc:
            self.fail_runtime(str(exc))
            self.cleanup()
            return
        version = simulator.version()
        if not self.move(
            Status.STARTED, f"{simulator.label} started (version {version}).", simulator_version=version
        ):
            self.cleanup()
            return
        outcome = run_invocations(
            invocations,
            self.workdir,
            self.stdout,
            self.stderr,
            self.should_stop,
            base_env=self.environment(),
            grace_seconds=settings.SIMDECK_KILL_GRACE_SECONDS,
        )
        self.finish(outcome)
        self.cleanup()

    def prepare(self):
        if self.base.exists():
            shutil.rmtree(self.base)
        self.workdir.mkdir(parents=True)
        self.logdir.mkdir(parents=True)
        try:
            simulator = sims.get(self.task.simulator)
            simulator.version()
        except (sims.UnknownSimulator, sims.SimulatorMissing) as exc:
            raise RuntimeFailure(
                f"The simulator is not available on machine {self.machine.name}: {exc}"
            ) from exc
        try:
            with storage.open_file(self.task.input_path) as archive:
                files = archives.safe_extract(archive, self.workdir)
        except (OSError, archives.UnsafeArchive, ValueError) as exc:
            raise RuntimeFailure(
                f"The input could not be fetched from storage ({exc}). Submit the task again."
            ) from exc
        for path in files:
            st = path.stat()
            self.inputs[path.relative_to(self.workdir).as_posix()] = (st.st_size, st.st_mtime_ns)
        try:
            invocations = simulator.invocations(self.workdir, self.task.parameters)
        except sims.SimulatorMissing as exc:
            raise RuntimeFailure(
                f"The simulator is not available on machine {self.machine.name}: {exc}"
            ) from exc
        except sims.InvalidParameters as exc:
            raise RuntimeFailure(f"The input does not fit the simulator: {exc}") from exc
        return simulator, invocations

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Command lines say "python": give them this machine's interpreter.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["SIMDECK_TASK_ID"] = self.task.id
        for name in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
            env.pop(name, None)
        return env

    def should_stop(self) -> str | None:
        """Asked once a second while the simulator runs."""
        status = Task.objects.filter(pk=self.task.id).values_list("status", flat=True).first()
        if status != Status.STARTED:
            return f"the task became {status}"
        ttl = self.task.time_to_live_seconds
        if ttl and (timezone.now() - self.task.started_at).total_seconds() > ttl:
            return "time to live exceeded"
        return None

    def finish(self, outcome: Outcome) -> None:
        self.task.refresh_from_db(fields=["status"])
        status = Status(self.task.status)
        if outcome.stopped is None:
            reason = f"The simulator exited with code {outcome.exit_code}."
            if not self.move(Status.FINALIZING, reason, exit_code=outcome.exit_code):
                self.store(logs_only=True)
                return
            try:
                self.store()
            except OSError as exc:
                self.fail_runtime(f"The outputs could not be stored: {exc}")
                return
            if outcome.exit_code == 0:
                self.move(Status.SUCCESS, "Outputs stored.")
            else:
                detail = f"The simulator exited with code {outcome.exit_code}."
                stderr = tail(self.stderr, STDERR_TAIL_LINES)
                if stderr:
                    detail += f" Last lines of stderr:\n{stderr}"
                self.move(Status.FAILED, f"Exit code {outcome.exit_code}.", error_detail=detail)
            return
        # Stopped from outside. Whatever it wrote so far is kept.
        self.store(logs_only=status not in (Status.PENDING_KILL, Status.STARTED))
        if status == Status.PENDING_KILL:
            self.move(Status.KILLED, "Stopped on request.", exit_code=outcome.exit_code)
        elif status == Status.STARTED and outcome.stopped == "time to live exceeded":
            ttl = self.task.time_to_live_seconds
            self.move(
                Status.TTL_EXCEEDED,
                f"Computing took longer than the time to live of {ttl} s.",
                exit_code=outcome.exit_code,
                error_detail=f"The task was stopped after its time to live of {ttl} seconds.",
            )

    def store(self, logs_only: bool = False) -> None:
        """Upload logs, and the files the simulation made or changed."""
        for stream, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            if path.exists():
                storage.save_file(storage.log_name(self.task.id, stream), path)
        if logs_only:
            return
        files = [(self.stdout, "stdout.txt"), (self.stderr, "stderr.txt")]
        size = sum(p.stat().st_size for p, _ in files if p.exists())
        files = [(p, n) for p, n in files if p.exists()]
        for path in sorted(self.workdir.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(self.workdir).as_posix()
            st = path.stat()
            if self.inputs.get(rel) == (st.st_size, st.st_mtime_ns):
                continue  # an input the simulation left untouched
            files.append((path, rel))
            size += st.st_size
        archive = self.base / "outputs.zip"
        with open(archive, "wb") as out:
            count = archives.write_zip(out, files)
        name = storage.save_file(storage.output_name(self.task.id), archive)
        Task.objects.filter(pk=self.task.id).update(output_path=name, output_size=size, output_files=count)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def execute(task_id: str, machine: Machine) -> None:
    task = Task.objects.filter(pk=task_id).first()
    if task is None:
        log.warning("Task %s does not exist; message dropped", task_id)
        return
    if task.status != Status.SUBMITTED:
        # A second delivery of the same message: the task already left the queue.
        log.info("Task %s is %s, not queued; message dropped", task_id, task.status)
        return
    Execution(task, machine).run()
