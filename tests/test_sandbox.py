"""Hostile simulations: each tries to reach what is not its own, through the API, on a real machine.

Every test submits a real task whose commands attack the platform, then
checks from the host that the attempt got nothing and that the platform
is unharmed. A task prints what it managed to do; the checks read its
stored logs and the host itself, never the task's own word alone.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import psutil
import pytest
from django.conf import settings

import simdeck
from tasks_app import sandbox
from tasks_app.lifecycle import Status
from tasks_app.models import Machine, MachineGroup, Task
from tests.helpers import ROOT, processes_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

INPUT = ROOT / "examples" / "commands-mesh-solve"


@pytest.fixture
def mg(client_for, alice_key, stack):
    client_for(alice_key)
    group = simdeck.resources.MachineGroup("n2-standard-2").start()
    wait_for(
        lambda: Machine.objects.filter(group__name=group.name, state=Machine.State.ONLINE).exists(),
        60,
        message="a machine online",
    )
    return group


def run(mg, *commands: str, expect: str = "success") -> tuple[simdeck.tasks.Task, str]:
    """Run the commands as a task; its final status must be ``expect``. Returns the task and its stdout."""
    task = simdeck.simulators.Commands().run(input_dir=INPUT, commands=list(commands), on=mg)
    status = task.wait(polling_period=0.2, silent_mode=True)
    assert status == expect, (status, task.get_info()["error_detail"])
    return task, stdout_of(task)


def stdout_of(task) -> str:
    from simdeck import api

    return api.client().request("GET", f"/tasks/{task.id}/logs/stdout").text


def stack_processes(stack) -> list[int]:
    return [p.pid for p in stack.procs] + list(
        Machine.objects.filter(state=Machine.State.ONLINE).values_list("pid", flat=True)
    )


def test_the_platform_s_secrets_and_files_are_out_of_reach(stack, mg):
    secret_key = stack.home / "secret_key"
    secret_key.write_text("not-for-simulations")
    password = stack.home / "admin-password.txt"
    password.write_text("hunter2-admin")
    _, out = run(
        mg,
        f"cat {secret_key} {password} || true",
        f"ls {stack.home} {settings.BASE_DIR} {Path.home()} || true",
        f"cat {settings.BASE_DIR}/manage.py || true",
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | sort -u; echo ENV; env | cut -d= -f1 | sort",
    )
    assert "not-for-simulations" not in out
    assert "hunter2-admin" not in out
    assert "DJANGO_SETTINGS_MODULE" not in out
    assert "DATABASE_URL" not in out and "SECRET_KEY" not in out and "REDIS_URL" not in out
    names = set(out.split("ENV\n", 1)[1].split())
    allowed = {"PATH", "HOME", "TMPDIR", "LANG", "USER", "PWD", "SHLVL"}
    allowed |= {"SIMDECK_TASK_ID", "SIMDECK_TASK_ATTEMPT"}
    assert names <= allowed | set(sandbox.THREAD_VARIABLES), names


def test_another_project_s_inputs_and_outputs_cannot_be_found(stack, mg, client_for, alice_key):
    marker = f"bob-secret-{secrets.token_hex(6)}"
    theirs, _ = run(mg, f"echo {marker} > result.txt")
    _, out = run(
        mg,
        f"find / -path /proc -prune -o -print 2>/dev/null | grep -c {theirs.id} || true",
        # Contents too, but not of the system's own files nor of endless devices; its own
        # /tmp holds a control, which the search must find.
        f"echo control-{marker[4:]} > /tmp/control.txt; grep -rl --devices=skip"
        + "".join(f" --exclude-dir={d}" for d in ("proc", "sys", "dev", "usr", ".venv", ".pyenv"))
        + f" -e {marker} -e control-{marker[4:]} / 2>/dev/null | head -3 || true",
        "find / -name '*.zip' 2>/dev/null | head -3",
    )
    lines = out.split()
    assert lines[0] == "0", out
    assert "/tmp/control.txt" in out
    assert marker not in out
    assert theirs.id not in out


def test_no_service_of_the_platform_can_be_reached(stack, mg):
    from urllib.parse import urlsplit

    ports = {urlsplit(stack.url).port, 5432, 6379, 5672}
    redis = urlsplit(settings.REDIS_URL)
    ports.add(redis.port or 6379)
    probe = (
        "import socket\n"
        f"for port in {sorted(ports)}:\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=2).close(); print('OPEN', port)\n"
        "    except OSError as exc: print('closed', port, exc)\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2); print('OPEN outside')\n"
        "except OSError as exc: print('closed outside', exc)\n"
    )
    _, out = run(mg, f'python -c "{probe}"')
    assert "OPEN" not in out, out
    assert out.count("closed") == len(ports) + 1


def test_an_admin_s_network_allowance_applies_from_the_next_task(stack, mg):
    """A machine's lasting sandbox is made with or without the network: when an admin allows
    it for the group, or forbids it again, the machine's next task runs as the group now says."""
    import socket

    with socket.socket() as host_side:  # a service of the host, outside every sandbox
        host_side.bind(("127.0.0.1", 0))
        host_side.listen(8)
        port = host_side.getsockname()[1]
        probe = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close(); print('reached')\n"
            "except OSError as exc: print('unreachable', exc)\n"
        )
        seen = []
        try:
            for allowed in (False, True, False):
                MachineGroup.objects.filter(name=mg.name).update(allow_network=allowed)
                task, out = run(mg, f'python -c "{probe}"')
                seen.append((allowed, out.split()[0], Task.objects.get(pk=task.id).machine_id))
        finally:
            MachineGroup.objects.filter(name=mg.name).update(allow_network=False)
    assert [(allowed, word) for allowed, word, _ in seen] == [
        (False, "unreachable"),
        (True, "reached"),
        (False, "unreachable"),
    ], seen
    assert len({machine for *_, machine in seen}) == 1, "one machine ran all three"


