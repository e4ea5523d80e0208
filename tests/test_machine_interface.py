"""The machine interface (``/api/machine/v1/``) checks who asks, and about what.

A machine elsewhere has only its token: each call is about that machine
and the tasks it holds, and what it may write of a task is what it saw of
its simulation, never where outputs are stored. The whole conversation of
a real host is in test_joined_hosts.py.
"""

from __future__ import annotations

import re
import threading

import pytest

from tasks_app import services
from tasks_app.api.machines import LOOK_SECONDS
from tasks_app.lifecycle import Status
from tasks_app.models import JoinToken, Machine
from tasks_app.services import hosts
from tests.test_console_pages import make_task, store_input

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/machine/v1"


@pytest.fixture
def join_token() -> tuple[JoinToken, str]:
    return hosts.issue_token("workstation")


@pytest.fixture
def far(alice, join_token):
    """A started ``hosts`` group of two machines."""
    group = services.create_group(
        alice, machine_type="n2-standard-2", name="far", num_machines=2, provider="hosts"
    )
    return services.start_group(group)


def machine_of(far, join_token) -> tuple[Machine, str]:
    machine, secret = hosts.take_machine(join_token[0], "ws-1", {"commands": "1"})
    Machine.objects.filter(pk=machine.pk).update(state=Machine.State.ONLINE)
    return machine, secret


def call(client, method: str, path: str, token: str, **kwargs):
    return getattr(client, method)(
        API + path, HTTP_AUTHORIZATION=f"Bearer {token}", content_type="application/json", **kwargs
    )


def test_no_call_answers_without_a_valid_token(client, far, join_token):
    for path in ("/heartbeat", "/online", "/claim", "/offline", "/tasks/x/move", "/tasks/x/log"):
        answer = call(client, "post", path, "sdm_not-a-token", data={})
        assert answer.status_code == 401, path
        assert answer.json()["error"] == "machine_revoked"
    # A join token is not a machine's, nor the other way round.
    assert call(client, "post", "/heartbeat", join_token[1], data={}).status_code == 401
    machine, secret = machine_of(far, join_token)
    assert call(client, "post", "/join", secret, data={"wait": 0}).status_code == 401


