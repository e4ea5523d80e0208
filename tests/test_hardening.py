"""Production settings, security headers, templates without inline code, safe download
names, and input archives that try to leave their folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tasks_app import archives, lifecycle, services, storage
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Machine, MachineGroup, Task
from tests.helpers import ROOT, zipped

PRODUCTION = {"SIMDECK_PRODUCTION": "1", "DEBUG": "0", "ALLOWED_HOSTS": "simdeck.example.org"}


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- settings ----------------------------------------------------------------------


def test_check_deploy_is_clean_with_the_production_switch():
    result = check_deploy(**PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_without_it():
    result = check_deploy(SIMDECK_PRODUCTION="0", DEBUG="0")
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr, warning


# -- headers -----------------------------------------------------------------------


@pytest.fixture
def logged_in(db, alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def test_pages_send_the_security_headers(logged_in, settings):
    for url in (reverse("overview"), reverse("task-list"), reverse("login"), "/api/v1/docs"):
        headers = logged_in.get(url).headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp, url
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, url
        assert "frame-ancestors 'none'" in csp, url
        assert headers["X-Content-Type-Options"] == "nosniff", url
        assert headers["Referrer-Policy"] == "same-origin", url
        assert headers["X-Frame-Options"] == "DENY", url


def test_in_production_cookies_are_secure_and_https_is_required(db, alice, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    client = Client()
    plain = client.get(reverse("login"))
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    page = client.get(reverse("login"), secure=True)
    assert page.headers["Strict-Transport-Security"].startswith("max-age=3600")
    answer = client.post(reverse("login"), {"username": "alice", "password": "wonderland-42"}, secure=True)
    assert answer.status_code == 302
    assert answer.cookies["sessionid"]["secure"] and answer.cookies["sessionid"]["httponly"]


TEMPLATES = sorted((ROOT / "templates").rglob("*.html"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT / "templates")))
def test_templates_hold_no_inline_script_or_style(path: Path):
    # The content security policy refuses inline code; a template with some would break.
    text = path.read_text()
    for tag in re.findall(r"<script\b[^>]*>", text):
        assert "src=" in tag or 'type="application/json"' in tag, f"inline <script> in {path.name}"
    assert not re.search(r"<style\b", text), f"<style> element in {path.name}"
    assert not re.search(r"\sstyle=", text), f"style attribute in {path.name}"
    assert not re.search(r"\son[a-z]+=", text), f"event handler attribute in {path.name}"
    assert "javascript:" not in text, path.name


# -- downloads ----------------------------------------------------------------------


@pytest.fixture
def ended_task(db, alice, no_broker):
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab")
    task = Task.objects.create(
        owner=alice, project=group.project, machine_group=group, simulator="commands", parameters={}
    )
    for status in (Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS):
        lifecycle.transition(task, status, reason="test")
    data = zipped({'out/we"ird;\tname.txt': b"1", "out/r\u00e9sultat.csv": b"2"})
    name = default_storage.save(storage.output_name(task.id), ContentFile(data))
    Task.objects.filter(pk=task.pk).update(output_path=name)
    return task


def test_download_names_are_sanitized(logged_in, ended_task, alice):
    weird = logged_in.get(reverse("task-file", args=[ended_task.id, "outputs", 'out/we"ird;\tname.txt']))
    assert weird.status_code == 200
    assert weird["Content-Disposition"] == 'attachment; filename="we\\"ird;name.txt"'
    accented = logged_in.get(reverse("task-file", args=[ended_task.id, "outputs", "out/r\u00e9sultat.csv"]))
    assert accented["Content-Disposition"] == "attachment; filename*=utf-8''r%C3%A9sultat.csv"
    api = Client(headers={"Authorization": f"Bearer {APIKey.issue(alice, 't')[1]}"})
    through_api = api.get(f"/api/v1/tasks/{ended_task.id}/outputs/files/out/we%22ird%3B%09name.txt")
    assert through_api.status_code == 200, through_api.content
    assert through_api["Content-Disposition"] == 'attachment; filename="we\\"ird;name.txt"'


# -- archives that try to leave their folder -----------------------------------------


def hostile_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr("../escaped.txt", b"outside")
        link = zipfile.ZipInfo("link-to-etc")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc")
        zf.writestr("link-to-etc/passwd-copy", b"through the link")
    return buf.getvalue()


def symlink_only_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("up")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "..")
    return buf.getvalue()


def test_an_archive_with_dotdot_and_a_link_is_refused_without_writing_anything(tmp_path):
    dest = tmp_path / "work"
    dest.mkdir()
    with pytest.raises(archives.UnsafeArchive, match=r"\.\./escaped\.txt"):
        archives.safe_extract(io.BytesIO(hostile_zip()), dest)
    assert not (tmp_path / "escaped.txt").exists()
    assert list(dest.iterdir()) == []  # checked before anything is written, even fine.txt
    with pytest.raises(archives.UnsafeArchive, match="link"):
        archives.safe_extract(io.BytesIO(symlink_only_zip()), dest)
    assert list(dest.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_an_upload_with_such_an_archive_is_refused_before_it_is_queued(db, alice, alice_key, no_broker):
    api = Client(headers={"Authorization": f"Bearer {alice_key}"})
    services.create_group(alice, machine_type="c2-standard-4", name="lab")
    for data, named in (
        (hostile_zip(), "../escaped.txt"),
        (symlink_only_zip(), "link"),
        (b"not a zip", "zip"),
    ):
        created = api.post(
            "/api/v1/tasks",
            {
                "simulator": "commands",
                "machine_group": "lab",
                "input_files": ["fine.txt"],
                "parameters": {"commands": ["cat fine.txt"]},
            },
            content_type="application/json",
        )
        assert created.status_code == 201, created.content
        task_id = created.json()["id"]
        answer = api.generic(
            "PUT",
            f"/api/v1/tasks/{task_id}/input",
            data,
            content_type="application/zip",
            headers={"X-Archive-Size": str(len(data)), "X-Content-SHA256": hashlib.sha256(data).hexdigest()},
        )
        assert answer.status_code == 400, answer.content
        assert answer.json()["error"] == "bad_upload" and named in answer.json()["message"]
        task = Task.objects.get(pk=task_id)
        assert task.status == Status.PENDING_INPUT and not task.input_path
        assert not default_storage.exists(storage.input_name(task_id))


# -- what an adversarial probe found --------------------------------------------------
#
# Each test sends what the probe sent, as it sent it (raw JSON where Python's
# own encoder would not write it), and checks the answer it must get.


def raw_json(api: Client, method: str, url: str, body: str):
    return api.generic(method, url, body.encode("utf-8"), content_type="application/json")


def refused(answer, field: str, *words: str) -> dict:
    """The answer is a 400 in the API's error shape naming ``field``; returns its body."""
    assert answer.status_code == 400, answer.content[:400]
    assert answer["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error", "message", "field"} and body["error"] == "invalid", body
    assert body["field"] == field and body["message"].startswith(field), body
    for word in words:
        assert word in body["message"], body
    return body


