"""The machine interface: what a machine on another host asks of the server.

A host that joined (``simdeck-machine join``) holds a join token; each
machine it runs holds a token of its own. Neither is a key to anything but
this interface: no database password, no broker, no secret key leaves the
server. Every request names its machine by its token, and every task
request is checked to be about a task that machine holds; a revoked token,
or a machine that stopped or was found lost, gets 401 and stops.

What each call does is what a machine on the server's own host does
directly (:class:`tasks_app.executor.plane.Direct`), so the two kinds of
machine share one executor (:mod:`tasks_app.executor.run`). The two calls
that wait for work (a host asking for a machine, a machine asking for a
task) are asynchronous long polls: a waiting machine holds a Redis
connection of the web server, not a database connection or a thread.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import json
import logging
import time
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from console.celery import app as celery_app
from tasks_app import storage
from tasks_app.errors import Refused
from tasks_app.executor import questions as asking
from tasks_app.executor.plane import MACHINE_FIELDS, Direct, keep_outputs
from tasks_app.lifecycle import IllegalTransition, Status
from tasks_app.models import Machine, MachineGroup, Task, TaskAsset
from tasks_app.services import hosts, remote_assets

log = logging.getLogger(__name__)

DIRECT = Direct()
# The longest a long poll waits before answering "nothing yet".
MAX_WAIT_SECONDS = 30.0
# A host with no machine asks the database this often while it waits for a group to want one.
HOST_LOOK_SECONDS = 3.0
# A machine waiting for a task looks this often whether it is still wanted (its group still
# started), or as often as heartbeats go if that is more often: each look is its heartbeat.
LOOK_SECONDS = 5.0
LOG_STREAMS = ("stdout", "stderr")
# Inputs up to this size come with the claim's answer.
INLINE_INPUT_BYTES = 256 * 1024
# Fields of a task a machine is told: what its executor reads.
TASK_FIELDS = (
    "id",
    "attempt",
    "status",
    "simulator",
    "parameters",
    "input_size",
    "cleanup_commands",
    "storage_dir",
    "time_to_live_seconds",
    "owner_id",
    "project_id",
    "machine_group_id",
)


def error(status: int, message: str, code: str = "invalid") -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


def revoked() -> JsonResponse:
    return error(
        401,
        "This machine's token is not valid: it was revoked, or the machine was stopped or found lost. "
        "The machine stops; its host asks for another.",
        "machine_revoked",
    )


def bearer(request) -> str:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""


def body_of(request) -> dict:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise Refused(f"The body is not JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise Refused("The body is a JSON object.")
    return body


def machine_call(methods: list[str], *, json_body: bool = True):
    """A synchronous call of a machine: its token checked, its JSON body read, refusals answered."""

    def wrap(fn):
        @csrf_exempt  # a token in a header, never a cookie: nothing for a forged form to ride on
        @require_http_methods(methods)
        @functools.wraps(fn)
        def view(request, *args, **kwargs):
            machine = hosts.machine_for_token(bearer(request))
            if machine is None:
                return revoked()
            try:
                body = body_of(request) if json_body else None
                return fn(request, machine, body, *args, **kwargs)
            except Refused as exc:
                return error(exc.status, str(exc), exc.code)

        return view

    return wrap


def read(body: dict, **kinds) -> list:
    """The body's values of the names given, each made its kind (int, float…); a refusal if one is not."""
    try:
        return [kind(body[name]) for name, kind in kinds.items()]
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"The body has {', '.join(kinds)} ({type(exc).__name__}: {exc}).") from None


def wait_of(body: dict) -> float:
    """How long a long poll may wait: what the machine asks, within ``MAX_WAIT_SECONDS``."""
    [wait] = read({"wait": body.get("wait", 20)}, wait=float)
    return min(max(wait, 0.0), MAX_WAIT_SECONDS)


def simulators_of(body: dict) -> dict[str, str]:
    """The simulators a host or machine says it has (name -> version), cut to what a row holds."""
    found = body.get("simulators") or {}
    if not isinstance(found, dict):
        raise Refused("simulators is an object of names to versions.")
    return {str(k)[:64]: str(v)[:64] for k, v in found.items()}