def test_no_keyring_to_leave_things_in_and_no_namespace_to_be_root_in(stack, mg):
    """Keyrings belong to a user, not a namespace: every sandbox runs as the same user.

    A user namespace of its own would make the simulation root there, with much
    more of the kernel in reach.
    """
    marker = f"left-for-later-{secrets.token_hex(6)}"
    x86 = os.uname().machine == "x86_64"
    add_key, request_key, keyctl = (248, 249, 250) if x86 else (217, 218, 219)
    put = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"got = libc.syscall({add_key}, b'user', b'simdeck-probe', b'{marker}', {len(marker)},"
        " ctypes.c_int(-4))\n"
        "print('add_key', got, ctypes.get_errno())\n"
    )
    get = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"key = libc.syscall({request_key}, b'user', b'simdeck-probe', None, 0)\n"
        "print('request_key', key, ctypes.get_errno())\n"
        "buf = ctypes.create_string_buffer(200)\n"
        f"n = libc.syscall({keyctl}, 11, key, buf, 200) if key > 0 else -1\n"
        "print('read', buf.raw[: max(n, 0)])\n"
    )
    _, first = run(mg, f'python -c "{put}"')
    _, later = run(mg, f'python -c "{get}"', "unshare -Ur id 2>&1 || echo no-namespace")
    assert first.split() == ["add_key", "-1", "1"], first  # refused: EPERM
    assert later.split()[:3] == ["request_key", "-1", "1"], later
    assert marker not in later
    assert "no-namespace" in later and "uid=0" not in later, later


def test_writes_outside_its_folder_land_nowhere_on_the_host(stack, mg):
    name = f"hostile-{secrets.token_hex(6)}"
    targets = [stack.home / name, Path("/etc") / name, Path("/tmp") / name, stack.home / "storage" / name]
    _, out = run(
        mg, "; ".join(f"(echo x > {t} && echo WROTE {t}) 2>&1" for t in targets) + "; echo ok > mine.txt"
    )
    for target in targets:
        assert not target.exists(), target
    # Its private /tmp took the write; the host's did not.
    assert f"WROTE /tmp/{name}" in out
    assert f"WROTE {stack.home}" not in out and "WROTE /etc" not in out