GROUP = '{"machine_type": "e2-micro", "name": "bad-ttl", "project": "%s", %s, "start": true}'


def test_a_group_limit_beyond_any_date_is_refused(api, alice, no_broker):
    project = services.project_to_use(alice, "wind", "manage-groups").name
    for limit, field in (
        ('"auto_terminate_minutes": 1e308', "auto_terminate_minutes"),
        ('"auto_terminate_minutes": Infinity', "auto_terminate_minutes"),
        ('"max_idle_time": NaN', "max_idle_time"),
        ('"max_idle_time": -Infinity', "max_idle_time"),
        ('"auto_terminate_minutes": 525601', "auto_terminate_minutes"),
        ('"data_disk_gb": 10, "auto_resize_disk_max_gb": 4294967296', "auto_resize_disk_max_gb"),
    ):
        answer = raw_json(api, "POST", "/api/v1/machine-groups", GROUP % (project, limit))
        refused(answer, field, "at most")
    assert not MachineGroup.objects.filter(name="bad-ttl").exists()
    year = raw_json(
        api, "POST", "/api/v1/machine-groups", GROUP % (project, '"auto_terminate_minutes": 525600')
    )
    assert year.status_code == 201, year.content


def test_a_task_time_to_live_beyond_a_year_is_refused(api, alice, no_broker):
    services.create_group(alice, machine_type="e2-micro", name="lab")
    for ttl in ("99999999999h", "0s", "8761h"):
        body = {"simulator": "commands", "machine_group": "lab", "input_files": ["a"], "time_to_live": ttl}
        body["parameters"] = {"commands": ["true"]}
        refused(api.post("/api/v1/tasks", body, content_type="application/json"), "time_to_live")


