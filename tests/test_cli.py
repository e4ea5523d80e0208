"""The ``simdeck`` command, run as a subprocess against a real server and real machines.

What a command prints is its product, so the tables and summaries are
compared whole, with what changes between runs (ids, times, sizes)
replaced by placeholders.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

import simdeck
from tasks_app.models import MachineGroup, Quota, Task
from tests.client_fixtures import (
    EXAMPLES,
    SIMDECK,
    UNTIL_STOPPED,
    normalize,
    run_cli,
    stop,
    wait_until_printed,
)
from tests.helpers import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
User = get_user_model()


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a failed command printed: exactly one line, no traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_a_session_at_the_command_line(stack, client_for, alice_key, bob, logged_in, tmp_path):
    client_for(alice_key)  # the Python client submits; the CLI does the rest
    home = tmp_path / "cli"
    home.mkdir()
    env = {
        "SIMDECK_CONFIG": str(home / "config.json"),
        "SIMDECK_URL": "",
        "SIMDECK_API_URL": "",
        "SIMDECK_API_KEY": "",
    }

    def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
        result = run_cli(*args, env=env, **kwargs)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    # Logging in checks the key and stores it with the address.
    login = cli("auth", "login", "--url", stack.url, input=alice_key + "\n")
    assert login.returncode == 0, login.stderr
    assert login.stderr == f"Logged in to {stack.url} as alice; saved in {home / 'config.json'}.\n"
    assert oct((home / "config.json").stat().st_mode & 0o777) == "0o600"
    assert cli("auth", "whoami").stdout == f"alice at {stack.url}\n"

    # Machine groups.
    assert cli("resources", "start", "n2-standard-2", "--name", "bench").stdout == "bench\n"
    assert normalize(cli("resources", "list").stdout) == "\n".join(
        [
            "Name  Machine type  Online  Spot  Disk  Queue  State  Project  Created",
            "──",
            "bench  n2-standard-2  1 of 1  no  <size>  0  started  alice-default  <time>",
        ]
    )
    types, simulators = cli("resources", "available").stdout.split("\n\n")
    assert types == (
        "Machine type     vCPUs   Memory\n"
        "───────────────────────────────\n"
        "c2-standard-16      16    64 GB\n"
        "c2-standard-4        4    16 GB\n"
        "c2-standard-8        8    32 GB\n"
        "e2-micro             1     1 GB\n"
        "n2-highmem-4         4    32 GB\n"
        "n2-standard-2        2     8 GB"
    )
    # What the machine found installed: Commands everywhere (first by name), the rest as this host has them.
    assert normalize(simulators).splitlines()[:3] == [
        "Machine group  Simulator  Versions",
        "──",
        "bench  Commands  1",
    ]
    # Quotas, and who one is: the same facts from Python and from the command line.
    Quota.objects.create(user=User.objects.get(username="alice"), max_machines=3)
    mine = simdeck.users.get_quotas()["max_machines"]
    assert (mine.max_allowed, mine.in_use, mine.unit, mine.scope) == (3, 1, "machines", "global")
    me = simdeck.users.get_info()
    assert [(p.name, p.role) for p in me.projects] == [("alice-default", "maintainer")]
    assert me.projects[0].quotas["max_task_ttl_seconds"].max_allowed is None
    quota_table = [
        "Whose  Limit  In use  Allowed",
        "──",
        "You  Machines running at once  1  3 machines",
        "  Time to live of a machine group  each group  no limit",
        "  Time to live of a task  each task  no limit",
        "  Stored files  <size>  no limit",
        "",
        "alice-default (maintainer)  Machines running at once  1  no limit",
        "  Time to live of a machine group  each group  no limit",
        "  Time to live of a task  each task  no limit",
        "  Stored files  <size>  no limit",
    ]
    assert normalize(cli("quotas", "list").stdout).splitlines() == quota_table
    who = normalize(cli("user", "info").stdout).splitlines()
    assert who[:4] == [
        "alice",
        "Username  alice",
        f"Server  {stack.url}",
        "Projects  alice-default (maintainer)",
    ]
    assert who[4].startswith("This month (") and ": 0 tasks, 0.000 core-hours" in who[4]
    assert who[6:] == quota_table
    assert json.loads(cli("user", "info", "--json").stdout)["quotas"]["max_machines"]["in_use"] == 1

    info = normalize(cli("resources", "info", "bench").stdout)
    assert "Machine type  n2-standard-2 (2 vCPUs, <size>)" in info
    assert "Limits  stops after <duration> idle" in info
    assert "Machine  State  Host  Last heartbeat" in info

    # Two tasks on one machine: one runs, one waits.
    sim = simdeck.simulators.Commands()
    inputs = EXAMPLES / "commands-mesh-solve"
    running = sim.run(
        inputs, on="bench", commands=["python make_mesh.py", UNTIL_STOPPED], metadata={"case": "a"}
    )
    queued = sim.run(inputs, on="bench", commands=["echo never"])
    wait_until_printed(stack, running.id, steps=3)

    assert normalize(cli("tasks", "list").stdout, running=running.id, queued=queued.id) == "\n".join(
        [
            "ID  Simulator  Status  Machine group  Project  Created  Duration",
            "──",
            "<queued>  commands  In Queue  bench  alice-default  <time>  <duration>",
            "<running>  commands  In Progress  bench  alice-default  <time>  <duration>",
        ]
    )
    assert normalize(cli("tasks", "info", queued.id).stdout, queued=queued.id) == "\n".join(
        [
            "Task <queued>",
            "Status  In Queue",
            "  The task is in its machine group's queue, waiting for a free machine.",
            "  What to do: Wait, or kill the task if you no longer need it. A group with more machines "
            "empties its queue sooner.",
            "Queue  0 tasks ahead",
            "Simulator  commands",
            "Machine group  bench (n2-standard-2)",
            "Project  alice-default, owner alice",
            "",
            "Status  Since  Duration",
            "──",
            "Waiting for Input  <time>  <duration>",
            "In Queue  <time>  <duration> (ongoing)",
            "",
            "Time  <duration> so far: waiting for input <duration>, in queue <duration>",
            "Outputs  stored when the task finishes",
        ]
    )
    listed = json.loads(cli("tasks", "list", "--json", "-s", "in-queue").stdout)
    assert [t["id"] for t in listed] == [queued.id]
    only = cli("tasks", "list", "-i", running.id, "-p", "alice-default").stdout
    assert running.id in only and queued.id not in only
    # Several values after one option, as Inductiva's command line takes them.
    both_ids = json.loads(
        cli("tasks", "list", "-i", running.id, queued.id, "-p", "alice-default", "--json").stdout
    )
    assert [t["id"] for t in both_ids] == [running.id, queued.id]
    by_status = json.loads(cli("tasks", "list", "-s", "in-queue", "started", "--json").stdout)
    assert [t["id"] for t in by_status] == [queued.id, running.id]

    # Logs: a task that has not started has none yet, unless waited for; tasks by their rank.
    not_yet = cli("logs", queued.id)
    assert not_yet.returncode == 6
    assert one_line_error(not_yet) == (
        f"Error: Task {queued.id} is In Queue: its logs begin when it starts. "
        f"Add --wait to wait for that: simdeck logs {queued.id} --wait"
    )
    assert cli("logs", "STARTED", "--stdout", "--attempt", "1").returncode == 3  # not stored while it runs
    waiter = subprocess.Popen(
        [*SIMDECK, "logs", "submitted", "--wait", "--stdout"],  # the newest task: the queued one
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    # Inside the machine while it runs.
    files = normalize(cli("tasks", "list-files", running.id).stdout)
    assert files.splitlines()[:3] == ["File  Size  Modified", "──", "stdout.txt  <size>  <time>"]
    assert "mesh.csv  <size>  <time>" in files and files.endswith("7 files, <size>")
    tail = cli("tasks", "tail", running.id, "mesh.csv", "stdout.txt", "-l", "2").stdout.splitlines()
    assert tail[:3] == ["==> mesh.csv <==", "39,40,0.975000,1.000000", "40,40,1.000000,1.000000"]
    assert tail[3] == "==> stdout.txt <==" and tail[4].startswith("step ") and len(tail) == 6
    top = normalize(cli("tasks", "top", running.id).stdout)
    # The machine's share of the host, as its type sizes it, and what the task takes of it.
    assert re.match(
        r"Machine bench-\w+ \(n2-standard-2\): 2 vCPUs, <size> memory\nTask: \d+% CPU of 200%, ", top
    )
    assert "PID  CPU %  Memory  Threads  State  Running  Command" in top
    assert "sh -c i=0; while [ ! -f stop ]" in top
    last = normalize(cli("tasks", "last-modified-file", running.id).stdout)
    assert last in {
        f"{name}  (<size>, modified <duration> ago, at <time>)"
        for name in ("stdout.txt", "stderr.txt", "progress.txt")
    }
    top_json = json.loads(cli("tasks", "top", running.id, "--json").stdout)
    assert (
        top_json["machine"]["vcpus"] == 2 and top_json["machine"]["memory_gb"] == 8 and top_json["processes"]
    )
    # The console asks the machine too: the task page shows the file written last, asked again while it runs.
    files_card = logged_in.get(f"/tasks/{running.id}/files", headers={"HX-Request": "true"}).content.decode()
    assert f'hx-get="/tasks/{running.id}/files/latest" hx-trigger="load"' in files_card
    latest = logged_in.get(f"/tasks/{running.id}/files/latest").content.decode()
    assert 'hx-trigger="every 5s"' in latest
    written = re.search(r'Written last: <span class="mono">([^<]+)</span>', latest).group(1)
    assert written in {"stdout.txt", "stderr.txt", "progress.txt"}
    assert '<pre class="log" aria-label="The last lines of' in latest
    assert bob_console(bob).get(f"/tasks/{running.id}/files/latest").status_code == 404

    # Metadata.
    assert cli("tasks", "metadata", "set", running.id, "speed=10", "note=a b").returncode == 0
    assert cli("tasks", "metadata", "unset", running.id, "case").returncode == 0
    assert cli("tasks", "metadata", "get", running.id).stdout == "note = a b\nspeed = 10\n"
    assert json.loads(cli("tasks", "metadata", "get", running.id, "--json").stdout) == {
        "note": "a b",
        "speed": "10",
    }
    bad = cli("tasks", "metadata", "set", running.id, "speed")
    assert bad.returncode == 2
    assert one_line_error(bad) == "Error: Write metadata as KEY=VALUE, not 'speed'."

    # Following the logs live, until the task ends by itself.
    follower = subprocess.Popen(
        [*SIMDECK, "logs", running.id, "--stdout"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail_follower = subprocess.Popen(
        [*SIMDECK, "tasks", "tail", running.id, "stderr.txt", "-f", "-l", "1"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The tail follows only while the task runs: let it print before the task ends.
    first_tailed = tail_follower.stdout.readline()
    stop(stack, running.id)
    logged, logged_err = follower.communicate(timeout=60)
    assert follower.returncode == 0, logged_err
    lines = logged.splitlines()
    assert lines[0] == "wrote mesh.csv: 41 x 41 = 1681 nodes on the unit square"
    assert lines[1:-1] == [f"step {i}" for i in range(1, len(lines) - 1)]  # every line, once, in order
    assert lines[-1] == "finished"
    tailed, tailed_err = tail_follower.communicate(timeout=60)
    warnings = (first_tailed + tailed).splitlines()
    assert warnings == [f"warning {i}" for i in range(int(warnings[0].split()[1]), len(lines) - 1)]
    assert tailed_err == f"Task {running.id} is no longer running.\n"
    both = cli("logs", running.id).stdout
    assert both.count("step 1\n") == 1 and both.count("warning 1\n") == 1
    waited, waited_err = waiter.communicate(timeout=60)
    assert (waited, waiter.returncode) == ("never\n", 0), waited_err
    assert waited_err == f"Task {queued.id} is In Queue; its logs appear once it starts.\n"
    assert cli("logs", "SUBMITTED-1", "--stdout", "--attempt", "1").stdout == logged
    no_second = cli("logs", running.id, "--attempt", "2")
    assert no_second.returncode == 3
    assert one_line_error(no_second) == f"Error: Task {running.id} has had 1 attempt; there is no attempt 2."
    none_running = cli("logs", "STARTED")
    assert none_running.returncode == 3
    assert one_line_error(none_running) == (
        "Error: STARTED names your task number 1 among those running; you have none."
    )

    # The queued task runs now; kill it once it has, after confirmation.
    wait_for(lambda: Task.objects.get(pk=queued.id).status == "success", 60, message="the queued task")
    assert json.loads(cli("tasks", "info", running.id, "--json").stdout)["status"] == "success"
    unconfirmed = cli("tasks", "kill", queued.id)
    assert unconfirmed.returncode == 2
    assert one_line_error(unconfirmed).endswith("Add -y to confirm when not on a terminal.")
    ended = cli("tasks", "kill", queued.id, running.id, "-y")
    assert ended.returncode == 0
    assert ended.stderr == "".join(
        f"Task {t.id} already ended (Success); nothing to kill.\n" for t in (queued, running)
    )

    # Downloads.
    got = cli("tasks", "download", running.id, "--filenames", "result.txt", "mesh.csv", "--dir", "picked")
    assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in Path("picked").iterdir()) == ["mesh.csv", "result.txt"]
    got = cli("tasks", "download", running.id, "-i", "--filenames", "solve.py", "--dir", "in-picked")
    assert got.returncode == 0, got.stderr
    assert sorted(p.name for p in Path("in-picked").iterdir()) == ["solve.py"]
    assert cli("tasks", "download", running.id, queued.id).returncode == 0
    assert (Path("simdeck_output") / running.id / "outputs" / "mesh.csv").exists()
    assert (Path("simdeck_output") / queued.id / "outputs" / "stdout.txt").read_text() == "never\n"
    assert cli("tasks", "download", running.id, "--input").returncode == 0
    assert (Path("simdeck_output") / running.id / "inputs" / "solve.py").exists()
    assert cli("projects", "download", "alice-default", "--dir", "mine").returncode == 0
    assert (Path("mine") / queued.id / "stdout.txt").exists()
    assert normalize(cli("projects", "list").stdout) == "\n".join(
        [
            "Project  Tasks  Not ended  Succeeded  Failed",
            "──",
            "alice-default  2  0  2  0",
        ]
    )
    assert "commands  Commands  1" in normalize(cli("simulators", "list").stdout)

    # Errors: one line each, with an exit code that tells them apart.
    unknown = cli("tasks", "info", "z" * 25)
    assert unknown.returncode == 3
    assert one_line_error(unknown) == (
        f"Error: No task with id {'z' * 25!r}, or it is not yours to see ('simdeck tasks list' shows yours)."
    )
    malformed = cli("tasks", "info", "nope")
    assert malformed.returncode == 3 and "is not a task id" in one_line_error(malformed)
    gone = cli("tasks", "list-files", running.id)
    assert gone.returncode == 6
    left = logged_in.get(f"/tasks/{running.id}/files/latest").content.decode()
    assert "has left its machine" in left and "hx-trigger" not in left
    assert one_line_error(gone) == (
        f"Error: Task {running.id} is not running (it is Success), so there is nothing to look at on a "
        f"machine. Its files are in its outputs: simdeck tasks download {running.id}"
    )
    missing_file = cli("tasks", "download", running.id, "--filenames", "nope.txt")
    assert missing_file.returncode == 3 and "no output file 'nope.txt'" in one_line_error(missing_file)
    nowhere = cli("resources", "info", "nowhere")
    assert nowhere.returncode == 3
    assert one_line_error(nowhere) == (
        "Error: No machine group named 'nowhere', or it is not yours to see "
        "('simdeck resources list' shows yours)."
    )
    no_project = cli("projects", "download", "elsewhere")
    assert no_project.returncode == 3 and "No project named 'elsewhere'" in one_line_error(no_project)
    wrong_key = run_cli("tasks", "list", env={**env, "SIMDECK_API_KEY": "sdk_wrong"})
    assert wrong_key.returncode == 4 and "Missing or invalid API key" in one_line_error(wrong_key)
    bobs = run_cli("tasks", "info", running.id, env={**env, "SIMDECK_API_KEY": bob_key(bob)})
    assert bobs.returncode == 3  # someone else's task does not exist for bob
    usage = cli("tasks", "list", "--bogus")
    assert usage.returncode == 2 and "No such option: --bogus" in usage.stderr

    # Terminating, and logging out.
    refused = cli("resources", "terminate", "bench")
    assert refused.returncode == 2
    assert cli("resources", "terminate", "bench", "-y").stderr == "Machine group bench is terminating.\n"
    wait_for(lambda: MachineGroup.objects.get(name="bench").state == "terminated", 40, message="bench to end")
    assert cli("resources", "list").stdout.startswith("No machine groups.")
    assert "bench" in cli("resources", "list", "--all").stdout
    assert cli("auth", "logout").stderr == f"Removed the API key from {home / 'config.json'}.\n"
    after = cli("tasks", "list")
    assert after.returncode == 4


def bob_key(bob) -> str:
    from tasks_app.models import APIKey

    return APIKey.issue(bob, "cli")[1]


def bob_console(bob):
    console = Client()
    console.force_login(bob)
    return console


def test_killing_from_the_command_line_waits_for_the_machine(stack, client_for, alice_key, tmp_path):
    client_for(alice_key)
    env = {"SIMDECK_URL": stack.url, "SIMDECK_API_KEY": alice_key, "SIMDECK_CONFIG": str(tmp_path / "c.json")}
    mg = simdeck.resources.MachineGroup("n2-standard-2").start()
    sim = simdeck.simulators.Commands()
    inputs = EXAMPLES / "commands-mesh-solve"
    busy = sim.run(inputs, on=mg, commands=["sleep 60"])
    waiting = [sim.run(inputs, on=mg, commands=["sleep 60"]) for _ in range(2)]
    busy.wait_for_status("started", polling_period=0.2, timeout=60)

    killed = run_cli("tasks", "kill", busy.id, "-y", "-w", "30", env=env)
    assert killed.returncode == 0, killed.stderr
    assert killed.stderr == f"Task {busy.id} is being stopped by its machine.\nKilled.\n"
    assert busy.status == "killed"

    # The machine took the next task meanwhile: one is stopped there, the other never runs.
    everything = run_cli("tasks", "kill", "--all", "-y", env=env)
    assert everything.returncode == 0
    said = everything.stderr.splitlines()
    assert len(said) == 2
    for task in waiting:
        assert f"Task {task.id} was killed before it ran." in said or (
            f"Task {task.id} is being stopped by its machine." in said
        )
    wait_for(lambda: all(t.status == "killed" for t in waiting), 30, message="every task to be killed")
    nothing = run_cli("tasks", "kill", "--all", "-y", env=env)
    assert nothing.stderr == "You have no task to kill.\n"
    both = run_cli("tasks", "kill", busy.id, "--all", env=env)
    assert both.returncode == 2 and "not both" in one_line_error(both)


def test_a_dead_server_is_one_line_and_exit_code_5(tmp_path):
    env = {
        "SIMDECK_URL": "http://127.0.0.1:9",
        "SIMDECK_API_KEY": "sdk_x",
        "SIMDECK_CONFIG": str(tmp_path / "c.json"),
    }
    for args in (["tasks", "list"], ["tasks", "info", "a" * 25], ["logs", "a" * 25], ["resources", "list"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 5, args
        assert one_line_error(result) == (
            "Error: Cannot reach the Simdeck server at http://127.0.0.1:9 (ConnectError). "
            "Is it running? Start it with 'make run', or set SIMDECK_URL."
        )
    login = run_cli("auth", "login", "--url", "http://127.0.0.1:9", "--api-key", "sdk_x", env=env)
    assert login.returncode == 5
    assert not (tmp_path / "c.json").exists()
    no_ids = run_cli("tasks", "download", env=env)
    assert no_ids.returncode == 2 and "Name at least one task" in one_line_error(no_ids)
    assert run_cli("--help", env=env).returncode == 0


def test_the_version_needs_no_server(tmp_path):
    import simdeck

    result = run_cli(
        "--version", env={"SIMDECK_URL": "http://127.0.0.1:9", "SIMDECK_CONFIG": str(tmp_path / "c")}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"simdeck {simdeck.__version__}\n"
