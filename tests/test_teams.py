"""Projects as teams: roles, membership changes, quotas, the audit trail, revoked keys.

The authorization matrix (tests/test_authorization.py) says who may use
which door; these tests follow what happens behind the doors.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from console.asgi import application
from tasks_app import access, lifecycle, services, teams
from tasks_app.lifecycle import Status
from tasks_app.models import Activity, APIKey, MachineGroup, Membership, Project, Quota, Role, Task

# No machine runs in most of these tests: queue messages would go nowhere.
pytestmark = pytest.mark.usefixtures("no_broker")


@pytest.fixture
def team(alice, bob, django_user_model):
    """Project "team": alice maintains it, bob is a member, carol a viewer."""
    django_user_model.objects.create_user("carol", password="pw-carol")
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab", project="team")
    teams.add_member(group.project, "bob", "member", actor=alice)
    teams.add_member(group.project, "carol", "viewer", actor=alice)
    return group.project


def api_client(user) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {APIKey.issue(user, 'tests')[1]}")


def queued(owner, project) -> Task:
    group = project.machine_groups.first()
    task = Task.objects.create(owner=owner, project=project, machine_group=group, simulator="commands")
    lifecycle.transition(task, Status.SUBMITTED, reason="queued")
    return task


def post_json(client: Client, url: str, data: dict, method: str = "post"):
    return getattr(client, method)(url, json.dumps(data), content_type="application/json")


# -- roles --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_member_kills_their_own_task_but_not_a_teammates(team, alice, bob):
    own, others = queued(bob, team), queued(alice, team)
    api = api_client(bob)
    assert api.post(f"/api/v1/tasks/{own.id}/kill").json()["changed"] is True
    refused = api.post(f"/api/v1/tasks/{others.id}/kill")
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert "belongs to alice" in refused.json()["message"]
    assert Task.objects.get(pk=others.pk).status == Status.SUBMITTED
    # The maintainer may kill anyone's task in the project.
    assert api_client(alice).post(f"/api/v1/tasks/{others.id}/kill").json()["changed"] is True


@pytest.mark.django_db
def test_killing_a_list_leaves_the_tasks_the_role_does_not_allow(team, alice, bob):
    own, others = queued(bob, team), queued(alice, team)
    answer = post_json(api_client(bob), "/api/v1/tasks/kill", {"ids": [own.id, others.id]}).json()
    assert [(r["id"], r["changed"]) for r in answer] == [(own.id, True), (others.id, False)]
    assert "Ask a maintainer of project 'team'" in answer[1]["message"]


@pytest.mark.django_db
def test_a_bulk_kill_in_the_console_skips_rows_and_says_how_many(team, alice, bob):
    own, others = queued(bob, team), queued(alice, team)
    client = Client()
    client.force_login(bob)
    data = {"action": "kill", "scope": "selected", "ids": [own.id, others.id]}
    preview = client.post(reverse("task-bulk"), data)
    assert "1 task will be skipped" in preview.content.decode()
    done = client.post(reverse("task-bulk"), data | {"confirm": "on"}, follow=True)
    assert "1 task done. 1 skipped" in done.content.decode()
    assert Task.objects.get(pk=own.pk).status == Status.KILLED
    assert Task.objects.get(pk=others.pk).status == Status.SUBMITTED


@pytest.mark.django_db
def test_a_viewer_sees_the_task_page_without_the_buttons_to_change_it(team, alice, django_user_model):
    task = queued(alice, team)
    Task.objects.filter(pk=task.pk).update(metadata={"case": "a"})
    client = Client()
    client.force_login(django_user_model.objects.get(username="carol"))
    page = client.get(reverse("task-detail", args=[task.id])).content.decode()
    assert task.id in page and "case" in page
    assert reverse("task-kill", args=[task.id]) not in page
    assert reverse("task-resubmit-edit", args=[task.id]) not in page
    assert reverse("task-metadata-delete", args=[task.id]) not in page


@pytest.mark.django_db
def test_tasks_go_to_their_machine_groups_project(team, alice, bob):
    api = api_client(bob)
    body = {
        "simulator": "commands",
        "parameters": {"commands": ["echo hi"]},
        "machine_group": "lab",
        "input_files": ["run.sh"],
    }
    assert post_json(api, "/api/v1/tasks", body).json()["project"] == "team"
    assert post_json(api, "/api/v1/tasks", body | {"project": "team"}).json()["project"] == "team"
    # Another project, new or not, would hide the task from the team whose machine runs it.
    for other in ("fresh", "bob-default"):
        answer = post_json(api, "/api/v1/tasks", body | {"project": other})
        assert answer.status_code == 400 and answer.json()["field"] == "project"
        assert "the group belongs to project 'team'" in answer.json()["message"]
    assert not Project.objects.filter(name="fresh").exists()
    assert Task.objects.filter(owner=bob).exclude(project=team).count() == 0


@pytest.mark.django_db
def test_submitting_into_another_teams_project_is_refused_saying_nothing_of_it(team, django_user_model):
    dave = django_user_model.objects.create_user("dave", password="pw-dave")
    services.create_group(dave, machine_type="c2-standard-4", name="daves")
    body = {
        "simulator": "commands",
        "parameters": {"commands": ["echo hi"]},
        "machine_group": "daves",
        "input_files": ["run.sh"],
        "project": "team",
    }
    answer = post_json(api_client(dave), "/api/v1/tasks", body)
    assert answer.status_code == 400 and answer.json()["field"] == "project"
    assert "the group belongs to project 'dave-default'" in answer.json()["message"]
    # A viewer sees the team's group but may not submit to it.
    carol = django_user_model.objects.get(username="carol")
    answer = post_json(api_client(carol), "/api/v1/tasks", body | {"machine_group": "lab"})
    assert answer.status_code == 403
    assert "you need to be a member (you are a viewer)" in answer.json()["message"]


# -- members --------------------------------------------------------------------------


@pytest.mark.django_db
def test_maintainers_manage_members_through_the_api_and_every_change_is_audited(team, alice, bob):
    api = api_client(alice)
    members = api.get("/api/v1/projects/team/members").json()
    assert [(m["username"], m["role"]) for m in members] == [
        ("alice", "maintainer"),
        ("bob", "member"),
        ("carol", "viewer"),
    ]
    assert (
        post_json(api, "/api/v1/projects/team/members/bob", {"role": "maintainer"}, "patch").json()["role"]
        == "maintainer"
    )
    assert api.delete("/api/v1/projects/team/members/carol").status_code == 204
    changes = Activity.objects.filter(project=team, kind__in=["role-changed", "member-removed"]).order_by(
        "id"
    )
    assert [(a.kind, a.actor, a.data) for a in changes] == [
        (
            "role-changed",
            alice,
            {"before": {"user": "bob", "role": "member"}, "after": {"user": "bob", "role": "maintainer"}},
        ),
        ("member-removed", alice, {"before": {"user": "carol", "role": "viewer"}, "after": None}),
    ]
    # Bad input says what is wrong.
    unknown = post_json(api, "/api/v1/projects/team/members", {"username": "nobody"})
    assert unknown.status_code == 404 and "no active user named 'nobody'" in unknown.json()["message"]
    bad_role = post_json(api, "/api/v1/projects/team/members", {"username": "carol", "role": "boss"})
    assert bad_role.status_code == 400 and "viewer, member, maintainer" in bad_role.json()["message"]


@pytest.mark.django_db
def test_a_project_is_made_through_the_api_once_and_another_teams_name_is_not_revealed(team, alice, bob):
    made = post_json(api_client(bob), "/api/v1/projects", {"name": "wave tank"})
    assert made.status_code == 201 and made.json()["role"] == "maintainer" and made.json()["num_tasks"] == 0
    again = post_json(api_client(bob), "/api/v1/projects", {"name": "wave tank"})
    assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
    # Alice is not in bob's new project: its name is taken, nothing of it is shown.
    taken = post_json(api_client(alice), "/api/v1/projects", {"name": "wave tank"})
    assert taken.status_code == 404 and "taken by a team you are not in" in taken.json()["message"]
    assert not Membership.objects.filter(project__name="wave tank", user=alice).exists()
    for bad in ("", "a/b"):
        refused = post_json(api_client(bob), "/api/v1/projects", {"name": bad})
        assert refused.status_code == 400 and "letters, digits" in refused.json()["message"]
    assert Project.objects.filter(name__in=["", "a/b"]).count() == 0


@pytest.mark.django_db
def test_a_project_keeps_its_last_maintainer(team, alice):
    answer = post_json(api_client(alice), "/api/v1/projects/team/members/alice", {"role": "member"}, "patch")
    assert answer.status_code == 409 and answer.json()["error"] == "last_maintainer"
    assert access.role_in(alice, team) == Role.MAINTAINER


@pytest.mark.django_db
def test_the_members_page_changes_roles_for_maintainers_only(team, alice, bob):
    client = Client()
    client.force_login(bob)
    page = client.get(reverse("project-members", args=["team"])).content.decode()
    assert "carol" in page and "Add a user" not in page
    assert (
        client.post(reverse("project-member", args=["team", "carol"]), {"role": "member"}).status_code == 403
    )
    client.force_login(alice)
    response = client.post(reverse("project-member", args=["team", "carol"]), {"role": "member"}, follow=True)
    assert "carol is now member of team" in response.content.decode()
    assert "carol: viewer → member" in response.content.decode()  # the audit trail on the page
    assert Membership.objects.get(project=team, user__username="carol").role == Role.MEMBER


@pytest.mark.django_db
def test_administrators_manage_members_with_a_command(team, capsys):
    call_command("members", "add", "team", "carol", "maintainer")
    assert Membership.objects.get(project=team, user__username="carol").role == Role.MAINTAINER
    call_command("members", "list", "team")
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "alice\tmaintainer",
        "bob\tmember",
        "carol\tmaintainer",
    ]
    with pytest.raises(CommandError, match="No project named 'nope'"):
        call_command("members", "add", "nope", "carol", "viewer")
    with pytest.raises(CommandError, match="not a role"):
        call_command("members", "role", "team", "carol", "chief")


# -- quotas --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_starting_a_group_over_the_machine_quota_is_refused_with_how_much(team, alice):
    Quota.objects.create(project=team, max_machines=4)
    api = api_client(alice)
    services.start_group(
        services.create_group(alice, machine_type="c2-standard-4", name="two", project="team")
    )
    MachineGroup.objects.filter(name="two").update(num_machines=2)
    body = {
        "machine_type": "c2-standard-4",
        "name": "four",
        "project": "team",
        "num_machines": 4,
        "start": True,
    }
    answer = post_json(api, "/api/v1/machine-groups", body)
    assert answer.status_code == 403
    assert answer.json() == {
        "error": "quota_exceeded",
        "message": "Project 'team' may run at most 4 machines at once; starting machine group four "
        "(4 machines) would bring it to 6 (2 over). Terminate a group or ask an administrator for a "
        "larger quota.",
        "field": "num_machines",
    }
    assert not MachineGroup.objects.filter(name="four").exists()  # refused whole, not half made
    assert post_json(api, "/api/v1/machine-groups", body | {"num_machines": 2}).status_code == 201


@pytest.mark.django_db
def test_a_users_own_quota_counts_their_groups_in_every_project(alice, settings):
    settings.SIMDECK_QUOTA_MAX_MACHINES = 3  # the site default, for everyone without a quota of their own
    services.start_group(services.create_group(alice, machine_type="c2-standard-4", name="a", num_machines=2))
    group = services.create_group(
        alice, machine_type="c2-standard-4", name="b", num_machines=2, project="other"
    )
    with pytest.raises(services.Refused, match=r"User 'alice' may run at most 3 machines .* to 4 \(1 over\)"):
        services.start_group(group)
    Quota.objects.create(user=alice, max_machines=None)  # a quota of one's own: here, no limit
    services.start_group(group)


@pytest.mark.django_db
def test_the_console_refuses_a_group_over_quota_on_the_form(team, alice):
    Quota.objects.create(user=alice, max_machines=1)
    client = Client()
    client.force_login(alice)
    data = {"name": "big", "project": "team", "machine_type": "c2-standard-4", "num_machines": 3}
    response = client.post(reverse("group-list"), data | {"data_disk_gb": 10, "start": "on"})
    assert response.status_code == 403
    assert "User &#x27;alice&#x27; may run at most 1 machine at once" in response.content.decode()
    assert "(2 over)" in response.content.decode()
    assert not MachineGroup.objects.filter(name="big").exists()


@pytest.mark.django_db
def test_time_to_live_quotas_refuse_longer_and_fill_in_missing_ones(team, alice):
    Quota.objects.create(project=team, max_task_ttl_seconds=600, max_group_ttl_minutes=60)
    api = api_client(alice)
    body = {
        "simulator": "commands",
        "parameters": {"commands": ["echo hi"]},
        "machine_group": "lab",
        "input_files": ["run.sh"],
        "project": "team",
    }
    long = post_json(api, "/api/v1/tasks", body | {"time_to_live": "15m"})
    assert long.status_code == 403
    assert long.json()["message"].startswith(
        "Project 'team' may give a task at most 600 s to live; this task asks for 900 s (300 s over)."
    )
    created = post_json(api, "/api/v1/tasks", body)
    assert Task.objects.get(pk=created.json()["id"]).time_to_live_seconds == 600
    group = {"machine_type": "c2-standard-4", "project": "team", "auto_terminate_minutes": 90}
    answer = post_json(api, "/api/v1/machine-groups", group)
    assert answer.status_code == 403 and "(30 over)" in answer.json()["message"]
    made = post_json(api, "/api/v1/machine-groups", group | {"auto_terminate_minutes": None})
    assert made.json()["auto_terminate_minutes"] == 60


@pytest.mark.django_db
def test_quotas_are_set_with_a_command(team, capsys):
    call_command("quota", "--project", "team", "--max-machines", "8", "--max-task-ttl-seconds", "none")
    assert Quota.objects.get(project=team).max_machines == 8
    assert "machines running at once: 8" in capsys.readouterr().out
    with pytest.raises(CommandError, match="takes a number or 'none'"):
        call_command("quota", "--project", "team", "--max-machines", "lots")
    for flag, value in (
        ("--max-group-ttl-minutes", "nan"),
        ("--max-group-ttl-minutes", "inf"),
        ("--max-machines", "-1"),
    ):
        with pytest.raises(CommandError, match=f"{flag}: "):
            call_command("quota", "--project", "team", flag, value)
    assert Quota.objects.get(project=team).max_group_ttl_minutes is None


# -- audit ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metadata_edits_kills_and_terminations_are_audited_with_before_and_after(team, alice):
    task = queued(alice, team)
    task.metadata = {"case": "a"}
    Task.objects.filter(pk=task.pk).update(metadata={"case": "a"})
    api = api_client(alice)
    post_json(api, f"/api/v1/tasks/{task.id}/metadata", {"metadata": {"case": "b"}}, "patch")
    api.post(f"/api/v1/tasks/{task.id}/kill")
    api.post("/api/v1/machine-groups/lab/terminate")
    trail = [
        (a.kind, a.actor.username, a.data.get("before"), a.data.get("after"))
        for a in Activity.objects.filter(project=team, actor__isnull=False)
        .exclude(kind="member-added")
        .order_by("id")
    ]
    assert trail == [
        ("metadata-edited", "alice", {"case": "a"}, {"case": "b"}),
        ("killed", "alice", "submitted", "killed"),
        ("group-terminated", "alice", "created", "terminating"),
    ]


# -- keys and sockets -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_revoked_key_is_refused_at_once_and_closes_its_open_socket(team, alice, settings):
    settings.SIMDECK_WS_RECHECK_SECONDS = 0.2
    task = queued(alice, team)
    key, secret = APIKey.issue(alice, "laptop")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/whoami").status_code == 200
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
        (b"authorization", f"Bearer {secret}".encode()),
    ]

    async def watch_then_revoke():
        communicator = WebsocketCommunicator(
            application, f"/ws/tasks/{task.id}/?format=json", headers=headers
        )
        connected, _ = await communicator.connect(timeout=30)
        assert connected
        await communicator.receive_from(timeout=30)  # the current status
        await asyncio.get_running_loop().run_in_executor(None, key.revoke)
        closed = await communicator.receive_output(timeout=30)
        await communicator.disconnect()
        again = WebsocketCommunicator(application, f"/ws/tasks/{task.id}/?format=json", headers=headers)
        refused = await again.connect(timeout=30)
        # Ended here, not left to be cancelled when the event loop closes.
        await again.disconnect()
        return closed, refused

    closed, refused = async_to_sync(watch_then_revoke)()
    assert closed == {"type": "websocket.close", "code": 4403}
    assert refused == (False, 4404)
    answer = api.get("/api/v1/whoami")
    assert answer.status_code == 401 and answer.json()["error"] == "unauthenticated"


@pytest.mark.django_db(transaction=True)
def test_a_member_taken_out_of_the_project_loses_the_socket(team, alice, bob, settings):
    settings.SIMDECK_WS_RECHECK_SECONDS = 0.2
    task = queued(alice, team)
    secret = APIKey.issue(bob, "bob")[1]
    headers = [
        (b"origin", b"http://localhost"),
        (b"host", b"localhost"),
        (b"authorization", f"Bearer {secret}".encode()),
    ]

    async def watch():
        communicator = WebsocketCommunicator(
            application, f"/ws/tasks/{task.id}/logs/?format=json", headers=headers
        )
        connected, _ = await communicator.connect(timeout=30)
        assert connected
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: teams.remove_member(team, bob, actor=alice)
        )
        while True:  # log frames may come first
            output = await communicator.receive_output(timeout=30)
            if output["type"] == "websocket.close":
                await communicator.disconnect()
                return output

    assert async_to_sync(watch)() == {"type": "websocket.close", "code": 4403}


# -- through a real server ------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_through_the_real_server_keys_quotas_and_teams_hold(stack, alice, bob, tmp_path):
    import websockets

    from tests.client_fixtures import run_cli

    group = services.create_group(alice, machine_type="c2-standard-4", name="lab", project="team")
    task = queued(alice, group.project)
    Quota.objects.create(user=bob, max_machines=1)
    bob_key = APIKey.issue(bob, "cli")
    env = {
        "SIMDECK_API_URL": stack.url,
        "SIMDECK_API_KEY": bob_key[1],
        "SIMDECK_CONFIG": str(tmp_path / "c.json"),
    }

    # The command line says which quota refused and by how much, in one line.
    result = run_cli("resources", "start", "c2-standard-4", "-n", "3", "--name", "wide", "--no-wait", env=env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "User 'bob' may run at most 1 machine at once" in result.stderr and "(2 over)" in result.stderr

    ws = stack.url.replace("http://", "ws://") + f"/ws/tasks/{task.id}/?format=json"

    async def connect(secret: str):
        return await websockets.connect(
            ws, additional_headers={"Authorization": f"Bearer {secret}"}, origin=stack.url
        )

    async def refused(secret: str) -> int:
        try:
            socket = await connect(secret)
            await asyncio.wait_for(socket.recv(), 30)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        raise AssertionError("the socket was accepted")

    # Another team's task: refused like an id that does not exist.
    assert async_to_sync(refused)(bob_key[1]) in (403, 4404)

    # Alice watches; her key is revoked; the server closes the socket and refuses the next one.
    alice_key, alice_secret = APIKey.issue(alice, "laptop")

    async def watch_and_revoke() -> int:
        socket = await connect(alice_secret)
        await asyncio.wait_for(socket.recv(), 30)
        await asyncio.get_running_loop().run_in_executor(None, alice_key.revoke)
        try:
            async with asyncio.timeout(60):
                while True:
                    await socket.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code

    assert async_to_sync(watch_and_revoke)() == 4403
    assert async_to_sync(refused)(alice_secret) in (403, 4404)
    import httpx

    answer = httpx.get(stack.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {alice_secret}"})
    assert answer.status_code == 401