def test_one_bad_group_stops_neither_housekeeping_nor_the_groups_page(
    db, alice, bob, logged_in, api, no_broker
):
    from tasks_app import housekeeping

    # Rows as the probe left them, and one no check could have foreseen.
    beyond = services.start_group(services.create_group(alice, machine_type="e2-micro", name="beyond"))
    broken = services.start_group(services.create_group(alice, machine_type="e2-micro", name="broken"))
    MachineGroup.objects.filter(pk=beyond.pk).update(auto_terminate_minutes=1e308)
    MachineGroup.objects.filter(pk=broken.pk).update(auto_terminate_minutes=float("inf"), started_at=None)
    theirs = services.start_group(
        services.create_group(bob, machine_type="e2-micro", name="theirs", auto_terminate_minutes=1)
    )
    MachineGroup.objects.filter(pk=theirs.pk).update(started_at=timezone.now() - dt.timedelta(minutes=5))
    lost = Machine.objects.create(
        group=theirs,
        name="theirs-1",
        state=Machine.State.ONLINE,
        last_heartbeat_at=timezone.now() - dt.timedelta(hours=1),
    )

    done = housekeeping.run()

    assert done["groups_stopped"] == ["theirs"]
    assert done["machines_lost"] == ["theirs-1"]
    # The jobs after them ran too (a job that fails reports None).
    assert done["tokens_restored"] is not None and done["task_counts_folded"] is not None
    assert MachineGroup.objects.get(pk=beyond.pk).state == MachineGroup.State.STARTED
    assert Machine.objects.get(pk=lost.pk).state == Machine.State.LOST
    page = logged_in.get(reverse("group-list"))
    assert page.status_code == 200 and "beyond" in page.content.decode()
    # The API tells what the scheduler does with such a row: no limit, in valid JSON.
    listed = api.get("/api/v1/machine-groups?include_terminated=true")
    assert listed.status_code == 200 and "Infinity" not in listed.content.decode()
    limits = {g["name"]: g["auto_terminate_minutes"] for g in listed.json()}
    assert limits["broken"] is None and limits["beyond"] == 1e308


LONE = "\\ud800"  # as JSON writes it: a lone surrogate once decoded


def test_lone_surrogates_are_refused_naming_the_field(api, alice, bob, no_broker):
    group = services.create_group(alice, machine_type="e2-micro", name="lab")
    task = services.create_task(
        alice, simulator="commands", parameters={"commands": ["true"]}, machine_group=group, input_files=["a"]
    )
    submit = '{"simulator": "commands", "machine_group": "lab", "input_files": ["a"], %s}'
    cases = [
        ("POST", f"/api/v1/tasks/{task.id}/comments", f'{{"body": "x{LONE}"}}', "body"),
        ("POST", "/api/v1/machine-groups", f'{{"machine_type": "e2-micro", "name": "a{LONE}"}}', "name"),
        ("POST", f"/api/v1/projects/{group.project.name}/members", f'{{"username": "{LONE}"}}', "username"),
        ("POST", "/api/v1/tasks/kill", f'{{"ids": ["{LONE}"]}}', "ids.0"),
        ("POST", "/api/v1/tasks/kill", f'{{"all": true, "project": "{LONE}"}}', "project"),
        (
            "POST",
            "/api/v1/machine-groups",
            f'{{"machine_type": "e2-micro", "project": "p{LONE}"}}',
            "project",
        ),
        (
            "POST",
            "/api/v1/tasks",
            submit % f'"parameters": {{"commands": ["echo {LONE}"]}}',
            "parameters.commands.0",
        ),
        ("POST", "/api/v1/tasks", submit % f'"metadata": {{"case": "{LONE}"}}', "metadata.case"),
        ("POST", "/api/v1/tasks", submit % f'"metadata": {{"{LONE}": "x"}}', "metadata"),
        ("PATCH", f"/api/v1/tasks/{task.id}/metadata", f'{{"metadata": {{"k": "{LONE}"}}}}', "metadata.k"),
        ("POST", f"/api/v1/tasks/{task.id}/review", f'{{"state": "{LONE}"}}', "state"),
    ]
    for method, url, body, field in cases:
        refused(raw_json(api, method, url, body), field, "lone surrogate (U+D800)")
    assert Task.objects.count() == 1 and task.comments.count() == 0


