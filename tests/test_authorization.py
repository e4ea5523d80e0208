"""Who may do what, through every door: the authorization matrix.

Every console URL (walked from the URL conf), every API operation (read from
the OpenAPI document) and every WebSocket route has a rule below saying what
each person gets: someone not logged in, an outsider (in no project of the
objects), a viewer, a member, a maintainer of the project, and staff. A new
URL, operation or route without a rule fails the test that walks them.

The objects are those of one team project: a machine group, an ended task
with its stored input, outputs and logs (owned by the maintainer, so a
member acting on it is acting on someone else's task), a comment by the
maintainer. Each person's request runs in a savepoint rolled back after it,
so one person's kill or removal does not change what the next one meets.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from console.asgi import application
from tasks_app import lifecycle, services, storage, teams
from tasks_app.api.endpoints import api as ninja_api
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Comment, Machine, SavedView, Task
from tasks_app.services import hosts, project_storage
from tasks_app.sockets.routing import websocket_urlpatterns
from tests.helpers import zipped

PEOPLE = ("anonymous", "outsider", "viewer", "member", "maintainer", "staff")

# What a person gets.
OK = "ok"  # the request got past authorization (whatever it then answered)
LOGIN = "login"  # console: sent to the login page; API: 401; socket: refused
NOT_FOUND = "404"  # the object does not exist for them
FORBIDDEN = "403"  # they see it, their role does not allow the action


# -- rules ----------------------------------------------------------------------------


def scoped(least: str) -> dict[str, str]:
    """An object of the project: 404 outside it, 403 below ``least``, fine from ``least`` up."""
    ladder = ("viewer", "member", "maintainer")
    out = {"anonymous": LOGIN, "outsider": NOT_FOUND, "staff": OK}
    for role in ladder:
        out[role] = OK if ladder.index(role) >= ladder.index(least) else FORBIDDEN
    return out


def for_everyone_logged_in() -> dict[str, str]:
    return {person: LOGIN if person == "anonymous" else OK for person in PEOPLE}


def for_everyone() -> dict[str, str]:
    return dict.fromkeys(PEOPLE, OK)


def only(*people: str, others: str = NOT_FOUND) -> dict[str, str]:
    """Personal objects (a saved view, an API key): their owner alone; others do not see them."""
    return {p: OK if p in people else LOGIN if p == "anonymous" else others for p in PEOPLE}


def nobody() -> dict[str, str]:
    return dict.fromkeys(PEOPLE, NOT_FOUND)


@dataclass
class Rule:
    expect: dict[str, str]
    method: str = "GET"
    kwargs: Callable[[World], dict] = lambda w: {}
    data: Callable[[World], dict] | dict = field(default_factory=dict)
    query: Callable[[World], dict] | dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


def joined_machine(w: World) -> Machine:
    token, _ = hosts.issue_token("lab-ws")
    return Machine.objects.create(group=w.group, name="lab-far", join_token=token, state=Machine.State.ONLINE)


def task_kw(w: World) -> dict:
    return {"task_id": w.task.id}


def group_kw(w: World) -> dict:
    return {"ref": w.group.name}


def project_kw(w: World) -> dict:
    return {"ref": w.project.name}


def comment_kw(w: World) -> dict:
    return {"task_id": w.task.id, "comment_id": w.comment.pk}


# Console URLs by name; a name may have several rules (one per method).
CONSOLE: dict[str, list[Rule]] = {
    "home": [Rule(for_everyone())],  # a redirect to the overview, which asks for a login
    "overview": [Rule(for_everyone_logged_in())],
    "task-list": [Rule(for_everyone_logged_in())],
    # Bulk actions act only on rows the role allows; the rest are counted as skipped.
    "task-bulk": [
        Rule(
            for_everyone_logged_in(),
            "POST",
            data=lambda w: {"action": "kill", "scope": "selected", "ids": w.task.id},
        )
    ],
    "task-export": [Rule(for_everyone_logged_in())],
    "saved-view-create": [
        Rule(for_everyone_logged_in(), "POST", data={"name": "mine", "query": "status=active"})
    ],
    "saved-view-delete": [Rule(only("maintainer"), "POST", kwargs=lambda w: {"view_id": w.saved_view.pk})],
    "task-detail": [Rule(scoped("viewer"), kwargs=task_kw)],
    "task-kill": [Rule(scoped("maintainer"), "POST", kwargs=task_kw)],  # someone else's task
    "task-resubmit": [Rule(scoped("member"), "POST", kwargs=task_kw)],
    "task-resubmit-edit": [Rule(scoped("member"), kwargs=task_kw)],
    "task-metadata": [
        Rule(scoped("viewer"), kwargs=task_kw),
        Rule(scoped("member"), "POST", kwargs=task_kw, data={"key": "case", "value": "b"}),
    ],
    "task-metadata-delete": [Rule(scoped("member"), "POST", kwargs=task_kw, data={"key": "case"})],
    "task-comments": [
        Rule(scoped("viewer"), kwargs=task_kw),
        Rule(scoped("member"), "POST", kwargs=task_kw, data={"body": "Looks right."}),
    ],
    # The comment is the maintainer's: only its author (and staff) may change it.
    "comment-edit": [
        Rule(scoped("maintainer"), kwargs=comment_kw),
        Rule(
            scoped("maintainer"), "POST", kwargs=comment_kw, data=lambda w: {f"c{w.comment.pk}-body": "New."}
        ),
    ],
    "comment-delete": [Rule(scoped("maintainer"), "POST", kwargs=comment_kw)],
    "task-review": [Rule(scoped("member"), "POST", kwargs=task_kw, data={"state": "approved"})],
    "task-logs": [Rule(scoped("viewer"), kwargs=task_kw)],
    "task-log-download": [
        Rule(scoped("viewer"), kwargs=lambda w: {"task_id": w.task.id, "stream": "stdout"})
    ],
    "task-files": [Rule(scoped("viewer"), kwargs=task_kw)],
    "task-resources": [Rule(scoped("viewer"), kwargs=task_kw)],
    "task-latest-file": [Rule(scoped("viewer"), kwargs=task_kw)],
    "task-archive": [Rule(scoped("viewer"), kwargs=lambda w: {"task_id": w.task.id, "which": "outputs"})],
    "task-file": [
        Rule(
            scoped("viewer"),
            kwargs=lambda w: {"task_id": w.task.id, "which": "outputs", "path": "result.txt"},
        )
    ],
    "task-file-preview": [
        Rule(
            scoped("viewer"),
            kwargs=lambda w: {"task_id": w.task.id, "which": "outputs", "path": "result.txt"},
        )
    ],
    "group-list": [
        Rule(for_everyone_logged_in()),
        # Creating a group in the team's project is for its maintainers.
        Rule(
            scoped("maintainer"),
            "POST",
            data={
                "name": "another",
                "project": "team",
                "machine_type": "c2-standard-4",
                "num_machines": 1,
                "data_disk_gb": 10,
            },
        ),
    ],
    "group-detail": [Rule(scoped("viewer"), kwargs=group_kw)],
    "group-start": [Rule(scoped("maintainer"), "POST", kwargs=group_kw)],
    "group-terminate": [
        Rule(scoped("maintainer"), kwargs=group_kw),
        Rule(scoped("maintainer"), "POST", kwargs=group_kw),
    ],
    "project-list": [Rule(for_everyone_logged_in())],
    "project-members": [
        Rule(scoped("viewer"), kwargs=project_kw),
        Rule(
            scoped("maintainer"), "POST", kwargs=project_kw, data={"username": "newcomer", "role": "viewer"}
        ),
    ],
    "project-member": [
        Rule(
            scoped("maintainer"),
            "POST",
            kwargs=lambda w: {"ref": w.project.name, "username": "member"},
            data={"role": "viewer"},
        )
    ],
    "project-activity": [Rule(scoped("viewer"), kwargs=project_kw)],
    "project-usage": [Rule(scoped("viewer"), kwargs=project_kw)],
    "project-budget": [
        Rule(scoped("maintainer"), "POST", kwargs=project_kw, data={"kind": "money", "monthly_limit": "10"})
    ],
    "status-reference": [Rule(for_everyone_logged_in())],
    "account": [Rule(for_everyone_logged_in())],
    "notification-rules": [
        Rule(for_everyone_logged_in()),
        Rule(for_everyone_logged_in(), "POST", data={"url": "json://127.0.0.1:9/hook", "tasks": "ended"}),
    ],
    "notification-test": [
        Rule(only("maintainer"), "POST", kwargs=lambda w: {"rule_id": maintainers_rule(w).pk})
    ],
    "notification-delete": [
        Rule(only("maintainer"), "POST", kwargs=lambda w: {"rule_id": maintainers_rule(w).pk})
    ],
    "api-key-revoke": [
        Rule(only("maintainer"), "POST", kwargs=lambda w: {"key_id": w.key_objects["maintainer"].pk})
    ],
    "login": [Rule(for_everyone())],
    # Everyone leaves through it to the login page.
    "logout": [Rule(dict.fromkeys(PEOPLE, LOGIN), "POST")],
    "password_change": [Rule(for_everyone_logged_in())],
    "password_change_done": [Rule(for_everyone_logged_in())],
    # Who has an account is not for everyone to learn: the page does not exist for others.
    "people": [Rule(only("staff"))],
    # Process ids, log paths and service addresses: for operators only.
    "health": [Rule(only("staff"))],
    "host-list": [Rule(only("staff")), Rule(only("staff"), "POST", data={"name": "lab-ws"})],
    "join-token-revoke": [
        Rule(only("staff"), "POST", kwargs=lambda w: {"token_id": hosts.issue_token("lab-ws")[0].pk})
    ],
    "host-machine-revoke": [
        Rule(only("staff"), "POST", kwargs=lambda w: {"machine_id": joined_machine(w).pk})
    ],
    # The API's own pages outside its operations.
    "api:openapi-json": [Rule(for_everyone())],
    "api:openapi-view": [Rule(for_everyone())],
    "api:docs_asset": [Rule(for_everyone(), kwargs=lambda w: {"name": "swagger-ui.css"})],
    "api:api-root": [Rule(nobody())],
    "api:unknown": [Rule(nobody(), kwargs=lambda w: {"path": "no/such/thing"})],
}

TASK = "/api/v1/tasks/{task_id}"
GROUP = "/api/v1/machine-groups/{ref}"
PROJECT = "/api/v1/projects/{ref}"

# API operations by (method, path) as the OpenAPI document names them.
API: dict[tuple[str, str], Rule] = {
    ("GET", "/api/v1/whoami"): Rule(for_everyone_logged_in()),
    ("GET", "/api/v1/statuses"): Rule(for_everyone()),
    ("GET", "/api/v1/machine-types"): Rule(for_everyone_logged_in()),
    # Every project the caller is in (none: all zeros); a project of theirs with ?project=.
    ("GET", "/api/v1/usage"): Rule(for_everyone_logged_in()),
    ("GET", "/api/v1/simulators"): Rule(for_everyone_logged_in()),
    ("GET", "/api/v1/tasks"): Rule(for_everyone_logged_in()),
    ("GET", "/api/v1/quotas"): Rule(for_everyone_logged_in()),
    ("POST", "/api/v1/tasks"): Rule(
        scoped("member"),
        data=lambda w: {
            "simulator": "commands",
            "parameters": {"commands": ["echo hi"]},
            "machine_group": w.group.name,
            "input_files": ["run.sh"],
            "project": "team",
        },
    ),
    ("POST", "/api/v1/tasks/batch"): Rule(
        scoped("member"),
        data=lambda w: {
            "machine_group": w.group.name,
            "input_files": ["run.sh"],
            "tasks": [{"simulator": "commands", "parameters": {"commands": ["echo hi"]}, "project": "team"}],
        },
    ),
    # The task is the maintainer's: only its owner uploads the input, staff included.
    ("PUT", TASK + "/input"): Rule(scoped("maintainer") | {"staff": FORBIDDEN}),
    ("POST", TASK + "/input/direct"): Rule(scoped("maintainer") | {"staff": FORBIDDEN}, data={"size": 10}),
    ("POST", TASK + "/input/direct/done"): Rule(
        scoped("maintainer") | {"staff": FORBIDDEN}, data={"size": 10, "sha256": "0" * 64}
    ),
    ("GET", TASK + "/input"): Rule(scoped("viewer")),
    ("GET", TASK + "/input/files/{path}"): Rule(scoped("viewer")),
    # Listed tasks the role may not kill are answered one by one, unchanged.
    ("POST", "/api/v1/tasks/kill"): Rule(scoped("viewer"), data=lambda w: {"ids": [w.task.id]}),
    ("GET", TASK): Rule(scoped("viewer")),
    ("GET", TASK + "/position"): Rule(scoped("viewer")),
    ("GET", TASK + "/resources"): Rule(scoped("viewer")),
    ("POST", TASK + "/kill"): Rule(scoped("maintainer")),
    ("GET", TASK + "/metadata"): Rule(scoped("viewer")),
    ("PUT", TASK + "/metadata"): Rule(scoped("member"), data={"metadata": {"case": "b"}}),
    ("PATCH", TASK + "/metadata"): Rule(scoped("member"), data={"metadata": {"case": "b"}}),
    ("DELETE", TASK + "/metadata"): Rule(scoped("member"), query={"key": "case"}),
    ("GET", TASK + "/outputs"): Rule(scoped("viewer")),
    ("DELETE", TASK + "/outputs"): Rule(scoped("maintainer")),
    ("GET", TASK + "/outputs/files"): Rule(scoped("viewer")),
    ("GET", TASK + "/outputs/files/{path}"): Rule(scoped("viewer")),
    ("GET", TASK + "/logs/{stream}"): Rule(scoped("viewer")),
    ("GET", TASK + "/logs"): Rule(scoped("viewer")),
    ("GET", TASK + "/machine/files"): Rule(scoped("viewer")),
    ("GET", TASK + "/machine/last-modified-file"): Rule(scoped("viewer")),
    ("GET", TASK + "/machine/tail"): Rule(scoped("viewer"), query={"path": "stdout.txt"}),
    ("GET", TASK + "/machine/top"): Rule(scoped("viewer")),
    ("GET", TASK + "/comments"): Rule(scoped("viewer")),
    ("POST", TASK + "/comments"): Rule(scoped("member"), data={"body": "Looks right."}),
    ("POST", TASK + "/review"): Rule(scoped("member"), data={"state": "approved"}),
    ("GET", "/api/v1/machine-groups"): Rule(for_everyone_logged_in()),
    ("POST", "/api/v1/machine-groups"): Rule(
        scoped("maintainer"), data={"machine_type": "c2-standard-4", "name": "another", "project": "team"}
    ),
    ("GET", GROUP): Rule(scoped("viewer")),
    ("GET", GROUP + "/usage"): Rule(scoped("viewer")),
    ("POST", GROUP + "/start"): Rule(scoped("maintainer")),
    ("POST", GROUP + "/terminate"): Rule(scoped("maintainer")),
    ("POST", GROUP + "/machines/{machine}/reclaim"): Rule(scoped("maintainer")),
    ("GET", "/api/v1/projects"): Rule(for_everyone_logged_in()),
    # Naming a project that exists: it is answered to whoever sees it, not found for others.
    ("POST", "/api/v1/projects"): Rule(scoped("viewer"), data={"name": "team"}),
    ("GET", PROJECT): Rule(scoped("viewer")),
    ("GET", PROJECT + "/members"): Rule(scoped("viewer")),
    ("GET", PROJECT + "/budget"): Rule(scoped("viewer")),
    ("PUT", PROJECT + "/budget"): Rule(scoped("maintainer"), data={"kind": "money", "monthly_limit": 10}),
    ("DELETE", PROJECT + "/budget"): Rule(scoped("maintainer")),
    ("POST", PROJECT + "/members"): Rule(
        scoped("maintainer"), data={"username": "newcomer", "role": "viewer"}
    ),
    ("PATCH", PROJECT + "/members/{username}"): Rule(scoped("maintainer"), data={"role": "viewer"}),
    ("DELETE", PROJECT + "/members/{username}"): Rule(scoped("maintainer")),
    # The team project's storage, which holds the file result.txt.
    ("GET", "/api/v1/storage"): Rule(scoped("viewer"), query={"project": "team"}),
    ("GET", "/api/v1/storage/size"): Rule(scoped("viewer"), query={"project": "team"}),
    ("GET", "/api/v1/storage/files/{path}"): Rule(scoped("viewer"), query={"project": "team"}),
    ("PUT", "/api/v1/storage/files/{path}"): Rule(scoped("member"), query={"project": "team"}),
    ("DELETE", "/api/v1/storage/files/{path}"): Rule(scoped("member"), query={"project": "team"}),
    ("POST", "/api/v1/storage/copy"): Rule(
        scoped("member"), data={"project": "team", "source": "result.txt", "target": "copy.txt"}
    ),
    ("POST", "/api/v1/storage/signed-urls"): Rule(
        scoped("viewer"), data={"project": "team", "paths": ["result.txt"]}
    ),
    # A user's own destinations: no one else's, staff's neither (their URLs hold tokens).
    ("GET", "/api/v1/notifications"): Rule(for_everyone_logged_in()),
    ("POST", "/api/v1/notifications"): Rule(
        for_everyone_logged_in(), data={"url": "json://127.0.0.1:9/hook"}
    ),
    ("POST", "/api/v1/notifications/{rule_id}/test"): Rule(only("maintainer")),
    ("DELETE", "/api/v1/notifications/{rule_id}"): Rule(only("maintainer")),
}

SOCKETS: dict[str, dict[str, str]] = {
    "ws/tasks/<str:task_id>/": scoped("viewer"),
    "ws/tasks/<str:task_id>/logs/": scoped("viewer"),
    # Pages of lists follow what their viewer may see; anyone logged in may open them.
    "ws/live/tasks/": for_everyone_logged_in(),
    "ws/live/overview/": for_everyone_logged_in(),
    "ws/live/groups/<str:ref>/": scoped("viewer"),
}


# -- the world ------------------------------------------------------------------------


@dataclass
class World:
    users: dict[str, object]
    keys: dict[str, str]
    key_objects: dict[str, APIKey]
    project: object
    group: object
    task: Task
    comment: Comment
    saved_view: SavedView


def maintainers_rule(w: World):
    """A notification destination of the maintainer's (a port nobody listens on: a test fails at once)."""
    from tasks_app.models import NotificationRule

    rule, _ = NotificationRule.objects.get_or_create(
        user=w.users["maintainer"], label="mine", defaults={"url": "json://127.0.0.1:9/hook"}
    )
    return rule