def task_of(machine: Machine, task_id: str, attempt=None) -> Task:
    """The task ``machine`` holds, in the attempt it names; 404 for any other."""
    task = Task.objects.filter(pk=str(task_id)[:64], machine=machine).first()
    if task is None or (attempt is not None and str(task.attempt) != str(attempt)):
        raise Refused(
            f"Machine {machine.name} does not hold task {task_id} (in that attempt): it was ended, "
            "or requeued and taken by another machine.",
            code="not_found",
            status=404,
        )
    return task


def moment(text) -> dt.datetime | None:
    if text in (None, ""):
        return None
    at = parse_datetime(str(text))
    if at is None:
        raise Refused(f"{text!r} is not an ISO 8601 date and time.")
    return at


def describe_machine(machine: Machine) -> dict:
    group: MachineGroup = machine.group
    return {
        "id": machine.pk,
        "name": machine.name,
        "group": {
            "id": group.pk,
            "name": group.name,
            "machine_type": group.machine_type,
            "data_disk_gb": group.data_disk_gb,
            "auto_resize_disk_max_gb": group.auto_resize_disk_max_gb,
            "allow_network": group.allow_network,
        },
        # What the machine's executor reads of the server's settings.
        "settings": {
            "SIMDECK_MACHINE_TYPES": {
                group.machine_type: settings.SIMDECK_MACHINE_TYPES.get(group.machine_type, {})
            },
            "SIMDECK_DISK_GB_BYTES": settings.SIMDECK_DISK_GB_BYTES,
            "SIMDECK_MEMORY_GB_BYTES": settings.SIMDECK_MEMORY_GB_BYTES,
            "SIMDECK_KILL_GRACE_SECONDS": settings.SIMDECK_KILL_GRACE_SECONDS,
            "SIMDECK_RESOURCE_SAMPLE_SECONDS": settings.SIMDECK_RESOURCE_SAMPLE_SECONDS,
            "SIMDECK_HEARTBEAT_SECONDS": settings.SIMDECK_HEARTBEAT_SECONDS,
        },
    }


def describe_task(task: Task) -> dict:
    """The task as its machine needs it; a small input comes along, saving the machine a request."""
    described = {name: getattr(task, name) for name in TASK_FIELDS}
    described["started_at"] = task.started_at and task.started_at.isoformat()
    described["has_assets"] = getattr(task, "has_assets", None)
    if described["has_assets"] is None:  # not a task as its claim gave it
        described["has_assets"] = TaskAsset.objects.filter(task=task).exists()
    # The group's allowance now, not when the machine came online (an admin may change it).
    described["allow_network"] = getattr(task, "allow_network", None)
    if described["allow_network"] is None:
        described["allow_network"] = task.machine_group.allow_network
    if task.input_path and (task.input_size or 0) <= INLINE_INPUT_BYTES:
        with storage.open_file(task.input_path) as f:
            described["input"] = base64.b64encode(f.read()).decode()
    return described


async def briefly(fn, *args):
    """``fn(*args)`` on a thread, its database connection handed back to the pool at once.

    A long poll lasts many seconds; a connection kept from one look to the
    next would be held all that time, and a few dozen waiting machines would
    empty the web server's pool. They hold none while they wait.
    """

    def run():
        try:
            return fn(*args)
        finally:
            if not connection.in_atomic_block:  # (a test's transaction keeps it)
                connection.close()

    return await sync_to_async(run)()


# -- a host asks for a machine ------------------------------------------------


@csrf_exempt
@require_http_methods(["POST"])
async def join(request):
    """A host with a join token asks for a machine to run; waits up to ``wait`` seconds for one."""
    token = await briefly(hosts.find_token, bearer(request))
    if token is None:
        return error(
            401,
            "This join token is not valid: it was revoked, or never issued. Ask an admin for a join token.",
            "join_token_revoked",
        )
    try:
        body = body_of(request)
        hostname, simulators, wait = str(body.get("hostname") or "")[:255], simulators_of(body), wait_of(body)
    except Refused as exc:
        return error(exc.status, str(exc), exc.code)
    deadline = time.monotonic() + wait
    while True:
        taken = await briefly(hosts.take_machine, token, hostname, simulators)
        if taken is not None:
            machine, secret = taken
            return JsonResponse({"machine": await briefly(describe_machine, machine), "token": secret})
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return HttpResponse(status=204)
        await asyncio.sleep(min(remaining, HOST_LOOK_SECONDS))
        if await briefly(hosts.find_token, bearer(request)) is None:
            return error(401, "This join token was revoked while the host waited.", "join_token_revoked")