def test_a_host_gets_machines_while_a_group_wants_them_and_none_beyond(client, far, join_token):
    answers = [call(client, "post", "/join", join_token[1], data={"wait": 0}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 204]
    first = answers[0].json()
    assert first["token"].startswith(Machine.PREFIX)
    assert first["machine"]["group"]["name"] == "far"
    assert "DATABASE" not in str(first) and "SECRET_KEY" not in str(first)
    assert far.machines.filter(state=Machine.State.PROVISIONING).count() == 2
    hosts.revoke_token(join_token[0])
    assert call(client, "post", "/join", join_token[1], data={"wait": 0}).status_code == 401
    # Its machines stopped with it.
    assert not far.machines.filter(state__in=hosts.LIVE).exists()


def test_a_machine_reaches_only_the_tasks_it_holds(client, alice, far, join_token):
    mine, my_token = machine_of(far, join_token)
    other, other_token = machine_of(far, join_token)
    task = make_task(alice, far)
    store_input(task)
    claimed = call(client, "post", "/claim", my_token, data={"wait": 0}).json()["task"]
    assert claimed["id"] == task.id and claimed["attempt"] == 1
    # The other machine is told nothing of it and cannot move, read or store anything of it.
    assert call(client, "post", "/claim", other_token, data={"wait": 0}).status_code == 204
    move = {"attempt": 1, "status": "started", "expected": "preparing-to-compute", "reason": "x"}
    assert call(client, "post", f"/tasks/{task.id}/move", other_token, data=move).status_code == 404
    assert call(client, "get", f"/tasks/{task.id}/input", other_token).status_code == 404
    assert call(client, "get", f"/tasks/{task.id}/status?attempt=1", other_token).json() == {"status": None}
    # Its own machine can, and what it writes of the task is what it saw, not where files are.
    assert call(client, "get", f"/tasks/{task.id}/input", my_token).status_code == 200
    move["fields"] = {"simulator_version": "1", "output_path": "tasks/another/outputs.zip"}
    answer = call(client, "post", f"/tasks/{task.id}/move", my_token, data=move).json()
    assert answer["moved"] and answer["status"] == Status.STARTED
    task.refresh_from_db()
    assert task.simulator_version == "1" and task.output_path == ""
    # A stale attempt's move changes nothing.
    move |= {"attempt": 2, "status": "finalizing", "expected": "started"}
    assert call(client, "post", f"/tasks/{task.id}/move", my_token, data=move).status_code == 404


def test_a_machine_elsewhere_keeps_the_exit_code_when_a_kill_ends_the_task_first(
    client, live_server, alice, far, join_token
):
    from tasks_app.executor.remote import Connection, Remote
    from tasks_app.models import Task

    machine, token = machine_of(far, join_token)
    other, other_token = machine_of(far, join_token)
    task = make_task(alice, far)
    store_input(task)
    plane = Remote(Connection(live_server.url, token))
    claimed = plane.claim(wait=0)
    assert claimed.id == task.id
    assert plane.move(claimed, Status.STARTED, "started", machine=machine, expected=Status.PREPARING)
    assert services.kill_task(Task.objects.get(pk=task.pk), actor=alice)[0]
    # The simulation had exited by itself meanwhile: its final move loses to the kill.
    ending = {"machine": machine, "expected": Status.STARTED, "exit_code": 3}
    passing = [(Status.FINALIZING, "The simulator exited with code 3.", None)]
    assert not plane.move(claimed, Status.FAILED, "exited", passing=passing, **ending)
    plane.record_outputs(claimed, {"exit_code": 3, "output_path": "tasks/elsewhere.zip"})
    assert plane.move(
        claimed, Status.KILLED, "Stopped on request.", machine=machine, expected=Status.PENDING_KILL
    )
    task.refresh_from_db()
    assert (task.status, task.exit_code, task.output_path) == (Status.KILLED, 3, "")
    # Only its own machine says it, and only an exit code.
    said = {"attempt": 1, "exit_code": 9}
    assert call(client, "post", f"/tasks/{task.id}/exit-code", other_token, data=said).status_code == 404
    answer = call(
        client, "post", f"/tasks/{task.id}/exit-code", token, data={"attempt": 1, "exit_code": 10**6}
    )
    assert answer.status_code == 400 and "from -255 to 255" in answer.json()["message"]
    assert Task.objects.get(pk=task.pk).exit_code == 3
    # A move no task can make is refused as such, not taken for a fault of the server.
    nonsense = {"attempt": 1, "status": "failed", "expected": "killed", "reason": "x"}
    answer = call(client, "post", f"/tasks/{task.id}/move", token, data=nonsense)
    assert answer.status_code == 400 and "cannot go from killed to failed" in answer.json()["message"]


def test_an_asset_file_is_served_only_if_the_task_asked_for_it(client, alice, far, join_token):
    machine, token = machine_of(far, join_token)
    secret_task = make_task(alice, far, to=())
    store_input(secret_task, {"secret.txt": b"not yours"})
    task = make_task(alice, far)
    store_input(task)
    call(client, "post", "/claim", token, data={"wait": 0})
    assert call(client, "get", f"/tasks/{task.id}/assets", token).json() == {"steps": []}
    path = f"/tasks/{task.id}/assets/file?name={secret_task.input_path}"
    assert call(client, "get", path, token).status_code == 404


def test_terminating_its_group_tells_a_waiting_machine_to_stop(client, alice, far, join_token):
    machine, token = machine_of(far, join_token)
    assert call(client, "post", "/heartbeat", token, data={}).json() == {"stop": None}
    services.terminate_group(far)
    assert "terminating" in call(client, "post", "/heartbeat", token, data={}).json()["stop"]
    assert "terminating" in call(client, "post", "/claim", token, data={"wait": 0}).json()["stop"]
    call(client, "post", "/offline", token, data={})
    assert hosts.settle() == ["far"]


# -- the console's Hosts page -------------------------------------------------------


def test_only_staff_see_the_hosts_page(client, alice, django_user_model):
    client.force_login(alice)
    assert client.get("/hosts/").status_code == 404
    assert client.post("/hosts/", {"name": "ws"}).status_code == 404
    assert not JoinToken.objects.exists()


def test_staff_issue_a_join_token_once_and_revoke_it(client, alice, django_user_model, far, join_token):
    admin = django_user_model.objects.create_user("root", password="x" * 12, is_staff=True)
    client.force_login(admin)
    page = client.post("/hosts/", {"name": "lab-ws-<3>"})
    html = page.content.decode()
    secret = max(re.findall(JoinToken.PREFIX + r"[A-Za-z0-9_-]+", html), key=len)  # not its hint
    assert hosts.find_token(secret).name == "lab-ws-<3>"
    assert "lab-ws-&lt;3&gt;" in html and "lab-ws-<3>" not in html
    assert page["Cache-Control"] == "no-store"
    assert secret not in client.get("/hosts/").content.decode()  # shown once
    # The same name again is refused with why.
    assert "exists already" in client.post("/hosts/", {"name": "lab-ws-<3>"}).content.decode()

    machine, _ = machine_of(far, join_token)
    assert machine.name in client.get("/hosts/").content.decode()
    client.post(f"/hosts/machines/{machine.pk}/revoke")
    assert Machine.objects.get(pk=machine.pk).state == Machine.State.LOST
    client.post(f"/hosts/tokens/{join_token[0].pk}/revoke")
    assert hosts.find_token(join_token[1]) is None


def test_a_machine_waiting_for_work_gets_a_task_queued_meanwhile(client, alice, far, join_token):
    """The long poll outlasts its looks at the queue (every few seconds) and answers when work comes."""
    machine, token = machine_of(far, join_token)
    assert call(client, "post", "/claim", token, data={"wait": LOOK_SECONDS + 1}).status_code == 204
    queued = threading.Timer(1.0, lambda: services.enqueue(make_task(alice, far), far))
    queued.start()
    try:
        answer = call(client, "post", "/claim", token, data={"wait": 20})
    finally:
        queued.join()
    assert answer.status_code == 200 and answer.json()["task"]["status"] == Status.PREPARING


def test_an_elastic_group_that_shrinks_stops_an_idle_machine(client, alice, join_token):
    group = services.create_group(
        alice, machine_type="n2-standard-2", name="stretch", min_machines=1, max_machines=3, provider="hosts"
    )
    services.start_group(group)
    first, first_token = machine_of(group, join_token)
    # A second one, from when tasks waited.
    second = Machine(group=group, name="stretch-2", join_token=join_token[0], state=Machine.State.ONLINE)
    second_token = second.issue_token()
    second.save()
    # No task waits: one machine is enough, and the first to look stops.
    assert (
        "needs fewer machines" in call(client, "post", "/claim", first_token, data={"wait": 0}).json()["stop"]
    )
    assert Machine.objects.get(pk=first.pk).state == Machine.State.STOPPING
    assert call(client, "post", "/claim", second_token, data={"wait": 0}).status_code == 204


def test_a_machine_that_sends_nonsense_is_told_what_is_wrong(client, alice, far, join_token):
    machine, token = machine_of(far, join_token)
    task = make_task(alice, far)
    store_input(task)
    call(client, "post", "/claim", token, data={"wait": 0})
    answers = [
        call(client, "post", f"/tasks/{task.id}/sample", token, data={"cpu_percent": "lots"}),
        call(client, "post", f"/tasks/{task.id}/progress", token, data={"attempt": 1, "progress": 5}),
        call(client, "post", f"/tasks/{task.id}/log", token, data={"op": "append", "entries": [["env", ""]]}),
        call(client, "post", f"/tasks/{task.id}/move", token, data={"status": "flying"}),
        client.post(
            f"{API}/heartbeat", "{not json", "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        ),
    ]
    assert [a.status_code for a in answers] == [400] * 5
    assert all(a.json()["message"] for a in answers)
    assert "cpu_percent, memory_bytes, disk_bytes" in answers[0].json()["message"]
