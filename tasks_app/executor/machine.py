"""This process as a machine: its row in the database and its heartbeat.

A worker started for a machine has ``SIMDECK_MACHINE_ID`` in its
environment. When Celery is ready to consume, the machine goes online and a
thread records a heartbeat every few seconds; the provider and the reaper
read it to tell a live machine from a lost one.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading

from billiard.exceptions import WorkerLostError
from celery import signals
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tasks_app import sandbox, services, simulators
from tasks_app.models import Machine
from tasks_app.providers.local import kill_marked

log = logging.getLogger(__name__)
_stop = threading.Event()


def machine_id() -> int | None:
    value = os.environ.get("SIMDECK_MACHINE_ID")
    return int(value) if value else None


@functools.cache
def current_machine() -> Machine:
    mid = machine_id()
    if mid is None:
        raise RuntimeError("This worker is not a Simdeck machine (SIMDECK_MACHINE_ID is not set).")
    return Machine.objects.select_related("group").get(pk=mid)


def _beat() -> None:
    mid = machine_id()
    while not _stop.wait(settings.SIMDECK_HEARTBEAT_SECONDS):
        try:
            alive = Machine.objects.filter(pk=mid, state=Machine.State.ONLINE).update(
                last_heartbeat_at=timezone.now()
            )
        except Exception:  # a database restart must not end the heartbeat
            log.exception("Heartbeat of machine %s failed; retrying", mid)
            close_old_connections()
            continue
        if not alive:
            # Stopped, lost or reclaimed: whoever decided it, this machine is
            # no longer wanted. A warm shutdown lets a running task wrap up.
            log.warning("Machine %s is no longer online; shutting down", mid)
            os.kill(os.getpid(), signal.SIGTERM)
            return


@signals.worker_ready.connect
def _online(**_):
    mid = machine_id()
    if mid is None:
        return
    try:
        sandbox.check()
    except sandbox.SandboxUnavailable as exc:
        # Wherever it was started, a machine that cannot isolate simulations runs none.
        log.error("Machine %s does not start: %s", mid, exc)
        Machine.objects.filter(pk=mid, state=Machine.State.PROVISIONING).update(
            state=Machine.State.STOPPED, stopped_at=timezone.now()
        )
        os.kill(os.getpid(), signal.SIGTERM)
        return
    # Asked before going online, so a task is never refused or queued on a guess.
    installed = simulators.installed()
    now = timezone.now()
    Machine.objects.filter(pk=mid, state=Machine.State.PROVISIONING).update(
        simulators=installed,
        state=Machine.State.ONLINE,
        online_at=now,
        last_heartbeat_at=now,
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    threading.Thread(target=_beat, name="heartbeat", daemon=True).start()
    log.info("Machine %s is online", mid)


@signals.worker_process_init.connect
def _sweep_leftovers(**_):
    """A new pool process ends the simulators an earlier one of this machine left running.

    The pool process runs one task at a time, and Celery starts another
    only when the one before died (killed, out of memory): any simulator of
    this machine still running then belongs to a task nobody watches, and
    would otherwise run on to its end. (When the whole worker dies, the
    provider sweeps.)
    """
    marker = {name: os.environ.get(name) for name in ("SIMDECK_MACHINE_ID", "SIMDECK_INSTANCE")}
    if None in marker.values():
        return  # not a machine its provider can tell apart
    kill_marked(marker, having=("SIMDECK_TASK_ID",))


@signals.task_failure.connect
def _runner_lost(exception=None, **_):
    """The pool process running a task died (SIGKILL, out of memory) while this worker lives on.

    Celery tells this worker's main process, and the task is ended here, at
    once: with its message acknowledged when taken, nothing else would end
    it while the machine's heartbeat goes on. The next pool process sweeps
    the simulator it left (:func:`_sweep_leftovers`).
    """
    mid = machine_id()
    if mid is None or not isinstance(exception, WorkerLostError):
        return
    machine = Machine.objects.select_related("group").get(pk=mid)
    log.warning("The process running a task on machine %s died: %s", mid, exception)
    reason = f"The process running the task on machine {machine.name} died ({exception})."
    if job := os.environ.get("SLURM_JOB_ID"):
        # Slurm signals every process of a job it ends (scancel, node failure, time limit).
        reason += f" The machine is Slurm job {job}; the group's page says how Slurm ended it."
    services.runner_lost(machine, reason)


@signals.worker_shutdown.connect
def _offline(**_):
    mid = machine_id()
    if mid is None:
        return
    _stop.set()
    Machine.objects.filter(pk=mid, state__in=[Machine.State.ONLINE, Machine.State.STOPPING]).update(
        state=Machine.State.STOPPED, stopped_at=timezone.now()
    )
    sandbox.remove_cgroups(current_machine().name)