def test_background_processes_end_with_their_task(stack, mg):
    task, out = run(mg, "for i in $(seq 300); do sleep 600 & done; echo started")
    assert "started" in out
    assert processes_of(task.id) == []


def test_killing_every_process_it_sees_harms_nothing(stack, mg):
    before = stack_processes(stack)
    run(
        mg,
        "kill -9 -1; for p in /proc/[0-9]*; do kill -9 ${p#/proc/} 2>/dev/null; done; true",
        expect="failed",
    )
    for pid in before:
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, pid
    _, out = run(mg, "echo the next task runs")
    assert "the next task runs" in out


def test_its_processes_are_not_root_and_have_no_capabilities(stack, mg):
    task = simdeck.simulators.Commands().run(input_dir=INPUT, commands=["sleep 30 & sleep 30; true"], on=mg)
    wait_for(lambda: Task.objects.get(pk=task.id).status == Status.STARTED, 60, message="the task to start")

    def sleepers():
        found = []
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "sleep" and proc.environ().get("SIMDECK_TASK_ID") == task.id:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    found = wait_for(lambda: len(sleepers()) == 2 and sleepers(), 30, message="the task's processes")
    for proc in found:
        assert proc.uids().real != 0 and proc.uids().effective != 0
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
        assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0, caps
        assert "NoNewPrivs:\t1" in status
    task.kill(wait_timeout=30)
    assert wait_for(lambda: sleepers() == [], 20, message="the killed task's processes gone")


def test_a_memory_hog_ends_executor_failed_naming_the_limit(stack, mg, client_for, alice_key):
    stack.restart_provider(SIMDECK_MEMORY_GB_BYTES=str(64 * 2**20))  # 1 "GB" = 64 MiB
    small = simdeck.resources.MachineGroup("e2-micro").start()
    task, _ = run(
        small, "python -c 'big = bytearray(300 * 2**20); print(len(big))'", expect="executor-failed"
    )
    detail = task.get_info()["error_detail"]
    assert "memory" in detail and "machine type" in detail
    _, out = run(small, "echo still here")
    assert "still here" in out


def test_a_fork_bomb_ends_executor_failed_naming_the_limit(stack, mg):
    task, _ = run(mg, "bomb() { bomb | bomb & }; bomb; sleep 30", expect="executor-failed")
    detail = task.get_info()["error_detail"]
    assert "processes" in detail
    assert wait_for(lambda: processes_of(task.id) == [], 20, message="no process of the bomb left")
    _, out = run(mg, "echo next")
    assert "next" in out


def test_nothing_of_a_task_reaches_the_next_on_its_machine(stack, mg):
    """A machine's tasks run in turn in its lasting sandbox: what one leaves, the next never sees."""
    first, out = run(
        mg,
        "cat /proc/1/comm; echo secret > /tmp/left-behind; echo secret > left-in-task.txt; "
        "mkdir -p /tmp/locked/in && chmod 000 /tmp/locked; echo secret > /dev/shm/left-behind; "
        "ipcmk -M 4096 && ipcmk -Q && ipcmk -S 1; (setsid sleep 600 > /dev/null 2>&1 &); "
        # Limits and priority the next task's processes would inherit from the first process.
        "prlimit --pid 1 --fsize=0:0 --nofile=4:4 2>/dev/null; renice -n 19 -p 1 > /dev/null 2>&1; echo done",
    )
    assert "done" in out and "Shared memory id" in out
    second, seen = run(
        mg,
        "cat /proc/1/comm; ls -A /tmp /dev/shm; ipcs; ps -e -o comm=; echo; ls -A; echo end; "
        "echo x > written.txt && echo wrote; nice",
    )
    assert Task.objects.get(pk=first.id).machine_id == Task.objects.get(pk=second.id).machine_id
    # The same sandbox served both (its first process is Simdeck's, not bubblewrap).
    first_process = out.splitlines()[0]
    assert first_process.startswith("python") and seen.splitlines()[0] == first_process, (out, seen)
    assert "left" not in seen and "locked" not in seen, seen
    assert "0x" not in seen, f"an IPC object of the first task is left: {seen}"
    assert "sleep" not in seen, seen
    listing = seen.split("\n\n")[-1].split("end")[0].split()
    assert sorted(listing) == sorted(p.name for p in INPUT.iterdir()), seen
    assert seen.split()[-2:] == ["wrote", "0"], seen


