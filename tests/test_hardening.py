"""Production settings, security headers, templates without inline code, safe download
names, and input archives that try to leave their folder."""

from __future__ import annotations

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

from tasks_app import archives, lifecycle, services, storage
from tasks_app.lifecycle import Status
from tasks_app.models import APIKey, Task
from tests.helpers import ROOT

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


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def ended_task(db, alice, monkeypatch):
    monkeypatch.setattr(services, "publish_tokens", lambda group, count: None)
    group = services.create_group(alice, machine_type="c2-standard-4", name="lab")
    task = Task.objects.create(
        owner=alice, project=group.project, machine_group=group, simulator="commands", parameters={}
    )
    for status in (Status.SUBMITTED, Status.PREPARING, Status.STARTED, Status.FINALIZING, Status.SUCCESS):
        lifecycle.transition(task, status, reason="test")
    data = zip_bytes({'out/we"ird;\tname.txt': b"1", "out/r\u00e9sultat.csv": b"2"})
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


def test_an_upload_with_such_an_archive_is_refused_before_it_is_queued(db, alice, alice_key, monkeypatch):
    monkeypatch.setattr(services, "publish_tokens", lambda group, count: None)
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