def ended_task(owner, group) -> Task:
    """A task that ran, with its input, outputs and logs stored."""
    task = Task.objects.create(
        owner=owner,
        project=group.project,
        machine_group=group,
        simulator="commands",
        parameters={"commands": ["echo hi"]},
        metadata={"case": "a"},
    )
    for status in (Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS):
        lifecycle.transition(task, status, reason="test")
    data = zipped({"run.sh": b"echo hi\n", "result.txt": b"expected\n"})
    input_name = default_storage.save(storage.input_name(task.id), ContentFile(data))
    output_name = default_storage.save(
        storage.output_name(task.id), ContentFile(zipped({"result.txt": b"42\n", "stdout.txt": b"hi\n"}))
    )
    default_storage.save(storage.log_name(task.id, "stdout"), ContentFile(b"hi\n"))
    default_storage.save(storage.log_name(task.id, "stderr"), ContentFile(b""))
    Task.objects.filter(pk=task.pk).update(
        input_path=input_name,
        input_size=len(data),
        input_sha256=hashlib.sha256(data).hexdigest(),
        output_path=output_name,
        output_size=3,
        output_files=2,
    )
    task.refresh_from_db()
    return task


def build_world() -> World:
    User = get_user_model()
    users = {name: User.objects.create_user(name, password="pw-" + name) for name in PEOPLE[1:]}
    User.objects.filter(pk=users["staff"].pk).update(is_staff=True)
    users["staff"].refresh_from_db()
    User.objects.create_user("newcomer", password="pw-newcomer")
    maintainer = users["maintainer"]
    group = services.create_group(maintainer, machine_type="c2-standard-4", name="lab", project="team")
    project = group.project
    teams.add_member(project, "viewer", "viewer", actor=maintainer)
    teams.add_member(project, "member", "member", actor=maintainer)
    Machine.objects.create(group=group, name="lab-m1", state=Machine.State.ONLINE)
    task = ended_task(maintainer, group)
    project_storage.upload(maintainer, project, "result.txt", [b"42\n"], size=3)
    comment = Comment.objects.create(task=task, author=maintainer, body="First look.")
    saved_view = SavedView.objects.create(owner=maintainer, name="running", query="status=active")
    keys, key_objects = {}, {}
    for name, user in users.items():
        key_objects[name], keys[name] = APIKey.issue(user, "tests")
    return World(users, keys, key_objects, project, group, task, comment, saved_view)


