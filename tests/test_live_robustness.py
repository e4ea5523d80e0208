"""Live logs survive a restart of the web server and a short Redis outage.

Everything is real: daphne, the machines' Celery workers, a simulator in a
subprocess, and the client following over the JSON WebSocket. The Redis
outage uses a private ``redis-server`` of this test, never the shared one.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

import simdeck
from simdeck import stream
from tasks_app.testing.stack import ProcessStack, free_port
from tests.client_fixtures import UNTIL_STOPPED, start_web, stop, stop_web, wait_until_printed
from tests.helpers import ROOT, wait_for

INPUT = ROOT / "examples" / "commands-mesh-solve"
REDIS_SERVER = Path(shutil.which("redis-server") or "/usr/bin/redis-server")


class Follower:
    """``simdeck.stream.follow_log`` in a thread: the task's stdout as the client receives it."""

    def __init__(self, task):
        self.text = ""
        self.error: BaseException | None = None
        client = simdeck.api.client()
        self.pieces = stream.follow_log(client, task.id, ("stdout",), task.is_terminal)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        try:
            for _stream, text in self.pieces:
                self.text += text
        except BaseException as exc:  # reported by the test
            self.error = exc

    def steps(self) -> int:
        return self.text.count("step ")

    def wait_for_more(self, than: int, timeout: float = 90) -> None:
        wait_for(lambda: self.steps() > than, timeout, message=f"more than {than} steps to arrive")

    def finish(self, timeout: float = 120) -> list[str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the follower did not stop after the task ended"
        assert self.error is None, self.error
        return self.text.splitlines()


def assert_every_step_once(lines: list[str]) -> None:
    assert lines[0].startswith("wrote mesh.csv"), lines[:3]
    assert lines[1:-1] == [f"step {i}" for i in range(1, len(lines) - 1)], "a step was lost or repeated"
    assert lines[-1] == "finished"


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_follower_resumes_with_no_gap_or_duplicate_when_the_web_server_restarts(
    stack, client_for, alice_key
):
    client_for(alice_key)
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=INPUT, commands=["python make_mesh.py", UNTIL_STOPPED], on=mg
    )
    wait_until_printed(stack, task.id, steps=2)
    follower = Follower(task)
    follower.wait_for_more(than=2)

    stop_web(stack)
    time.sleep(2)  # the task keeps printing while nobody serves its log
    start_web(stack)
    before = follower.steps()
    follower.wait_for_more(than=before + 3)
    stop(stack, task.id)

    assert_every_step_once(follower.finish())
    # The client did reconnect to the new server over the WebSocket.
    assert f"/ws/tasks/{task.id}/logs/" in (stack.home / "web-restarted.log").read_text()


# -- Redis briefly away ------------------------------------------------------------


class PrivateRedis:
    """A redis-server of this test alone, stopped and started again at will (keeping its data)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            + ["--save", "3600 1", "--appendonly", "no", "--protected-mode", "no"],
            stdout=open(self.folder / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _answers(client), 30, message="the private Redis to start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its data first, as a restart does
            self.proc.wait(timeout=30)


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path):
    if not REDIS_SERVER.exists():
        pytest.skip("redis-server is not installed")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_stack(transactional_db, tmp_path, monkeypatch, private_redis):
    """A running Simdeck whose broker, channel layer and log streams are the private Redis."""
    home = tmp_path / "simdeck-home"
    s = ProcessStack(home, env={"REDIS_URL": private_redis.url, "CELERY_BROKER_URL": private_redis.url})
    monkeypatch.setattr(settings, "SIMDECK_HOME", home)
    monkeypatch.setattr(settings, "SIMDECK_QUEUE_PREFIX", s.queue_prefix)
    s.start()
    yield s
    s.kill()


def console_session(user) -> dict[str, str]:
    """The cookies of a logged-in browser (a session stored as the login view stores it)."""
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return {settings.SESSION_COOKIE_NAME: session.session_key}


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_pages_are_served_while_redis_is_down_and_the_log_resumes_when_it_returns(
    redis_stack, private_redis, alice, alice_key, tmp_path, monkeypatch
):
    from simdeck import api

    monkeypatch.setenv("SIMDECK_API_URL", redis_stack.url)
    monkeypatch.setenv("SIMDECK_API_KEY", alice_key)
    monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "client.json"))
    monkeypatch.chdir(tmp_path)
    api.default_client.cache_clear()
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    task = simdeck.simulators.Commands().run(
        input_dir=INPUT, commands=["python make_mesh.py", UNTIL_STOPPED], on=mg
    )
    wait_until_printed(redis_stack, task.id, steps=2)
    follower = Follower(task)
    follower.wait_for_more(than=2)
    browser = httpx.Client(base_url=redis_stack.url, cookies=console_session(alice), timeout=30)
    assert browser.get(f"/tasks/{task.id}/").status_code == 200

    private_redis.stop()
    try:
        for path in (f"/tasks/{task.id}/", "/tasks/", "/overview/", f"/machine-groups/{mg.name}/"):
            answer = browser.get(path)
            assert answer.status_code == 200, (path, answer.status_code, redis_stack.logs())
        time.sleep(2)  # the simulator keeps printing meanwhile
    finally:
        private_redis.start()
    before = follower.steps()
    follower.wait_for_more(than=before + 3)
    stop(redis_stack, task.id)

    assert_every_step_once(follower.finish())
    api.default_client.cache_clear()
