"""The Slurm provider: each machine is a pilot job that runs one Simdeck machine.

Like the local provider it reconciles: every few seconds it reads Slurm's
queue (one ``squeue`` for all pilots) and the database's wish, then submits
(``sbatch``), follows and cancels (``scancel``) pilots to close the gap, the
way dask-jobqueue drives a cluster through the scheduler's own commands. A
pilot's batch script ``exec``s a machine that holds nothing but its own
token (``simdeck-machine run``, :mod:`tasks_app.executor.remote`): it talks
to the server's machine interface at ``SIMDECK_MACHINE_URL``, goes online,
beats its heartbeat and sandboxes its simulations by itself, with the same
executor as a local machine. No database password, broker or secret key
reaches the cluster. The job's id and, while it waits,
Slurm's reason are kept on the machine's row, where the console shows them.

Slurm holds the state, not this process: a restarted provider finds its
pilots by the job ids in the database and follows them on.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tasks_app import broker, lifecycle, services
from tasks_app.errors import Refused
from tasks_app.models import Activity, Machine, MachineGroup, Task
from tasks_app.services.groups import machines_wanted

log = logging.getLogger(__name__)

G = MachineGroup.State
M = Machine.State
LIVE = [M.PROVISIONING, M.ONLINE, M.STOPPING]
# Job states after which no process of the pilot runs any more.
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "SPECIAL_EXIT",
    "TIMEOUT",
}
# How long a stopping pilot may take to store its task's logs before it is cancelled outright.
STOP_GRACE_SECONDS = 30.0
# How long a running pilot may take to bring its machine online.
ONLINE_TIMEOUT_SECONDS = 180.0
# After a pilot ended without its machine going online, wait this long (doubling) before the next.
RETRY_SECONDS = 15.0
COMMAND_TIMEOUT = 30.0


class SlurmError(Exception):
    """A Slurm command failed; the message is Slurm's own, on one line."""


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    reason: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED


# -- Slurm's commands -----------------------------------------------------------


def command(name: str) -> str:
    where = settings.SIMDECK_SLURM_BIN
    path = str(Path(where) / name) if where else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise SlurmError(
            f"Slurm's {name} command is not installed on this server"
            + (f" (not in {where})" if where else " (not on PATH)")
            + "; install Slurm's client commands or set SIMDECK_SLURM_BIN to the folder that holds them."
        )
    return path