@pytest.fixture
def world(db, no_broker) -> World:
    return build_world()


def each_person(run: Callable[[str], str]) -> dict[str, str]:
    """What each person gets, each in a savepoint undone afterwards."""
    got = {}
    for person in PEOPLE:
        with transaction.atomic():
            got[person] = run(person)
            transaction.set_rollback(True)
    return got


def _resolve(value, w: World):
    return value(w) if callable(value) else value


# -- console --------------------------------------------------------------------------


def console_patterns(patterns=None, prefix: str = "", namespace: str = ""):
    """Every URL pattern as (route, name), but the admin site's and the API's operations."""
    api_routes = {
        re.sub(r"\{(\w+)\}", r"<\1>", path).removeprefix("/")
        for path in ninja_api.get_openapi_schema()["paths"]
    }
    for p in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            if route.startswith(("admin/", MACHINE_INTERFACE)):
                continue  # the admin site checks staff itself, the machine interface tokens: see below
            inner = namespace + (f"{p.namespace}:" if p.namespace else "")
            yield from console_patterns(p.url_patterns, route, inner)
        elif isinstance(p, URLPattern):
            if re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route) in api_routes:
                continue  # an API operation: its rule is in API
            yield route, namespace + p.name


def test_every_console_url_has_a_rule():
    missing = sorted({f"{name} ({route})" for route, name in console_patterns() if name not in CONSOLE})
    assert not missing, "Add a rule to CONSOLE in tests/test_authorization.py for: " + ", ".join(missing)
    stale = sorted(set(CONSOLE) - {name for _, name in console_patterns()})
    assert not stale, f"These rules name URLs that no longer exist: {stale}"


