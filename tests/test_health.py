"""The health page and `manage.py health`: what runs, how often it was restarted, what answers.

The processes are real: a supervisor as the launcher runs one (console/
supervisor.py), publishing its state in a home of the test's own, and the
test kills it. The services checked are the test run's own database and
Redis, and one that nobody listens on.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import pytest
from django.core.management import CommandError, call_command

from console.supervisor import LAUNCHER_STATE, Program, Supervisor
from tasks_app.testing.stack import free_port
from tests.helpers import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("ops", password="on-call-42", is_staff=True)


@pytest.fixture
def launched(settings, tmp_path):
    """A scheduler kept running by a supervisor that publishes its state where the page looks."""
    settings.SIMDECK_HOME = tmp_path
    log = tmp_path / "scheduler.log"
    supervisor = Supervisor(
        [Program("scheduler", SLEEPER, log=log)],
        say=lambda text: None,
        state_file=tmp_path / LAUNCHER_STATE,
        first_backoff=0.05,
    )
    supervisor.start()
    yield supervisor
    supervisor.stop()


def health() -> tuple[int, str]:
    """``manage.py health``: its exit code and all it printed."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("health", stdout=out, stderr=err)
    except CommandError as exc:
        return 1, out.getvalue() + str(exc)
    return 0, out.getvalue()


@pytest.mark.django_db
def test_only_staff_see_the_health_page_and_its_link(client, alice, staff):
    client.force_login(alice)
    assert client.get("/health/").status_code == 404
    assert 'href="/health/"' not in client.get("/overview/").content.decode()
    client.force_login(staff)
    assert 'href="/health/"' in client.get("/overview/").content.decode()
    assert client.get("/health/").status_code in (200, 503)


@pytest.mark.django_db
def test_a_killed_process_shows_its_restart_on_the_page_and_in_the_command(client, staff, launched, tmp_path):
    first = launched.programs[0].proc.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: launched.check() or launched.programs[0].restarts == 1, 10, 0.05, "a restart")
    now = launched.programs[0].proc.pid

    client.force_login(staff)
    page = client.get("/health/")
    assert page.status_code == 200, page.content.decode()
    html = page.content.decode()
    assert "Everything is up." in html
    row = html[html.index("<td>scheduler</td>") :].split("</tr>")[0]
    assert "Running" in row and f">{now}<" in row
    assert "<td>1</td>" in row  # restarts
    assert "killed by SIGKILL at " in row
    assert str(tmp_path / "scheduler.log") in row
    for service in ("database", "Redis and broker", "file storage", "sandbox", "local provider"):
        assert f"<td>{service}</td>" in html

    code, said = health()
    assert code == 0, said
    assert f"Run by the launcher (manage.py up, pid {os.getpid()})." in said
    assert f"  scheduler: pid {now} since " in said
    assert "; restarted 1 times, last killed by SIGKILL at " in said
    assert said.rstrip().endswith("Everything is up.")


@pytest.mark.django_db
def test_what_is_down_is_named_by_the_page_and_fails_the_command(client, staff, launched, settings):
    os.kill(launched.programs[0].proc.pid, signal.SIGKILL)  # its supervisor has not looked yet
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = nobody

    client.force_login(staff)
    page = client.get("/health/")
    assert page.status_code == 503
    assert "Down: scheduler, Redis and broker." in page.content.decode()

    code, said = health()
    assert code == 1
    assert "  scheduler: gone; restarted 0 times" in said
    assert "Redis and broker: DOWN: " in said and "refused" in said.lower()
    assert said.rstrip().endswith("Down: scheduler, Redis and broker.")


@pytest.mark.django_db
def test_without_a_launcher_only_the_services_are_checked(client, staff, settings, tmp_path):
    settings.SIMDECK_HOME = tmp_path
    code, said = health()
    assert code == 0, said
    assert said.startswith(f"No launcher runs from {tmp_path}")
    assert "  scheduler:" not in said