def test_a_nul_character_is_refused_naming_the_field(api, alice, no_broker):
    group = services.create_group(alice, machine_type="e2-micro", name="lab")
    task = services.create_task(
        alice, simulator="commands", parameters={"commands": ["true"]}, machine_group=group, input_files=["a"]
    )
    refused(
        raw_json(api, "PUT", f"/api/v1/tasks/{task.id}/metadata", '{"metadata": {"k": "a\\u0000"}}'),
        "metadata.k",
        "NUL",
    )
    refused(api.get("/api/v1/tasks?simulator=a%00b"), "simulator", "NUL")
    refused(api.get("/api/v1/machine-groups?project=a%00b"), "project", "NUL")
    refused(api.post("/api/v1/machine-groups/lab/machines/m%00/reclaim"), "machine", "NUL")


def test_resubmitting_with_a_nul_in_parameters_or_metadata_is_a_form_error(db, alice, logged_in, no_broker):
    group = services.create_group(alice, machine_type="e2-micro", name="lab")
    original = Task.objects.create(
        owner=alice, project=group.project, machine_group=group, simulator="commands", parameters={}
    )
    data = zipped({"run.sh": b"true\n"})
    name = default_storage.save(storage.input_name(original.id), ContentFile(data))
    Task.objects.filter(pk=original.pk).update(
        input_path=name, input_size=len(data), input_sha256=hashlib.sha256(data).hexdigest()
    )
    url = reverse("task-resubmit-edit", args=[original.id])
    for parameters, metadata, field in (
        ('{"commands": ["echo a\\u0000b"]}', "{}", "parameters"),
        ('{"commands": ["true"]}', '{"case": "a\\u0000"}', "metadata"),
        ('{"commands": ["echo \\ud800"]}', "{}", "parameters"),
    ):
        form = {"parameters": parameters, "machine_group": group.pk, "time_to_live": "", "metadata": metadata}
        answer = logged_in.post(url, form)
        assert answer.status_code == 200, answer.content[:300]
        errors = answer.context["form"].errors
        assert field in errors, errors
    assert not Task.objects.filter(resubmitted_from=original).exists()


def test_a_members_task_on_a_teams_group_is_the_teams_to_see_and_stop(
    db, alice, bob, django_user_model, no_broker
):
    from tasks_app import teams

    group = services.start_group(
        services.create_group(alice, machine_type="e2-micro", name="lab", project="a")
    )
    teams.add_member(group.project, "bob", "member", actor=alice)
    body = {"simulator": "commands", "machine_group": "lab", "input_files": ["a"]}
    body["parameters"] = {"commands": ["true"]}
    bobs = Client(headers={"Authorization": f"Bearer {APIKey.issue(bob, 'b')[1]}"})
    created = bobs.post("/api/v1/tasks", body, content_type="application/json")
    assert created.status_code == 201 and created.json()["project"] == "a", created.content
    task_id = created.json()["id"]
    maintainer = Client(headers={"Authorization": f"Bearer {APIKey.issue(alice, 'a')[1]}"})
    assert maintainer.get(f"/api/v1/tasks/{task_id}").status_code == 200
    killed = maintainer.post(f"/api/v1/tasks/{task_id}/kill")
    assert killed.status_code == 200 and killed.json()["changed"], killed.content
    elsewhere = bobs.post("/api/v1/tasks", body | {"project": "bob-default"}, content_type="application/json")
    refused(elsewhere, "project")