def run(name: str, *args: str, stdin: str | None = None, env: dict | None = None) -> str:
    """Run one of Slurm's commands; its output, or :class:`SlurmError` with its message."""
    try:
        proc = subprocess.run(
            [command(name), *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{name} did not answer within {COMMAND_TIMEOUT:.0f} s.") from None
    if proc.returncode != 0:
        message = " ".join((proc.stderr or proc.stdout).split()) or f"exit code {proc.returncode}"
        raise SlurmError(message.removeprefix(f"{name}: error: "))
    return proc.stdout


def queue() -> dict[str, Job]:
    """Every job of this account that Slurm still knows, finished ones included (for ``MinJobAge``)."""
    out = run("squeue", "--noheader", "--states=all", f"--user={getpass.getuser()}", "--format=%i|%T|%r")
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|", 2)
        if len(parts) == 3:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            jobs[parts[0]] = Job(parts[0], parts[1], reason)
    return jobs


def cancel(*job_ids: str, gently: bool = False) -> None:
    """Cancel pilots; ``gently`` only asks the machine to stop (TERM to its worker: a warm shutdown)."""
    if not job_ids:
        return
    args = ["--batch", "--signal=TERM"] if gently else []
    try:
        run("scancel", *args, *job_ids)
    except SlurmError as exc:
        # A job that ended meanwhile is not an error: what was asked is done.
        log.info("scancel %s: %s", " ".join(job_ids), exc)


# -- what a group's pilots ask Slurm for --------------------------------------------


def option(group: MachineGroup, name: str) -> str:
    default = getattr(settings, f"SIMDECK_SLURM_{name.upper()}")
    return (group.provider_options or {}).get(name) or default


def remaining_minutes(group: MachineGroup) -> int | None:
    """What is left of the group's time to live, in whole minutes (Slurm's unit), or None."""
    ttl = group.auto_terminate_minutes
    if ttl is None or not math.isfinite(ttl):
        return None
    elapsed = (timezone.now() - group.started_at).total_seconds() / 60 if group.started_at else 0
    return max(1, math.ceil(ttl - elapsed))


def job_options(group: MachineGroup, minutes: int | None) -> list[str]:
    """The machine type as CPUs and memory, the group's options, its time to live as the time limit."""
    kind = settings.SIMDECK_MACHINE_TYPES[group.machine_type]
    memory_mib = math.ceil(float(kind["memory_gb"]) * settings.SIMDECK_MEMORY_GB_BYTES / 2**20)
    args = [
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={int(kind['vcpus'])}",
        f"--mem={memory_mib}M",
        # A pilot whose node failed is a lost machine, its task ended or
        # resubmitted by Simdeck; Slurm running the same pilot again later
        # would start a machine nobody asked for.
        "--no-requeue",
    ]
    for name in ("partition", "account", "qos"):
        if value := option(group, name):
            args.append(f"--{name}={value}")
    if minutes is not None:
        # The worker gets TERM before the limit: a warm shutdown, so an idle
        # machine stops cleanly instead of being killed.
        args += [f"--time={minutes}", f"--signal=B:TERM@{settings.SIMDECK_SLURM_SIGNAL_SECONDS}"]
    return args


def check_group(group: MachineGroup) -> None:
    """Ask Slurm whether it would run one pilot of ``group`` (``sbatch --test-only``); refuse if not.

    It checks in one call what a start needs: the commands, a reachable
    controller, the partition, and a node with the type's CPUs and memory.
    """
    args = [*job_options(group, remaining_minutes(group)), "--test-only", "--wrap=true"]
    try:
        run("sbatch", *args)
    except SlurmError as exc:
        text = str(exc)
        if "partition" in text.lower():
            name = option(group, "partition")
            raise Refused(
                f"Slurm has no partition {name!r} this account may use ({text}). "
                f"Partitions: {', '.join(partitions()) or 'none found'}.",
                field="provider_options",
                code="slurm_partition",
            ) from None
        if "contact slurm controller" in text or "not installed" in text or "did not answer" in text:
            raise Refused(
                f"Slurm is not reachable from this server: {text} An admin checks that slurmctld "
                "runs and that SLURM_CONF and SIMDECK_SLURM_BIN point at the cluster (docs/deploy.md).",
                code="provider_unavailable",
                status=409,
            ) from None
        raise Refused(
            f"Slurm would not run a machine of group {group.name} ({group.machine_type}): {text}",
            code="slurm_refused",
            field="provider_options",
        ) from None
    if not settings.SIMDECK_MACHINE_URL:
        raise Refused(
            "This server does not know its address as Slurm's nodes reach it, so its pilots could "
            "not talk to it. An admin sets SIMDECK_MACHINE_URL (e.g. http://10.0.0.5:8000; see "
            "docs/deploy.md).",
            code="provider_unavailable",
            status=409,
        )


def partitions() -> list[str]:
    try:
        return sorted({p.rstrip("*") for p in run("sinfo", "--noheader", "--format=%P").split()})
    except SlurmError:
        return []


def pilot_script(machine: Machine) -> str:
    """The batch script: become the machine (``exec``, so Slurm's signals reach it)."""
    python = settings.SIMDECK_SLURM_PYTHON or sys.executable
    argv = [python, "-m", "tasks_app.executor.remote", "run", settings.SIMDECK_MACHINE_URL]
    checkout = settings.SIMDECK_SLURM_CHECKOUT or str(settings.BASE_DIR)
    return f"#!/bin/sh\ncd {shlex.quote(checkout)} || exit 1\nexec {shlex.join(argv)}\n"


# What a pilot takes of the provider's environment: how to run programs, where Slurm is,
# how the host's sandbox is set up. Nothing else: the server's credentials stay on the server.
PASSED_ON = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def pilot_environment(token: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k in PASSED_ON or k.startswith(("SIMDECK_SANDBOX", "SLURM_"))
    }
    env["SIMDECK_MACHINE_TOKEN"] = token
    return env | {str(k): str(v) for k, v in settings.SIMDECK_SLURM_ENV.items()}


def submit(machine: Machine, token: str) -> str:
    """Submit the pilot of ``machine``, which holds ``token``; its job id."""
    group = machine.group
    logs = Path(settings.SIMDECK_HOME) / "logs" / "machines"
    logs.mkdir(parents=True, exist_ok=True)
    args = [
        "--parsable",
        f"--job-name=simdeck-{machine.name}",
        f"--output={logs / (machine.name + '.log')}",
        "--export=ALL",
        *job_options(group, remaining_minutes(group)),
    ]
    # Handed over by sbatch, so the token is not written into the script.
    out = run("sbatch", *args, stdin=pilot_script(machine), env=pilot_environment(token))
    return out.strip().split(";")[0]


# -- the loop ---------------------------------------------------------------------


def record_end(machine: Machine, job: Job | None) -> None:
    """Keep the pilot's last state (or none, when Slurm forgot the job): it is followed no more."""
    Machine.objects.filter(pk=machine.pk).update(job_state=job.state if job else "", job_reason="")


class SlurmProvider:
    def __init__(self) -> None:
        self.stopping: dict[int, float] = {}  # machine id -> when to cancel it outright
        self.running_since: dict[int, float] = {}  # machine id -> when its pilot was first seen running
        self.retry_at: dict[int, tuple[float, float]] = {}  # group id -> (not before, next delay)
        self.refusals: dict[int, str] = {}  # group id -> the last refusal said on its page
        self.jobs: dict[str, Job] = {}

    def run_forever(self, interval: float = 2.0) -> None:
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(True))
        while not stop:
            try:
                self.reconcile()
            except SlurmError as exc:
                # Slurm down: nothing is known, so nothing is declared lost.
                log.warning("Slurm did not answer (%s); retrying", exc)
            except Exception:
                log.exception("Reconciliation failed; retrying")
                close_old_connections()
            time.sleep(interval)
        # The pilots run on without this process; a new one follows them on.

    def reconcile(self) -> None:
        self.jobs = queue()
        machines = Machine.objects.filter(group__provider="slurm", state__in=LIVE).select_related("group")
        for machine in machines:
            self.follow(machine)
        for machine in Machine.objects.filter(
            group__provider="slurm", state=M.STOPPED, job_state__in=["PENDING", "RUNNING", "COMPLETING"]
        ).select_related("group"):
            self.settle(machine)
        self.cancel_unwanted()
        for group in MachineGroup.objects.filter(provider="slurm", state__in=[G.STARTED, G.TERMINATING]):
            if group.state == G.STARTED:
                self.scale(group)
            else:
                self.terminate(group)
        for machine in Machine.objects.filter(
            group__provider="slurm", group__state=G.TERMINATED, state__in=LIVE
        ).select_related("group"):
            self.stop(machine)
        self.enforce_stops()

    def follow(self, machine: Machine) -> None:
        """Bring the machine's row in line with its pilot's state in Slurm."""
        job = self.jobs.get(machine.job_id) if machine.job_id else None
        if job is None or job.ended:
            self.pilot_ended(machine, job)
            return
        if (job.state, job.reason) != (machine.job_state, machine.job_reason):
            Machine.objects.filter(pk=machine.pk).update(job_state=job.state, job_reason=job.reason[:200])
        if job.state == "RUNNING" and machine.state == M.PROVISIONING:
            since = self.running_since.setdefault(machine.pk, time.monotonic())
            if time.monotonic() - since > ONLINE_TIMEOUT_SECONDS:
                cancel(job.id)
                services.machine_lost(
                    machine,
                    f"The pilot job {job.id} of machine {machine.name} ran for "
                    f"{ONLINE_TIMEOUT_SECONDS:.0f} s without its machine coming online; "
                    f"see {machine.name}.log in the machines' logs.",
                )

    def settle(self, machine: Machine) -> None:
        """Record how the pilot of a machine that stopped by itself ended.

        A pilot cancelled from outside (``scancel``, node failure) gets its
        TERM in every process at once: the worker notices its task's process
        die and ends the task (resubmitted if asked, as for a lost machine),
        then stops as if told to. Only Slurm knows it was not told to, so the
        machine is marked lost here, with Slurm's word for it.
        """
        job = self.jobs.get(machine.job_id)
        if job is not None and not job.ended:
            return
        final = job.state if job else "gone from Slurm's queue"
        record_end(machine, job)
        asked = self.stopping.pop(machine.pk, None) is not None
        if machine.online_at is None and not asked:
            # It stopped by itself before taking any task: its node could not
            # sandbox, or the worker could not start. Say so, and wait before the next.
            self.back_off(machine.group)
            self.refuse(
                machine.group,
                f"The machine of pilot job {machine.job_id} stopped before coming online ({final}); "
                f"see {machine.name}.log in the machines' logs.",
            )
            return
        if final == "COMPLETED" or asked:
            return
        reason = f"The Slurm job {machine.job_id} of machine {machine.name} ended ({final})."
        if Machine.objects.filter(pk=machine.pk, state=M.STOPPED).update(state=M.LOST):
            log.warning(reason)
            Activity.objects.create(kind="machine-lost", group=machine.group, machine=machine, message=reason)

    def cancel_unwanted(self) -> None:
        """Cancel the pilots of machines given up on elsewhere (silent too long, reclaimed).

        Such a pilot may run on where the server cannot hear it (a node cut
        off from the network); its allocation is of no use to anyone now.
        """
        given_up = (
            Machine.objects.filter(group__provider="slurm", state__in=[M.LOST, M.RECLAIMED])
            .exclude(job_id="")
            .exclude(job_state="")
            .exclude(job_state__in=ENDED)
        )
        for machine in given_up:
            job = self.jobs.get(machine.job_id)
            if job is None or job.ended:
                record_end(machine, job)
            elif machine.pk not in self.stopping:
                log.info("Cancelling pilot job %s of machine %s (%s)", job.id, machine.name, machine.state)
                cancel(job.id)
                self.stopping[machine.pk] = math.inf

    def pilot_ended(self, machine: Machine, job: Job | None) -> None:
        self.running_since.pop(machine.pk, None)
        self.stopping.pop(machine.pk, None)
        state = job.state if job else "gone from Slurm's queue"
        record_end(machine, job)
        busy = machine.tasks.filter(status__in=lifecycle.ON_MACHINE).exists()
        if machine.state == M.STOPPING and not busy:
            Machine.objects.filter(pk=machine.pk, state=M.STOPPING).update(
                state=M.STOPPED, stopped_at=timezone.now()
            )
            return
        if not machine.job_id:
            reason = f"Machine {machine.name} has no pilot job (its submission was interrupted)."
        else:
            reason = f"The Slurm job {machine.job_id} of machine {machine.name} ended ({state})."
            if job and job.reason:
                reason = reason[:-2] + f": {job.reason})."
        log.warning(reason)
        services.machine_lost(machine, reason)
        Activity.objects.create(kind="machine-lost", group=machine.group, machine=machine, message=reason)
        if machine.online_at is None:
            self.back_off(machine.group)

    def back_off(self, group: MachineGroup) -> None:
        """A pilot ended before its machine came online: the next waits, longer each time."""
        _, delay = self.retry_at.get(group.pk, (0.0, RETRY_SECONDS))
        self.retry_at[group.pk] = (time.monotonic() + delay, min(delay * 2, 600.0))

    def wanted(self, group: MachineGroup) -> int:
        return machines_wanted(group)

    def scale(self, group: MachineGroup) -> None:
        live = list(group.machines.filter(state__in=[M.PROVISIONING, M.ONLINE]))
        wanted = self.wanted(group)
        if wanted > len(live):
            not_before, _ = self.retry_at.get(group.pk, (0.0, 0.0))
            minutes = remaining_minutes(group)
            # A pilot that would have to stop as soon as it starts is not worth queueing.
            if time.monotonic() >= not_before and (
                minutes is None or minutes * 60 > settings.SIMDECK_SLURM_SIGNAL_SECONDS
            ):
                for _ in range(wanted - len(live)):
                    if not self.spawn(group):
                        break
        elif len(live) > wanted:
            busy = set(
                Task.objects.filter(machine__in=live, status__in=lifecycle.ON_MACHINE).values_list(
                    "machine_id", flat=True
                )
            )
            # Pilots still queued go first: they cost nothing to give up.
            spare = sorted((m for m in live if m.pk not in busy), key=lambda m: m.state == M.ONLINE)
            for machine in spare[: len(live) - wanted]:
                machine.group = group
                self.stop(machine)

    def spawn(self, group: MachineGroup) -> Machine | None:
        machine = Machine(group=group, name=f"{group.name}-{secrets.token_hex(3)}")
        token = machine.issue_token()
        machine.save()
        try:
            job_id = submit(machine, token)
        except SlurmError as exc:
            machine.delete()  # nothing half-created: no row for a pilot Slurm does not have
            self.refuse(group, f"Slurm took no pilot job for this group: {exc}")
            self.back_off(group)
            return None
        Machine.objects.filter(pk=machine.pk).update(job_id=job_id, job_state="PENDING")
        self.refusals.pop(group.pk, None)
        log.info("Submitted pilot job %s for machine %s of group %s", job_id, machine.name, group.name)
        return machine

    def refuse(self, group: MachineGroup, why: str) -> None:
        """Say once on the group's page why it gets no machine."""
        if self.refusals.get(group.pk) == why:
            return
        self.refusals[group.pk] = why
        log.error("Group %s: %s", group.name, why)
        Activity.objects.create(kind="machines-refused", group=group, message=why)

    def stop(self, machine: Machine) -> None:
        """A queued pilot is cancelled; a running one is asked to stop (a warm shutdown) first."""
        if machine.state != M.STOPPING:
            Machine.objects.filter(pk=machine.pk, state__in=LIVE).update(state=M.STOPPING)
            machine.state = M.STOPPING
        if machine.pk in self.stopping:
            return
        job = self.jobs.get(machine.job_id)
        if job is None or job.state != "RUNNING":
            if machine.job_id:
                cancel(machine.job_id)
            self.stopping[machine.pk] = time.monotonic()
            return
        cancel(machine.job_id, gently=True)
        self.stopping[machine.pk] = time.monotonic() + STOP_GRACE_SECONDS

    def enforce_stops(self) -> None:
        for mid, deadline in list(self.stopping.items()):
            if time.monotonic() > deadline:
                job_id = Machine.objects.filter(pk=mid).values_list("job_id", flat=True).first()
                job = self.jobs.get(job_id or "")
                if job is not None and not job.ended:
                    log.warning("Pilot job %s did not stop in time; cancelling it", job_id)
                    cancel(job_id)
                self.stopping[mid] = math.inf  # cancelled once is enough

    def terminate(self, group: MachineGroup) -> None:
        machines = list(group.machines.filter(state__in=LIVE).select_related("group"))
        for machine in machines:
            self.stop(machine)
        # Terminated once no pilot of it runs any more, so nothing of it is left in Slurm.
        job_ids = group.machines.exclude(job_id="").values_list("job_id", flat=True)
        if not machines and not any(j in self.jobs and not self.jobs[j].ended for j in job_ids):
            MachineGroup.objects.filter(pk=group.pk, state=G.TERMINATING).update(state=G.TERMINATED)
            self.purge_queue(group)
            self.retry_at.pop(group.pk, None)
            log.info("Machine group %s terminated", group.name)

    def purge_queue(self, group: MachineGroup) -> None:
        broker.purge_tokens(group)
