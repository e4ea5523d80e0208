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

from celery import signals
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tasks_app.models import Machine

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
    now = timezone.now()
    Machine.objects.filter(pk=mid, state=Machine.State.PROVISIONING).update(
        state=Machine.State.ONLINE,
        online_at=now,
        last_heartbeat_at=now,
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    threading.Thread(target=_beat, name="heartbeat", daemon=True).start()
    log.info("Machine %s is online", mid)


@signals.worker_shutdown.connect
def _offline(**_):
    mid = machine_id()
    if mid is None:
        return
    _stop.set()
    Machine.objects.filter(pk=mid, state__in=[Machine.State.ONLINE, Machine.State.STOPPING]).update(
        state=Machine.State.STOPPED, stopped_at=timezone.now()
    )