# -- a machine's life ------------------------------------------------------------


@machine_call(["POST"])
def online(request, machine: Machine, body: dict):
    """The machine is ready: it checked its sandbox and found its simulators."""
    simulators = simulators_of(body)
    now = timezone.now()
    Machine.objects.filter(pk=machine.pk, state=Machine.State.PROVISIONING).update(
        state=Machine.State.ONLINE,
        online_at=now,
        last_heartbeat_at=now,
        simulators=simulators,
        hostname=str(body.get("hostname") or machine.hostname)[:255],
        pid=body.get("pid") if isinstance(body.get("pid"), int) else None,
    )
    log.info("Machine %s is online on %s", machine.name, machine.hostname)
    return JsonResponse({"machine": describe_machine(machine)})


@machine_call(["POST"])
def heartbeat(request, machine: Machine, body: dict):
    """The machine is alive; the answer says whether it should stop (its group ends, it is not needed)."""
    Machine.objects.filter(pk=machine.pk, state=Machine.State.ONLINE).update(last_heartbeat_at=timezone.now())
    stop = None
    if machine.state != Machine.State.ONLINE:
        stop = f"the machine is {machine.get_state_display().lower()}"
    elif machine.group.state != MachineGroup.State.STARTED:
        stop = f"machine group {machine.group.name} is {machine.group.get_state_display().lower()}"
    elif hosts.unneeded(machine):
        stop = f"machine group {machine.group.name} needs fewer machines"
    return JsonResponse({"stop": stop})


@machine_call(["POST"])
def offline(request, machine: Machine, body: dict):
    """The machine stopped on its own (its group ended, it was not needed, its host stops)."""
    Machine.objects.filter(pk=machine.pk, state__in=hosts.LIVE).update(
        state=Machine.State.STOPPED, stopped_at=timezone.now()
    )
    return JsonResponse({"stopped": True})


def claim_for(machine: Machine) -> tuple[dict | None, str | None]:
    """A task for the machine, or why it should stop.

    A task it claimed without hearing back comes first (the answer to an
    earlier claim was lost on the way), then the head of its group's queue.
    Each look is the waiting machine's heartbeat too: it sends no other
    while it waits (tasks_app.executor.remote).
    """
    wanted = Machine.objects.filter(
        pk=machine.pk, state=Machine.State.ONLINE, group__state=MachineGroup.State.STARTED
    )
    if not wanted.update(last_heartbeat_at=timezone.now()):
        current = Machine.objects.select_related("group").filter(pk=machine.pk).first()
        if current is None or current.state != Machine.State.ONLINE:
            return None, f"the machine is {current.get_state_display().lower() if current else 'gone'}"
        return None, f"machine group {current.group.name} is {current.group.get_state_display().lower()}"
    if hosts.unneeded(machine):
        return None, f"machine group {machine.group.name} needs fewer machines"
    held = Task.objects.filter(machine=machine, status=Status.PREPARING).order_by("-preparing_at").first()
    if held is not None:
        return describe_task(held), None
    task, online = DIRECT.claim(machine.group_id, machine, reason=f"Picked up by machine {machine.name}.")
    return task and describe_task(task), None if online else "the machine is no longer online"


@csrf_exempt
@require_http_methods(["POST"])
async def claim(request):
    """The machine is free: the task it should run, as soon as one waits, or 204 after ``wait`` seconds."""
    machine = await briefly(hosts.machine_for_token, bearer(request))
    if machine is None:
        return revoked()
    try:
        wait = wait_of(body_of(request))
    except Refused as exc:
        return error(exc.status, str(exc), exc.code)
    deadline = time.monotonic() + wait
    while True:
        task, stop = await briefly(claim_for, machine)
        if task is not None:
            return JsonResponse({"task": task})
        if stop:
            return JsonResponse({"task": None, "stop": stop})
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return HttpResponse(status=204)
        # A token wakes it at once; it looks again (and beats) as often as a heartbeat goes.
        look = min(LOOK_SECONDS, settings.SIMDECK_HEARTBEAT_SECONDS)
        await token_or_timeout(machine.group.queue_name, min(remaining, look))