def console_outcome(response) -> str:
    if response.status_code in (301, 302) and response["Location"].startswith(reverse("login")):
        return LOGIN
    if response.status_code in (403, 404):
        return str(response.status_code)
    assert response.status_code < 500 and response.status_code not in (401, 405), response.status_code
    return OK


@pytest.mark.parametrize(
    "name,index", [(name, i) for name, rules in CONSOLE.items() for i in range(len(rules))], ids=str
)
def test_console(world, name, index):
    rule = CONSOLE[name][index]

    def run(person: str) -> str:
        client = Client()
        if person != "anonymous":
            client.force_login(world.users[person])
        url = reverse(name, kwargs=rule.kwargs(world))
        query = _resolve(rule.query, world)
        if query:
            url += "?" + urlencode(query, doseq=True)
        if rule.method == "GET":
            return console_outcome(client.get(url))
        return console_outcome(client.post(url, _resolve(rule.data, world)))

    assert each_person(run) == rule.expect


MACHINE_INTERFACE = "api/machine/"
MACHINE_METHODS = {"GET": ("status", "input", "assets", "asset-file"), "PUT": ("outputs", "log-file")}


def test_the_machine_interface_answers_no_person_only_a_machine_token(world):
    """Whoever is logged in, every call of the machine interface wants a machine's (or host's) token."""
    resolver = next(p for p in get_resolver().url_patterns if str(p.pattern) == MACHINE_INTERFACE + "v1/")
    names = [p.name for p in resolver.url_patterns]
    assert len(names) > 15
    for person in PEOPLE:
        client = Client()
        if person != "anonymous":
            client.force_login(world.users[person])
        for name in names:
            kwargs = {"task_id": world.task.id} if "task" in name else {}
            if name.endswith("log-file"):
                kwargs["stream"] = "stdout"
            method = next((m for m, ends in MACHINE_METHODS.items() if name.endswith(ends)), "POST")
            response = client.generic(method, reverse(name, kwargs=kwargs), b"{}", "application/json")
            assert response.status_code == 401, (person, name, response.status_code)