def test_a_group_page_lists_only_the_tasks_its_viewer_may_see(db, alice, bob, django_user_model, no_broker):
    from tasks_app import teams

    group = services.start_group(
        services.create_group(alice, machine_type="e2-micro", name="lab", project="a")
    )
    teams.add_member(group.project, "bob", "viewer", actor=alice)
    # A task filed elsewhere before tasks followed their group's project.
    hidden = Task.objects.create(
        owner=alice, project=services.project_to_use(alice, None), machine_group=group, simulator="commands"
    )
    shown = Task.objects.create(owner=alice, project=group.project, machine_group=group, simulator="commands")
    for task in (hidden, shown):
        lifecycle.transition(task, Status.SUBMITTED, reason="test")
    viewer = Client()
    viewer.force_login(bob)
    page = viewer.get(reverse("group-detail", args=["lab"])).content.decode()
    assert shown.id in page and hidden.id not in page
    owner = Client()
    owner.force_login(alice)
    assert hidden.id in owner.get(reverse("group-detail", args=["lab"])).content.decode()


def test_only_the_owner_uploads_a_tasks_input(db, alice, bob, django_user_model, no_broker):
    from tasks_app import teams

    group = services.start_group(
        services.create_group(alice, machine_type="e2-micro", name="lab", project="a")
    )
    teams.add_member(group.project, "bob", "member", actor=alice)
    task = services.create_task(
        bob, simulator="commands", parameters={"commands": ["true"]}, machine_group=group, input_files=["a"]
    )
    boss = django_user_model.objects.create_user("boss", is_staff=True)
    data = zipped({"a": b"mine"})
    headers = {"X-Archive-Size": str(len(data)), "X-Content-SHA256": hashlib.sha256(data).hexdigest()}
    for someone in (alice, boss):
        api = Client(headers={"Authorization": f"Bearer {APIKey.issue(someone, 'k')[1]}"})
        answer = api.generic(
            "PUT", f"/api/v1/tasks/{task.id}/input", data, content_type="application/zip", headers=headers
        )
        assert answer.status_code == 403, answer.content
        assert answer.json()["message"].startswith(f"Only the owner of task {task.id} (bob) can upload")
    task.refresh_from_db()
    assert task.status == Status.PENDING_INPUT and not task.input_path
    own = Client(headers={"Authorization": f"Bearer {APIKey.issue(bob, 'k')[1]}"})
    answer = own.generic(
        "PUT", f"/api/v1/tasks/{task.id}/input", data, content_type="application/zip", headers=headers
    )
    assert answer.status_code == 200 and answer.json()["status"] == "submitted"