_waiters: dict[tuple[int, str], aioredis.Redis] = {}


def waiter(url: str) -> aioredis.Redis:
    """A client of ``url`` for this process' event loop, for pops that wait."""
    key = (id(asyncio.get_running_loop()), url)
    if key not in _waiters:
        # Reads wait longer than any pop: redis-py's own default would end a long one early.
        _waiters[key] = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=LOOK_SECONDS + 10
        )
    return _waiters[key]


async def token_or_timeout(queue: str, timeout: float) -> None:
    """Wait until a token arrives on the group's queue (taking it) or ``timeout`` seconds pass.

    With a Redis broker, a blocking pop on the queue's list; with another,
    a look every second (the claim itself is the database's, either way).
    """
    url = celery_app.conf.broker_url
    if urlsplit(url).scheme not in ("redis", "rediss"):
        await asyncio.sleep(min(timeout, 1.0))
        return
    try:
        await waiter(url).brpop([queue], timeout=max(timeout, 0.01))
    except aioredis.RedisError:
        # A machine that hangs up cancels the request. Should redis-py report that
        # as an error of its own, the cancellation still ends the poll here: a
        # look after it would claim a task for a machine that is not listening.
        if asyncio.current_task().cancelling():
            raise asyncio.CancelledError from None
        log.warning("Could not wait on the broker for %s", queue, exc_info=True)
        await asyncio.sleep(min(timeout, 1.0))


# -- questions about a running task (tasks_app.executor.questions) ------------------------


@csrf_exempt
@require_http_methods(["POST"])
async def questions(request):
    """Questions people asked about the task this machine runs (its files, its processes): a long poll."""
    machine = await briefly(hosts.machine_for_token, bearer(request))
    if machine is None:
        return revoked()
    try:
        wait = wait_of(body_of(request))
    except Refused as exc:
        return error(exc.status, str(exc), exc.code)
    key, client = asking.questions_key(machine.pk), waiter(settings.REDIS_URL)
    deadline = time.monotonic() + wait
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            got = await client.blpop([key], timeout=max(min(remaining, LOOK_SECONDS), 0.01))
            if got:
                more = await client.lpop(key, 20) or []
                return JsonResponse({"questions": [json.loads(q) for q in (got[1], *more)]})
    except aioredis.RedisError:
        log.warning("Could not wait for questions to machine %s", machine.name, exc_info=True)
    return HttpResponse(status=204)


@machine_call(["POST"])
def answers(request, machine: Machine, body: dict):
    """The machine's answer to one question; it reaches whoever asked if they still wait."""
    question_id, answer = body.get("id"), body.get("answer")
    if not isinstance(question_id, str) or not question_id.isalnum() or not isinstance(answer, dict):
        raise Refused("An answer has the question's id and the answer (an object).")
    asking.answer_from_elsewhere(machine.pk, question_id, answer)
    return JsonResponse({"delivered": True})


# -- a task's moves ----------------------------------------------------------------


@machine_call(["POST"])
def move(request, machine: Machine, body: dict, task_id: str):
    task = task_of(machine, task_id, body.get("attempt"))
    try:
        new, expected = Status(body["status"]), Status(body["expected"])
        passing = [(Status(s), str(why), moment(at)) for s, why, at in body.get("passing") or []]
    except (KeyError, ValueError, TypeError) as exc:
        raise Refused(f"A move names its status, expected status and passing steps: {exc}.") from None
    fields = {k: v for k, v in dict(body.get("fields") or {}).items() if k in MACHINE_FIELDS}
    if "progress_eta" in fields:
        fields["progress_eta"] = moment(fields["progress_eta"])
    try:
        moved = DIRECT.move(
            task,
            new,
            str(body.get("reason", "")),
            machine=machine,
            expected=expected,
            at=moment(body.get("at")),
            passing=passing,
            **fields,
        )
    except IllegalTransition as exc:
        raise Refused(f"{exc} Pass through the statuses between them.") from None
    return JsonResponse({"moved": moved, "status": task.status, "started_at": task.started_at})


