"""This process as a machine: its row in the database and its heartbeat.

A worker started for a machine has ``SIMDECK_MACHINE_ID`` in its
environment. When Celery is ready to consume, the machine goes online and a
thread records a heartbeat every few seconds; the provider and the reaper
read it to tell a live machine from a lost one. The machine is one process:
its task runs on a thread of the worker (see
:func:`tasks_app.providers.local.worker_command`), so whatever kills that
process loses the machine, and its provider reports it lost.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time

from celery import signals
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tasks_app import sandbox, simulators
from tasks_app.models import Machine

log = logging.getLogger(__name__)
_stop = threading.Event()
# When each signal that asks the worker to shut down (SIGTERM, SIGINT, SIGQUIT) last reached it.
_signalled_at: dict[str, float] = {}
_signal_seen = threading.Condition()


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


@signals.worker_shutting_down.connect
def _signalled(sig: str = "", **_) -> None:
    # Called from Celery's handler of the signal, in the main thread.
    note_signal(sig)


def note_signal(name: str) -> None:
    """A signal asked this machine to stop (a worker's, or a machine elsewhere's: executor.remote)."""
    with _signal_seen:
        _signalled_at[name] = time.monotonic()
        _signal_seen.notify_all()


def told_to_stop() -> bool:
    """Whether a signal asked this worker to shut down: it then takes no new task."""
    return bool(_signalled_at)


def signal_near(at: float, within: float) -> str | None:
    """The name of a signal that asked this worker to stop within ``within`` seconds of ``at`` (monotonic).

    Waits for one until then: a signal sent to the worker and its simulation
    at once may reach the simulation first.
    """
    with _signal_seen:
        while True:
            near = [name for name, when in _signalled_at.items() if abs(when - at) <= within]
            if near:
                return near[0]
            remaining = at + within - time.monotonic()
            if remaining <= 0:
                return None
            _signal_seen.wait(remaining)


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
