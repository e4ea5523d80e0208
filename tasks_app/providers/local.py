"""The local provider: machines are Celery worker processes on this host.

It works by reconciliation. It compares what the database asks for
(started groups and their size, groups being terminated) with the worker
processes it runs, and closes the gap: spawn what is missing, stop what is
no longer wanted, report as lost what died. Because the database holds the
wish, the API never talks to this process, and a restart of it picks up
where the previous one left off.

A round runs when the wish changes (a start, a termination, a lost machine:
PostgreSQL's NOTIFY on :data:`provider_rules.PROVIDER_CHANNEL`), when a worker
exits (its pidfd), and otherwise once every ``QUIET_SECONDS``: an idle
platform costs next to nothing. While something changes that sends no
notice (an elastic group's demand, a machine being stopped, a refused
sandbox, spot rehearsals), a round runs every interval (a second).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from tasks_app import broker, lifecycle, provider_rules, sandbox, services
from tasks_app.models import Activity, Machine, MachineGroup, Task
from tasks_app.services.groups import machines_wanted

log = logging.getLogger(__name__)

G = MachineGroup.State
M = Machine.State
LIVE = [M.PROVISIONING, M.ONLINE, M.STOPPING]
# How long a terminated machine may take to store the logs of the task it
# was running before its processes are killed.
STOP_GRACE_SECONDS = 30.0
# Between rounds when every change arrives as a notice or an exit: a safety net
# for changes made behind the services' back (an edit on the admin site).
QUIET_SECONDS = 15.0


POOL = "tasks_app.executor.pool:TaskPool"


def worker_command(machine: Machine) -> list[str]:
    """The machine's worker: one process, its task on a thread of its own.

    A machine runs one task at a time, so a pool process (Celery's default)
    only held a second copy of the worker's imports; a task's simulation
    runs in processes of its own either way. With the thread pool the main
    thread stays free while a task runs: it answers remote control
    (``tasks_app.executor.inspect``) and keeps the broker connection alive,
    which the ``solo`` pool, running the task on the main thread, would not.
    The pool is Celery's thread pool that wakes the worker when its task ends.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "console",
        "worker",
        "--queues",
        machine.group.queue_name,
        "--pool",
        "custom",  # POOL, named in the environment (worker_environment)
        "--concurrency",
        "1",
        "--prefetch-multiplier",
        "1",
        "--hostname",
        f"{machine.name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]


def worker_environment(machine: Machine) -> dict[str, str]:
    """What a machine's worker finds in its environment beside the platform's own."""
    return {
        "SIMDECK_MACHINE_ID": str(machine.pk),
        "SIMDECK_INSTANCE": instance(),
        # Celery takes a pool of its own only by this name, with --pool custom.
        "CELERY_CUSTOM_WORKER_POOL": POOL,
    }


def cpu_set(vcpus: int, slot: int) -> list[int] | None:
    """The cores a machine is pinned to, or None to share all of them.

    Pin only where the host has more cores than the type asks for; machines
    take consecutive slices in turn, so two small machines do not share one
    core while another sits idle.
    """
    available = sorted(os.sched_getaffinity(0))
    if vcpus >= len(available):
        return None
    start = (slot * vcpus) % len(available)
    return [available[(start + i) % len(available)] for i in range(vcpus)]


class LocalProvider:
    def __init__(self) -> None:
        self.processes: dict[int, subprocess.Popen] = {}
        self.exits: dict[int, int] = {}  # machine id -> a pidfd of its worker, where the system has them
        self.interval = 1.0
        self.stopping: dict[int, float] = {}
        self.refusals: dict[int, str] = {}  # group id -> why its machines cannot start, once said
        # Elastic group id -> since when its queue waits for a simulator none of its machines has.
        self.lacking_since: dict[int, float] = {}
        self.notices: psycopg.Connection | None = None  # LISTENs on provider_rules.PROVIDER_CHANNEL
        self.watching = False  # a started group changes without notice: elastic, or spot rehearsals
        self.woken: int | None = None  # readable when a signal came (see run_forever)
        self.log_dir = Path(settings.SIMDECK_HOME) / "logs" / "machines"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # -- the loop ------------------------------------------------------------

    def adopt_orphans(self) -> None:
        """Machines a previous provider left marked live are gone with it."""
        for machine in Machine.objects.filter(group__provider="local", state__in=LIVE):
            services.machine_lost(machine, f"Machine {machine.name} stopped when its provider restarted.")

    def run_forever(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.adopt_orphans()
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.append(True))
        # A signal wakes the wait between rounds at once (Python retries an
        # interrupted select() for its full time, up to QUIET_SECONDS).
        self.woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake)
        while not stop:
            if self.notices is None:
                self.listen()  # before the round: a change made during it wakes the next one
            try:
                self.reconcile()
                quiet = self.quiet()
            except Exception:  # a database blip must not take the machines down
                log.exception("Reconciliation failed; retrying")
                close_old_connections()
                quiet = False  # soon: a notice may have come and gone meanwhile
            self.wait_for_exit(QUIET_SECONDS if quiet else interval)
        self.shutdown()

    def quiet(self) -> bool:
        """Whether nothing can change unseen: every change of the wish and every worker's exit wakes us."""
        return (
            self.notices is not None
            and len(self.exits) == len(self.processes)
            and not self.stopping
            and not self.refusals
            and not self.watching
        )

    def listen(self) -> None:
        """Our own connection, in autocommit, for the notices of :func:`provider_rules.wake_providers`."""
        try:
            self.notices = psycopg.connect(**connection.get_connection_params(), autocommit=True)
            self.notices.execute(f"LISTEN {provider_rules.PROVIDER_CHANNEL}")
        except psycopg.Error as exc:
            log.warning("Cannot listen for changes (%s); checking every %g s", exc, self.interval)
            self.close_notices()

    def close_notices(self) -> None:
        if self.notices is not None:
            self.notices.close()
            self.notices = None

    def wait_for_exit(self, timeout: float) -> bool:
        """Sleep until the next round, a worker's exit or a notice; whether one of those two woke us.

        A worker killed mid-task leaves its simulator running, orphaned. It
        is swept (:meth:`reap_exited`) the moment the worker is gone, so it
        has no time to finish its work beside the attempt that replaces it.
        """
        fds = list(self.exits.values())
        if self.notices is not None:
            fds.append(self.notices.fileno())
        if self.woken is not None:
            fds.append(self.woken)
        if not fds:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.woken in ready:
            try:
                while os.read(self.woken, 64):
                    pass
            except BlockingIOError:
                pass
        if self.notices is not None and self.notices.fileno() in ready:
            try:
                for _ in self.notices.notifies(timeout=0):
                    pass  # one round answers them all
            except psycopg.Error:
                log.warning("The connection for notices broke; listening again")
                self.close_notices()
        return bool(ready)

    def reconcile(self) -> None:
        self.reap_exited()
        self.drop_unwanted()
        groups = list(MachineGroup.objects.filter(provider="local", state__in=[G.STARTED, G.TERMINATING]))
        self.watching = any(
            g.state == G.STARTED and (g.is_elastic or (g.spot and settings.SIMDECK_SPOT_RECLAIM_RATE))
            for g in groups
        )
        for group in groups:
            if group.state == G.STARTED:
                self.scale(group)
            else:
                self.terminate(group)
        # Machines whose group ended some other way.
        for machine in Machine.objects.filter(
            group__provider="local", group__state=G.TERMINATED, state__in=LIVE
        ).select_related("group"):
            self.stop(machine)
        self.enforce_stops()

    def scale(self, group: MachineGroup) -> None:
        live = list(group.machines.filter(state__in=[M.PROVISIONING, M.ONLINE]))
        for machine in live:
            if machine.pk not in self.processes:
                services.machine_lost(machine, f"The process of machine {machine.name} is gone.")
        live = [m for m in live if m.pk in self.processes]
        if group.spot and settings.SIMDECK_SPOT_RECLAIM_RATE:
            self.maybe_reclaim(group, live)
        if group.is_elastic:
            self.look_again_for_simulators(group, live)
        wanted = self.wanted(group)
        if wanted > len(live) and not self.sandbox_ready(group):
            return
        for _ in range(wanted - len(live)):
            self.spawn(group)
        if len(live) > wanted:
            busy = set(
                Task.objects.filter(machine__in=live, status__in=lifecycle.ON_MACHINE).values_list(
                    "machine_id", flat=True
                )
            )
            idle = [m for m in live if m.pk not in busy and m.state == M.ONLINE]
            for machine in idle[: len(live) - wanted]:
                log.info("Elastic group %s: stopping idle machine %s", group.name, machine.name)
                machine.group = group
                self.stop(machine)

    def look_again_for_simulators(self, group: MachineGroup, live: list[Machine]) -> None:
        """Replace an idle machine now and then while the queue waits for a simulator none has.

        A machine looks for the installed simulators once, when it starts,
        and only claims tasks of those it found (an elastic group's tasks
        wait for one that has theirs). After an admin installs one, a
        machine started afterwards finds it: an idle machine is stopped
        every ``SIMDECK_MACHINE_REFRESH_SECONDS`` for as long as such tasks
        wait, and the group's size brings a new one up.
        """
        reported = [m for m in live if m.state == M.ONLINE and m.simulators]
        have = {name for m in reported for name in m.simulators}
        queued = Task.objects.queued_in(group.pk).exclude(simulator__in=have)
        lacking = list(queued.values_list("simulator", flat=True)[:1]) if reported else []
        if not lacking:
            self.lacking_since.pop(group.pk, None)
            return
        now = time.monotonic()
        since = self.lacking_since.setdefault(group.pk, now)
        if now - since < settings.SIMDECK_MACHINE_REFRESH_SECONDS:
            return
        busy = set(
            Task.objects.filter(machine__in=reported, status__in=lifecycle.ON_MACHINE).values_list(
                "machine_id", flat=True
            )
        )
        idle = [m for m in reported if m.pk not in busy]
        if idle:
            log.info(
                "Elastic group %s: tasks wait for %s, which none of its machines has; replacing %s",
                group.name, lacking[0], idle[0].name,
            )  # fmt: skip
            self.lacking_since[group.pk] = now
            idle[0].group = group
            self.stop(idle[0])

    def sandbox_ready(self, group: MachineGroup) -> bool:
        """Whether machines may start here: never where their simulations could not be sandboxed.

        The group's page says why, once; the check is made again at every
        round, so a fixed host starts its machines without a restart.
        """
        try:
            sandbox.check()
        except sandbox.SandboxUnavailable as exc:
            sandbox.check.cache_clear()
            if self.refusals.get(group.pk) != str(exc):
                self.refusals[group.pk] = str(exc)
                log.error("No machine of group %s starts: %s", group.name, exc)
                Activity.objects.create(
                    kind="machines-refused",
                    group=group,
                    message=f"Machines cannot start on this host: {exc}",
                )
            return False
        self.refusals.pop(group.pk, None)
        return True

    def wanted(self, group: MachineGroup) -> int:
        """How many machines the group should have now."""
        return machines_wanted(group)

    def maybe_reclaim(self, group: MachineGroup, live: list[Machine]) -> None:
        """Rehearse spot preemption: reclaim machines at random, at the configured hourly rate."""
        chance = settings.SIMDECK_SPOT_RECLAIM_RATE * self.interval / 3600
        for machine in live:
            if machine.state == M.ONLINE and random.random() < chance:
                machine.group = group
                services.reclaim_machine(
                    machine, reason=f"Spot machine {machine.name} was reclaimed at random."
                )

    def drop_unwanted(self) -> None:
        """Kill the processes of machines that were lost, reclaimed or stopped behind our back."""
        gone = Machine.objects.filter(pk__in=list(self.processes)).exclude(state__in=LIVE)
        for mid in gone.values_list("pk", flat=True):
            log.info("Machine %s is no longer wanted; killing its processes", mid)
            kill_machine(mid)
            self.forget(mid)

    def terminate(self, group: MachineGroup) -> None:
        machines = list(group.machines.filter(state__in=LIVE).select_related("group"))
        for machine in machines:
            self.stop(machine)
        if not any(m.pk in self.processes for m in machines):
            MachineGroup.objects.filter(pk=group.pk, state=G.TERMINATING).update(state=G.TERMINATED)
            self.purge_queue(group)
            log.info("Machine group %s terminated", group.name)

    # -- processes -----------------------------------------------------------

    def spawn(self, group: MachineGroup) -> Machine:
        machine = Machine.objects.create(group=group, name=f"{group.name}-{secrets.token_hex(3)}")
        machine.group = group
        env = os.environ | worker_environment(machine)
        logfile = open(self.log_dir / f"{machine.name}.log", "ab")
        proc = subprocess.Popen(
            worker_command(machine),
            env=env,
            cwd=settings.BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C in the terminal reaches us, not the machines
        )
        logfile.close()
        machine_type = settings.SIMDECK_MACHINE_TYPES.get(group.machine_type, {})
        cpus = cpu_set(int(machine_type.get("vcpus", 0)) or 1, slot=machine.pk)
        if cpus:
            psutil.Process(proc.pid).cpu_affinity(cpus)
        Machine.objects.filter(pk=machine.pk).update(pid=proc.pid)
        self.processes[machine.pk] = proc
        try:
            self.exits[machine.pk] = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pass  # no pidfds here: exits are seen at the next round
        log.info("Started machine %s (pid %s) for group %s", machine.name, proc.pid, group.name)
        return machine

    def stop(self, machine: Machine) -> None:
        """Ask the worker to finish: Celery's warm shutdown lets the current task wrap up."""
        proc = self.processes.get(machine.pk)
        if machine.state != M.STOPPING:
            Machine.objects.filter(pk=machine.pk, state__in=LIVE).update(state=M.STOPPING)
        if proc is None:
            Machine.objects.filter(pk=machine.pk, state__in=LIVE).update(
                state=M.STOPPED, stopped_at=timezone.now()
            )
            return
        if machine.pk not in self.stopping:
            self.stopping[machine.pk] = time.monotonic() + STOP_GRACE_SECONDS
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def enforce_stops(self) -> None:
        for mid, deadline in list(self.stopping.items()):
            proc = self.processes.get(mid)
            if proc is None or proc.poll() is not None:
                continue
            if time.monotonic() > deadline:
                log.warning("Machine %s did not stop in time; killing it", mid)
                kill_machine(mid)

    def reap_exited(self) -> None:
        for mid, proc in list(self.processes.items()):
            if proc.poll() is None:
                continue
            self.forget(mid)
            kill_machine(mid)  # anything it left behind, its simulator first of all
            machine = Machine.objects.filter(pk=mid).first()
            if machine is None:
                continue
            if (
                machine.state == M.STOPPING
                and not machine.tasks.filter(status__in=lifecycle.ON_MACHINE).exists()
            ):
                Machine.objects.filter(pk=mid, state=M.STOPPING).update(
                    state=M.STOPPED, stopped_at=timezone.now()
                )
            elif machine.state in LIVE:
                services.machine_lost(
                    machine, f"The worker process of machine {machine.name} exited (code {proc.returncode})."
                )

    def forget(self, mid: int) -> None:
        """Stop watching a machine's worker: its process, its stop deadline and its exit pidfd.

        The pidfd of an exited process stays readable for good: one left in
        the set :meth:`wait_for_exit` selects on would wake the loop at once,
        every round, and spin a core for as long as the provider runs.
        """
        proc = self.processes.pop(mid, None)
        self.stopping.pop(mid, None)
        if mid in self.exits:
            os.close(self.exits.pop(mid))
        if proc is not None:
            try:
                proc.wait(timeout=5)  # reap it: no zombie per dropped machine
            except subprocess.TimeoutExpired:
                log.warning("Worker of machine %s (pid %s) has not exited yet", mid, proc.pid)

    def purge_queue(self, group: MachineGroup) -> None:
        broker.purge_tokens(group)

    def shutdown(self) -> None:
        """Stop every machine of this host, then wait for them."""
        for mid in list(self.processes):
            machine = Machine.objects.filter(pk=mid).select_related("group").first()
            if machine:
                self.stop(machine)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self.processes and time.monotonic() < deadline:
            self.reap_exited()
            time.sleep(0.2)
        for mid in list(self.processes):
            kill_machine(mid)
        self.reap_exited()
        self.close_notices()


def instance() -> str:
    """What tells this instance's processes from another's on the same host."""
    return str(settings.SIMDECK_HOME)


def kill_machine(machine_id: int) -> None:
    """SIGKILL every process of a machine: the worker and any simulator.

    They all carry the machine's id and this instance's home in their
    environment, which finds them even after the worker died and they were
    re-parented, and never touches another instance's machine of the same id.
    """
    kill_marked({"SIMDECK_MACHINE_ID": str(machine_id), "SIMDECK_INSTANCE": instance()})


def kill_marked(marker: dict[str, str]) -> None:
    """SIGKILL every process whose environment holds ``marker``; wait for them."""
    mine = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if all(env.get(k) == v for k, v in marker.items()):
                mine.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in mine:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    # Dead is enough: an orphan's zombie waits for whoever adopted it, which
    # may take seconds, and sweeps of other machines must not wait on that.
    deadline = time.monotonic() + 5
    while (mine := [p for p in mine if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