@machine_call(["GET"], json_body=False)
def status(request, machine: Machine, body, task_id: str):
    task = Task.objects.filter(pk=str(task_id)[:64], machine=machine).first()
    if task is None or str(task.attempt) != request.GET.get("attempt"):
        return JsonResponse({"status": None})
    return JsonResponse({"status": task.status})


@machine_call(["POST"])
def lost(request, machine: Machine, body: dict, task_id: str):
    """The machine and its simulation were stopped together from outside (see Execution.taken_down)."""
    DIRECT.runner_lost(task_of(machine, task_id), machine, str(body.get("reason", ""))[:2000])
    return JsonResponse({"ended": True})


@machine_call(["POST"])
def exit_code(request, machine: Machine, body: dict, task_id: str):
    """The simulator's exit code, kept when a kill ended the task before its final move."""
    task = task_of(machine, task_id, body.get("attempt"))
    [code] = read(body, exit_code=int)
    if not -255 <= code <= 255:
        raise Refused(f"An exit code is from -255 to 255, not {code}.")
    DIRECT.record_outputs(task, {"exit_code": code})
    return JsonResponse({"recorded": True})


@machine_call(["POST"])
def progress(request, machine: Machine, body: dict, task_id: str):
    task = task_of(machine, task_id, body.get("attempt"))
    fraction = body.get("progress")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, int | float)):
        raise Refused("progress is a number from 0 to 1, or null.")
    if fraction is not None and not 0 <= fraction <= 1:
        raise Refused("progress is a number from 0 to 1, or null.")
    DIRECT.record_progress(task, fraction, moment(body.get("eta")))
    return JsonResponse({"recorded": True})


@machine_call(["POST"])
def sample(request, machine: Machine, body: dict, task_id: str):
    task = task_of(machine, task_id)
    DIRECT.record_sample(task.id, *read(body, cpu_percent=float, memory_bytes=int, disk_bytes=int))
    return JsonResponse({"recorded": True})


@machine_call(["POST"])
def disk_resized(request, machine: Machine, body: dict, task_id: str):
    task = task_of(machine, task_id)
    DIRECT.disk_resized(task, machine, *read(body, from_gb=int, to_gb=int, used_bytes=int))
    return JsonResponse({"recorded": True})


@machine_call(["POST"])
def task_log(request, machine: Machine, body: dict, task_id: str):
    """The live log: ``begin``, lines to ``append`` (base64, by stream), ``end`` or ``close``."""
    task = task_of(machine, task_id)
    op = body.get("op")
    if op == "begin":
        # At once: the machine's next lines may reach another process of the web server.
        DIRECT.begin_log(task, at_once=True)
    elif op == "append":
        for stream, data in body.get("entries") or []:
            if stream not in LOG_STREAMS:
                raise Refused(f"A log line is on stdout or stderr, not {stream!r}.")
            DIRECT.append_log(task, stream, base64.b64decode(data))
    elif op == "end":
        DIRECT.end_log(task)
    elif op == "close":
        DIRECT.close_log(task)
    else:
        raise Refused("op is one of begin, append, end and close.")
    return JsonResponse({"ok": True})


# -- a task's files --------------------------------------------------------------------


def stored_file(name: str, filename: str):
    """A stored file for a machine: a redirect to the bucket where there is one, else the file itself."""
    if url := storage.download_url(name, filename, "application/zip"):
        return HttpResponseRedirect(url)
    return FileResponse(storage.open_file(name), as_attachment=True, filename=filename)


@machine_call(["GET"], json_body=False)
def task_input(request, machine: Machine, body, task_id: str):
    task = task_of(machine, task_id)
    return stored_file(task.input_path, "input.zip")


@machine_call(["GET"], json_body=False)
def assets(request, machine: Machine, body, task_id: str):
    task = task_of(machine, task_id)
    try:
        steps = remote_assets.plan(task)
    except remote_assets.AssetMissing as exc:
        raise Refused(str(exc), code="asset_missing", status=409) from None
    return JsonResponse({"steps": steps})