def test_a_machine_whose_sandbox_was_killed_makes_another(stack, mg):
    """The machine's lasting sandbox dies under a running task: the task ends, the next one runs."""
    task = simdeck.simulators.Commands().run(input_dir=INPUT, commands=["sleep 60"], on=mg)
    wait_for(lambda: Task.objects.get(pk=task.id).status == Status.STARTED, 60, message="the task to start")
    found = wait_for(lambda: processes_of(task.id), 30, message="the task's process")
    bubblewrap = next(p for p in found[0].parents() if "--as-pid-1" in p.cmdline())
    bubblewrap.kill()
    assert task.wait(polling_period=0.2, silent_mode=True) == "executor-failed"
    assert "sandbox" in task.get_info()["error_detail"]
    _, out = run(mg, "echo the next task runs")
    assert "the next task runs" in out


def test_a_task_says_whether_it_ran_in_a_sandbox(stack, mg):
    task, _ = run(mg, "true")
    assert task.get_info()["sandboxed"] is True
    assert Task.objects.get(pk=task.id).sandboxed is True


def test_the_sandbox_is_checked_before_machines_start(settings, tmp_path):
    settings.SIMDECK_WORK_DIR = tmp_path
    sandbox.check.cache_clear()
    try:
        assert "bubblewrap" in sandbox.check()
        settings.SIMDECK_SANDBOX_BWRAP = str(tmp_path / "no-bwrap")
        sandbox.bwrap_path.cache_clear()
        sandbox.check.cache_clear()
        with pytest.raises(sandbox.SandboxUnavailable, match="SIMDECK_SANDBOX_BWRAP"):
            sandbox.check()
    finally:
        sandbox.bwrap_path.cache_clear()
        sandbox.check.cache_clear()


def test_machines_starting_together_each_make_their_check(settings, tmp_path):
    """Machines of a group start at once and each checks its sandbox before going online."""
    from concurrent.futures import ThreadPoolExecutor

    settings.SIMDECK_WORK_DIR = tmp_path
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: sandbox.check.__wrapped__(), range(12)))
    assert all("bubblewrap" in r for r in results), results
    assert list(tmp_path.iterdir()) == [], "each check removes its own folder"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes the sandbox account")
def test_the_sandbox_account_is_made_on_a_host_that_lacks_it(settings):
    """A new host has no sandbox account: the first machine makes it and finds it."""
    import subprocess

    name = f"sdk-test-{secrets.token_hex(3)}"
    settings.SIMDECK_SANDBOX_USER = name
    try:
        uid, gid = sandbox.sandbox_user()
        assert uid != 0 and uid == sandbox.sandbox_user()[0]
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the cgroup files are root's to write")
def test_cgroups_hold_a_machine_s_simulations(tmp_path):
    limits = sandbox.Limits(memory_bytes=64 << 20, vcpus=1, pids=16)
    groups = sandbox.Cgroups(f"test-{secrets.token_hex(3)}", limits)
    if not groups.dirs:
        pytest.skip("no writable cgroups on this host")
    try:
        import subprocess

        with groups.entered():
            proc = subprocess.Popen(["sh", "-c", "for i in $(seq 40); do sleep 2 & done; wait"])
        proc.wait()
        assert "pids" in groups.hit()
        assert groups.hit() == []
    finally:
        groups.close()


