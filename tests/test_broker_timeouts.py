"""Simulations longer than the broker holds a message unacknowledged.

RabbitMQ closes a channel that holds a delivery past its consumer_timeout,
and Redis hands a message out again after its visibility timeout. A machine
acknowledges its token when it takes it, so neither trap springs however
long the simulation runs. (RabbitMQ may still hand a busy machine the next
token ahead, and close the channel that holds it past the timeout: the
worker opens another and the token goes back to the queue.) Each test shortens the broker's limit to seconds:
RabbitMQ in a node of its own (the shared one's limit is not ours to
change), Redis through kombu's transport options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest
import redis
from django.conf import settings

import simdeck
from tasks_app.lifecycle import Status
from tasks_app.models import MachineGroup, Task, TaskEvent
from tasks_app.testing.stack import free_port
from tests.helpers import ROOT, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

INPUT = ROOT / "examples" / "commands-mesh-solve"
# The script itself, not Debian's wrapper on the PATH, which would run the
# node as the rabbitmq user, shut out of the test's private folder.
RABBITMQ_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQ_SERVER = (
    RABBITMQ_SCRIPT if os.path.exists(RABBITMQ_SCRIPT) else shutil.which("rabbitmq-server") or ""
)
# RabbitMQ looks at its consumer timeouts at each channel tick, once a minute
# by default; the test's node ticks every second, and a simulation outlasts
# several looks so the timeout has every chance to spring.
TICK_MS = 1000
LONGER_THAN_A_LOOK = 8


def ran_once(task_id: str) -> bool:
    return (
        TaskEvent.objects.filter(task_id=task_id, to_status=Status.PREPARING).count() == 1
        and Task.objects.get(pk=task_id).attempt == 1
    )


def first_token_taken_once(stack, machine_name: str) -> bool:
    """Whether the first token the machine took reached no machine again.

    Acknowledged when taken, it is gone from the broker; held until its task
    ended, it comes back after the broker's timeout, to this machine or another.
    """
    logs = {p.stem: p.read_text() for p in (stack.home / "logs" / "machines").glob("*.log")}
    first = re.search(r"run_next\[([0-9a-f-]+)\] received", logs[machine_name]).group(1)
    return sum(log.count(f"run_next[{first}] received") for log in logs.values()) == 1


@pytest.fixture
def rabbitmq(tmp_path):
    """A RabbitMQ node of this test's own whose consumer_timeout is 2 s, looked at every second; its URL."""
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        pytest.skip("rabbitmq-server is not installed")
    port = free_port()
    base = tmp_path / "rabbitmq"
    base.mkdir()
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\nconsumer_timeout = 2000\n")
    (base / "advanced.config").write_text(f"[{{rabbit, [{{channel_tick_interval, {TICK_MS}}}]}}].\n")
    env = dict(
        os.environ,
        RABBITMQ_NODENAME=f"simdeck-test-{port}@localhost",
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(free_port()),
        RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
        RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
        RABBITMQ_CONF_ENV_FILE="/dev/null",  # not the system node's name and settings
        RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
        RABBITMQ_LOG_BASE=str(base / "log"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
        RABBITMQ_PID_FILE=str(base / "pid"),
        ERL_EPMD_ADDRESS="127.0.0.1",
    )
    with open(base / "server.log", "wb") as log:
        node = subprocess.Popen(
            [RABBITMQ_SERVER], cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"amqp://guest:guest@127.0.0.1:{port}//"
    try:
        wait_for(lambda: _answers(url), 60, 0.5, f"RabbitMQ on port {port}; see {base / 'server.log'}")
        yield url
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def _answers(url: str) -> bool:
    import kombu

    try:
        with kombu.Connection(url, connect_timeout=1) as conn:
            conn.connect()
            return True
    except OSError:
        return False


class TestRabbitMQ:
    @pytest.fixture
    def stack_env(self, rabbitmq):
        return {"CELERY_BROKER_URL": rabbitmq}

    def test_a_simulation_longer_than_the_consumer_timeout_succeeds_and_runs_once(
        self, stack, client_for, alice_key
    ):
        client_for(alice_key)
        mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=1).start()
        sim = simdeck.simulators.Commands()
        long = sim.run(input_dir=INPUT, commands=[f"sleep {LONGER_THAN_A_LOOK}", "echo long"], on=mg)
        wait_for(lambda: Task.objects.get(pk=long.id).status == Status.STARTED, 90, message="the long task")
        # Its token waits while the long one runs: the busy machine may take it
        # ahead from RabbitMQ and hold it past the timeout.
        short = sim.run(input_dir=INPUT, commands=["echo short"], on=mg)

        assert long.wait(polling_period=1, silent_mode=True) == "success", stack.logs()
        assert short.wait(polling_period=1, silent_mode=True) == "success", stack.logs()
        assert ran_once(long.id) and ran_once(short.id)
        # One machine did it all: none was lost and replaced on the way.
        [machine] = MachineGroup.objects.get(name=mg.name).machines.all()
        assert first_token_taken_once(stack, machine.name)


class TestRedis:
    @pytest.fixture
    def stack_env(self):
        return {"CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 2})}

    def test_a_simulation_longer_than_the_visibility_timeout_runs_once_holding_no_message(
        self, stack, client_for, alice_key
    ):
        client_for(alice_key)
        # Two machines: a message handed out again would find the idle one.
        mg = simdeck.resources.MachineGroup("n2-standard-2", num_machines=2).start()
        queue = MachineGroup.objects.get(name=mg.name).queue_name
        task = simdeck.simulators.Commands().run(input_dir=INPUT, commands=["sleep 12", "echo once"], on=mg)
        wait_for(
            lambda: Task.objects.get(pk=task.id).status == Status.STARTED, 90, message="the task to start"
        )

        broker = redis.Redis.from_url(settings.REDIS_URL)
        held = [
            json.loads(entry)[2]
            for entry in broker.hvals("unacked")  # kombu's deliveries not yet acknowledged
        ]
        assert queue not in held

        assert task.wait(polling_period=0.5, silent_mode=True) == "success"
        assert ran_once(task.id)
        assert first_token_taken_once(stack, Task.objects.get(pk=task.id).machine.name)