@machine_call(["GET"], json_body=False)
def asset_file(request, machine: Machine, body, task_id: str):
    """One stored file a task's assets name; no other."""
    task = task_of(machine, task_id)
    name = request.GET.get("name", "")
    try:
        allowed = remote_assets.stored_names(remote_assets.plan(task))
    except remote_assets.AssetMissing as exc:
        raise Refused(str(exc), code="asset_missing", status=409) from None
    if name not in allowed:
        raise Refused(f"Task {task.id} has no asset stored as {name!r}.", code="not_found", status=404)
    return stored_file(name, name.rsplit("/", 1)[-1])


def max_output_bytes(machine: Machine) -> int:
    """The most a task's outputs can be: the work disk at its largest, and its logs beside it."""
    group = machine.group
    return 2 * (group.auto_resize_disk_max_gb or group.data_disk_gb) * settings.SIMDECK_DISK_GB_BYTES + (
        1 << 30
    )


def announced_size(request) -> int:
    try:
        return int(request.headers["Content-Length"])
    except (KeyError, ValueError):
        raise Refused("Send the file with its Content-Length.", status=411) from None


def received(request):
    return iter(lambda: request.read(storage.CHUNK), b"")


@machine_call(["PUT"], json_body=False)
def outputs(request, machine: Machine, body, task_id: str):
    """The outputs' archive, through the server (a server without a bucket, or a small archive)."""
    task = task_of(machine, task_id, request.GET.get("attempt"))
    name = storage.output_name(task.id, task.attempt)
    try:
        size, count = int(request.GET["size"]), int(request.GET["files"])
        storage.receive_file(
            name,
            received(request),
            expected_size=announced_size(request),
            max_bytes=max_output_bytes(machine),
        )
    except (KeyError, ValueError) as exc:
        raise Refused(f"Send the outputs with their size and files: {exc}.") from None
    except storage.UploadError as exc:
        raise Refused(str(exc), code="upload_failed") from None
    return JsonResponse({"fields": record_outputs(task, name, size, count)})


def record_outputs(task: Task, name: str, size: int, count: int) -> dict:
    """Where a remote machine's outputs are, written at once (a machine never names a stored file)."""
    if task.storage_dir:
        keep_outputs(task, name)
    fields = {"output_path": name, "output_size": size, "output_files": count}
    DIRECT.record_outputs(task, fields)
    return fields


@machine_call(["POST"])
def outputs_direct(request, machine: Machine, body: dict, task_id: str):
    """Presigned PUTs for sending the outputs straight to the bucket, where there is one."""
    task = task_of(machine, task_id, body.get("attempt"))
    if not storage.direct_uploads():
        raise Refused("This server stores files itself: send the outputs to it.", code="no_direct_upload")
    [size] = read(body, archive_size=int)
    if not 0 < size <= max_output_bytes(machine):
        raise Refused(f"The outputs' archive cannot be {size} bytes.")
    plan = storage.start_direct_put(storage.output_name(task.id, task.attempt), size)
    return JsonResponse(plan)


@machine_call(["POST"])
def outputs_direct_done(request, machine: Machine, body: dict, task_id: str):
    task = task_of(machine, task_id, body.get("attempt"))
    name = storage.output_name(task.id, task.attempt)
    try:
        etags = {int(p["number"]): str(p["etag"]) for p in body.get("parts") or []}
        storage.finish_direct_put(name, body.get("upload_id"), etags, int(body["archive_size"]))
        size, count = int(body["size"]), int(body["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"Say which parts were sent, and the outputs' sizes: {exc}.") from None
    except storage.UploadError as exc:
        raise Refused(str(exc), code="upload_failed") from None
    return JsonResponse({"fields": record_outputs(task, name, size, count)})


@machine_call(["PUT"], json_body=False)
def task_log_file(request, machine: Machine, body, task_id: str, stream: str):
    task = task_of(machine, task_id, request.GET.get("attempt"))
    if stream not in LOG_STREAMS:
        raise Refused(f"A task's logs are stdout and stderr, not {stream!r}.", status=404)
    try:
        storage.receive_file(
            storage.log_name(task.id, stream, task.attempt),
            received(request),
            expected_size=announced_size(request),
            max_bytes=max_output_bytes(machine),
        )
    except storage.UploadError as exc:
        raise Refused(str(exc), code="upload_failed") from None
    return JsonResponse({"stored": True})