def test_the_admin_site_lets_in_staff_only(world):
    for person in PEOPLE:
        client = Client()
        if person != "anonymous":
            client.force_login(world.users[person])
        response = client.get(reverse("admin:index"))
        if person == "staff":
            assert response.status_code == 200
        else:
            assert response.status_code == 302 and "/admin/login/" in response["Location"], person


# -- API ------------------------------------------------------------------------------


def api_operations() -> set[tuple[str, str]]:
    paths = ninja_api.get_openapi_schema()["paths"]
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def test_every_api_operation_has_a_rule():
    missing = sorted(api_operations() - set(API))
    assert not missing, f"Add a rule to API in tests/test_authorization.py for: {missing}"
    stale = sorted(set(API) - api_operations())
    assert not stale, f"These rules name API operations that no longer exist: {stale}"


def api_outcome(response) -> str:
    if response.status_code == 401:
        return LOGIN
    if response.status_code in (403, 404):
        return str(response.status_code)
    assert response.status_code < 500 and response.status_code != 405, (
        response.status_code,
        response.content,
    )
    return OK


@pytest.mark.parametrize("method,path", sorted(API), ids=lambda x: str(x))
def test_api(world, method, path):
    rule = API[(method, path)]
    values = {
        "task_id": world.task.id,
        "ref": world.project.name if path.startswith("/api/v1/projects") else world.group.name,
        "path": "result.txt",
        "stream": "stdout",
        "machine": "lab-m1",
        "username": "member",
    }
    if "{rule_id}" in path:
        values["rule_id"] = maintainers_rule(world).pk

    def run(person: str) -> str:
        client = Client()
        headers = {} if person == "anonymous" else {"HTTP_AUTHORIZATION": f"Bearer {world.keys[person]}"}
        url = path.format(**values)
        query = _resolve(rule.query, world)
        if query:
            url += "?" + urlencode(query, doseq=True)
        data = _resolve(rule.data, world)
        if method == "GET":
            response = client.get(url, **headers)
        else:
            response = client.generic(
                method,
                url,
                data=__import__("json").dumps(data) if data else b"",
                content_type="application/json",
                **headers,
            )
        return api_outcome(response)

    assert each_person(run) == rule.expect


# -- WebSockets --------------------------------------------------------------------------


def test_every_websocket_route_has_a_rule():
    routes = {str(p.pattern) for p in websocket_urlpatterns}
    assert routes == set(SOCKETS), f"Add a rule to SOCKETS for: {sorted(routes - set(SOCKETS))}"


def socket_outcome(path: str, key: str | None) -> str:
    async def attempt():
        headers = [(b"origin", b"http://localhost"), (b"host", b"localhost")]
        if key:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=30)
        await communicator.disconnect()
        return connected, code

    connected, code = async_to_sync(attempt)()
    if connected:
        return OK
    # Refused before accepting, with the same code for "no login" and "not yours".
    assert code == 4404, code
    return NOT_FOUND


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", sorted(SOCKETS))
def test_websocket(route, no_broker):
    w = build_world()
    path = "/" + route.replace("<str:task_id>", w.task.id).replace("<str:ref>", w.group.name)
    got = {person: socket_outcome(path, w.keys.get(person)) for person in PEOPLE}
    # A socket cannot send someone to a login page: without a login it is refused like a stranger.
    expected = {p: NOT_FOUND if e == LOGIN else e for p, e in SOCKETS[route].items()}
    assert got == expected