def test_machines_do_not_start_where_no_sandbox_can_be_made(transactional_db, tmp_path, alice, monkeypatch):
    from tasks_app import services
    from tasks_app.models import Activity
    from tasks_app.testing.stack import ProcessStack

    monkeypatch.setattr(settings, "SIMDECK_HOME", tmp_path)
    stack = ProcessStack(tmp_path / "home", env={"SIMDECK_SANDBOX_BWRAP": str(tmp_path / "no-bwrap")})
    monkeypatch.setattr(settings, "SIMDECK_QUEUE_PREFIX", stack.queue_prefix)
    stack.start()
    try:
        group = services.create_group(alice, machine_type="n2-standard-2", name="nosandbox", project="lab")
        services.start_group(group)
        refusal = wait_for(
            lambda: Activity.objects.filter(group=group, kind="machines-refused").first(),
            30,
            message="the group told why its machines cannot start",
        )
        assert "SIMDECK_SANDBOX_BWRAP" in refusal.message
        assert not Machine.objects.filter(group=group).exists()
        assert Activity.objects.filter(group=group, kind="machines-refused").count() == 1  # said once
    finally:
        stack.kill()


def test_without_a_sandbox_tasks_say_so_and_admins_see_a_banner(
    transactional_db, tmp_path, monkeypatch, client
):
    from django.contrib.auth import get_user_model

    from tasks_app.testing.stack import ProcessStack

    monkeypatch.setattr(settings, "SIMDECK_HOME", tmp_path)
    stack = ProcessStack(tmp_path / "home", env={"SIMDECK_SANDBOX": "off"})
    monkeypatch.setattr(settings, "SIMDECK_QUEUE_PREFIX", stack.queue_prefix)
    stack.start()
    try:
        admin = get_user_model().objects.create_superuser("root-admin", "", "pw-for-tests-42")
        member = get_user_model().objects.create_user("member", password="pw-for-tests-42")
        from tasks_app.models import APIKey

        monkeypatch.setenv("SIMDECK_API_URL", stack.url)
        monkeypatch.setenv("SIMDECK_API_KEY", APIKey.issue(admin, "tests")[1])
        monkeypatch.setenv("SIMDECK_CONFIG", str(tmp_path / "client.json"))
        from simdeck import api

        api.default_client.cache_clear()
        group = simdeck.resources.MachineGroup("n2-standard-2").start()
        task, out = run(group, "id -u")
        assert task.get_info()["sandboxed"] is False
        assert out.strip() == str(os.geteuid())  # the machine's own user: what the banner warns of
        monkeypatch.setattr(settings, "SIMDECK_SANDBOX", False)
        client.force_login(admin)
        page = client.get(f"/tasks/{task.id}/").content.decode()
        assert 'id="sandbox-off"' in page and "ran without a sandbox" in page
        client.force_login(member)
        assert 'id="sandbox-off"' not in client.get("/").content.decode()
    finally:
        api.default_client.cache_clear()
        stack.kill()


def small_box(base, read_only, **options) -> sandbox.Box:
    """A sandbox over fresh work and /tmp folders in ``base``, with small limits."""
    work, tmp = base / "work", base / "tmp"
    for folder in (work, tmp):
        folder.mkdir()
        sandbox.hand_over(folder)
    limits = sandbox.Limits(memory_bytes=None, vcpus=1, pids=64)
    return sandbox.Box(
        workdir=work,
        tmp=tmp,
        identity=sandbox.write_identity(base / "identity"),
        env=sandbox.environment(limits, {}),
        limits=limits,
        read_only=read_only,
        **options,
    )