def open_socket(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[bool, object]:
    from asgiref.sync import async_to_sync
    from channels.testing import WebsocketCommunicator

    from console.asgi import application

    async def attempt():
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, code = await communicator.connect(timeout=30)
        await communicator.disconnect()
        return connected, code

    return async_to_sync(attempt)()


@pytest.mark.django_db(transaction=True)
def test_a_socket_from_another_port_of_the_same_host_is_refused(alice, no_broker):
    group = services.create_group(alice, machine_type="e2-micro", name="lab")
    task = services.create_task(
        alice, simulator="commands", parameters={"commands": ["true"]}, machine_group=group, input_files=["a"]
    )
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    browser.get(reverse("task-detail", args=[task.id]), HTTP_HOST="localhost:8000")
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    path = f"/ws/tasks/{task.id}/logs/"

    def socket(origin: bytes, host: bytes = b"localhost:8000") -> bool:
        return open_socket(path, [(b"origin", origin), (b"host", host), (b"cookie", cookie)])[0]

    def form(origin: str) -> int:
        token = browser.cookies["csrftoken"].value
        url = reverse("task-kill", args=[task.id])
        headers = {"Origin": origin, "Host": "localhost:8000", "X-CSRFToken": token}
        return browser.post(url, headers=headers).status_code

    # What the CSRF check refuses for a form, the socket refuses too.
    assert form("http://localhost:9999") == 403
    assert not socket(b"http://localhost:9999")
    assert not socket(b"https://localhost:8000")
    assert not socket(b"http://evil.example:8000")
    assert not socket(b"http://localhost:8000", host=b"evil.example:8000")
    assert socket(b"http://localhost:8000")
    assert form("http://localhost:8000") == 302


def dot_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(".", b"where the folder is")
    return buf.getvalue()


def test_an_archive_entry_named_dot_is_refused_at_upload(api, alice, no_broker, tmp_path):
    services.create_group(alice, machine_type="e2-micro", name="lab")
    created = api.post(
        "/api/v1/tasks",
        {
            "simulator": "commands",
            "machine_group": "lab",
            "input_files": ["fine.txt"],
            "parameters": {"commands": ["true"]},
        },
        content_type="application/json",
    )
    data = dot_zip()
    answer = api.generic(
        "PUT",
        f"/api/v1/tasks/{created.json()['id']}/input",
        data,
        content_type="application/zip",
        headers={"X-Archive-Size": str(len(data)), "X-Content-SHA256": hashlib.sha256(data).hexdigest()},
    )
    assert answer.status_code == 400 and answer.json()["error"] == "bad_upload", answer.content
    assert "without a name ('.')" in answer.json()["message"]
    dest = tmp_path / "work"
    dest.mkdir()
    with pytest.raises(archives.UnsafeArchive):
        archives.safe_extract(io.BytesIO(data), dest)
    assert list(dest.iterdir()) == []


def test_a_machines_file_error_names_no_server_path(tmp_path):
    from tasks_app.executor import os_error_message

    work = tmp_path / "machine-1" / "task" / "work"
    work.mkdir(parents=True)
    for path, shown in ((work, "'.'"), (work / "out" / "a.txt", "'out/a.txt'"), (tmp_path / "x", "'x'")):
        try:
            open(path, "rb")
        except OSError as exc:
            message = os_error_message(exc, work)
        assert str(tmp_path) not in message and shown in message, message


@pytest.fixture
def alice_unthrottled(alice):
    from tasks_app import login_throttle

    login_throttle.reset("alice", "127.0.0.1")
    yield alice
    login_throttle.reset("alice", "127.0.0.1")


def test_the_password_change_form_locks_after_as_many_failures_as_the_login(alice_unthrottled, settings):
    browser = Client()
    browser.force_login(alice_unthrottled)
    url = reverse("password_change")

    def change(old: str):
        return browser.post(
            url, {"old_password": old, "new_password1": "n3w-Secret-pass", "new_password2": "n3w-Secret-pass"}
        )

    answers = [change(f"guess-{i}") for i in range(settings.SIMDECK_LOGIN_FAILURES)]
    assert [a.status_code for a in answers[:-1]] == [200] * (settings.SIMDECK_LOGIN_FAILURES - 1)
    assert answers[-1].status_code == 429 and int(answers[-1]["Retry-After"]) > 0
    assert b"Changing the password, and logging in, are paused" in answers[-1].content
    # The right password waits too: guessing learns nothing.
    assert change("wonderland-42").status_code == 429
    alice_unthrottled.refresh_from_db()
    assert alice_unthrottled.check_password("wonderland-42")
    assert (
        Client().post(reverse("login"), {"username": "alice", "password": "wonderland-42"}).status_code == 429
    )


def test_the_console_refuses_a_group_limit_out_of_range_on_its_field(logged_in, no_broker):
    form = {"machine_type": "e2-micro", "num_machines": 1, "data_disk_gb": 10, "max_idle_time": 3}
    for value in ("1e308", "525601", "inf", "nan"):
        answer = logged_in.post(
            reverse("group-list"), form | {"auto_terminate_minutes": value, "start": "on"}
        )
        assert answer.status_code == 422, answer.status_code
        assert "auto_terminate_minutes" in answer.context["form"].errors, value
    assert not MachineGroup.objects.exists()