def test_an_install_under_the_host_s_tmp_is_seen_inside(tmp_path, settings):
    """A checkout (and so its venv) under /tmp must not be hidden by the sandbox's own /tmp."""
    import subprocess

    install = tmp_path / "install"  # under the host's /tmp
    install.mkdir()
    (install / "hello.sh").write_text("echo hello from the install\n")
    box = small_box(tmp_path, [install])
    tmp_path.chmod(0o755)
    done = subprocess.run(
        box.argv(["sh", f"{install}/hello.sh"], {}), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the install\n"


def test_an_install_under_the_host_s_tmp_stays_in_a_lasting_sandbox_task_after_task(tmp_path, settings):
    """A checkout under /tmp is bound over the sandbox's /tmp, which is emptied between tasks."""
    settings.SIMDECK_WORK_DIR = tmp_path / "work"
    install = tmp_path / "install"
    (install / "bin").mkdir(parents=True)
    tool = install / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    for folder in (tmp_path, install, install / "bin"):
        folder.chmod(0o755)
    assert install.is_relative_to("/tmp"), "the test's folders must be under /tmp"
    limits = sandbox.Limits(memory_bytes=None, vcpus=1, pids=64)
    resident = sandbox.Resident(
        tmp_path / "box",
        identity=sandbox.write_identity(tmp_path / "identity"),
        limits=limits,
        read_only=[*sandbox.install_folders(), install],
        network=False,
        cgroups=None,
        loopback=sandbox.loopback(),
        env={"PATH": sandbox.PATH},
    )
    try:
        for turn in range(3):
            command = resident.run(
                ["sh", "-c", f"{tool} && echo left > /tmp/left-{turn} && ls /tmp"],
                sandbox.environment(limits, {}),
            )
            out = command.stdout.read().decode()
            assert command.wait() == 0, (out, command.stderr.read())
            command.close()
            assert "tool ran" in out and f"left-{turn - 1}" not in out, out
            resident.reset()
    finally:
        resident.close()


def test_a_lasting_sandbox_s_commands_start_with_its_limits_or_say_why_they_cannot(tmp_path):
    """Every command inherits the limits its sandbox's first process took at its start; a
    program that cannot start ends 127 with the reason in its stderr, as a shell says it."""
    limits = sandbox.Limits(memory_bytes=2 << 30, vcpus=1, pids=64)
    resident = sandbox.Resident(
        tmp_path / "box",
        identity=sandbox.write_identity(tmp_path / "identity"),
        limits=limits,
        read_only=sandbox.install_folders(),
        network=False,
        cgroups=None,
        loopback=sandbox.loopback(),
        env={"PATH": sandbox.PATH},
    )
    try:
        env = sandbox.environment(limits, {})
        for _ in range(2):  # the second in a sandbox already used
            command = resident.run(["sh", "-c", "ulimit -f; ulimit -v; cat /proc/self/status"], env)
            out = command.stdout.read().decode()
            assert command.wait() == 0, command.stderr.read()
            command.close()
            fsize, memory = out.splitlines()[:2]
            assert int(fsize) * 512 == limits.file_size_bytes, out
            assert int(memory) * 1024 == limits.memory_bytes, out  # no cgroup here holds it
            assert "CapEff:\t0000000000000000" in out, out
            resident.reset()
            missing = resident.run(["no-such-program", "--flag"], env)
            assert missing.wait() == 127
            assert b"cannot run 'no-such-program'" in missing.stderr.read()
            missing.close()
            resident.reset()
    finally:
        resident.close()


def test_a_machine_s_sandboxes_share_a_loopback_and_reach_nothing_else(tmp_path):
    """Each sandbox of a machine starts in its loopback-only network namespace: lo, up, and nothing more."""
    import socket
    import subprocess

    if sandbox.loopback() is None:
        pytest.skip("each sandbox makes its own network namespace here (not root)")
    box = small_box(tmp_path, sandbox.install_folders(), loopback=sandbox.loopback())
    assert "--unshare-net" not in box.argv(["true"], {})
    with socket.socket() as host_side:  # a service of the host, on its loopback
        host_side.bind(("127.0.0.1", 0))
        host_side.listen()
        port = host_side.getsockname()[1]
        probe = (
            "import socket\n"
            "print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
            "socket.create_connection(s.getsockname(), timeout=2).close(); print('own loopback ok')\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('host reached')\n"
            "except OSError:\n    print('host out of reach')\n"
        )
        for _ in range(2):  # the namespace serves one sandbox after another
            with box.spawning():
                argv = box.argv([sys.executable, "-c", probe], {})
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert out.decode().splitlines() == ["['lo']", "own loopback ok", "host out of reach"]
    # The spawning thread is back in the host's namespace.
    with socket.socket() as again:
        again.bind(("127.0.0.1", 0))
        again.listen()
        socket.create_connection(again.getsockname(), timeout=2).close()
