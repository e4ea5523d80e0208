"""The first process of a machine's lasting sandbox: it starts the task's commands, one at a time.

This file runs inside the sandbox (``python -I -S -c <this text>``), as
PID 1 of its PID namespace, with nothing of Simdeck importable: the
standard library only. It talks to its machine over one Unix socket
(descriptor ``SIMDECK_INIT_FD``), in datagrams of JSON, the descriptors a
message carries passed alongside:

* ``run`` (with the command's stdout and stderr): start ``argv`` in
  ``cwd`` with exactly ``env``, as ``uid``/``gid`` when given. Answered
  ``started`` with a pidfd of the command, by which the machine learns its pid and sees it end; then, once
  it has ended and everything else it started has been killed,
  ``exited`` with its code (128 + the signal's number when a signal ended
  it, as a shell says).
* ``signal``: send ``sig`` to every process of the sandbox but this one.
* ``reset``: leave nothing of the last task behind (processes, System V
  IPC objects, files in ``/dev/shm``); answered ``clean``, saying whether
  this process is still as it started (``intact``): where simulations run
  as its own user they may lower its resource limits or its priority, which
  the next task would inherit, and the machine then makes a new sandbox.

When the machine's end of the socket closes, everything ends.

The resource limits every command starts with (``SIMDECK_INIT_RLIMITS``,
JSON) are this process's own from its start: a command inherits them, so
it is started by :class:`subprocess.Popen` (a fork and exec done in C)
rather than by Python code run in a forked copy of this process, which
cost more than the command itself did for a short one.

The simulations run as another user (under a root machine) or cannot
trace this process (it is not dumpable), and a PID namespace's first
process only receives the signals it handles, from inside: a task cannot
stop it, read its memory, or use its socket, which no command inherits.
"""

import ctypes
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys

PR_SET_DUMPABLE, PR_CAPBSET_DROP = 4, 24
IPC_RMID = 0
LIMITS = {"fsize": resource.RLIMIT_FSIZE, "nproc": resource.RLIMIT_NPROC, "as": resource.RLIMIT_AS}

libc = ctypes.CDLL(None, use_errno=True)


def harden() -> None:
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if os.geteuid() == 0:
        # No program started from here may ever gain a capability back.
        cap = 0
        while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            cap += 1


def apply_limits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(LIMITS[name], (value, value))


def start(request: dict, out: int, err: int) -> int:
    """Start the command; its pid."""
    ids = {}
    if request.get("uid") is not None:
        ids = {"user": request["uid"], "group": request["gid"], "extra_groups": []}
    try:
        command = subprocess.Popen(
            request["argv"],
            cwd=request["cwd"],
            env=request["env"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            **ids,
        )
    except OSError:
        # It cannot start (no such program, a folder gone): the slow way says why in its
        # stderr and ends 127, as a shell does.
        return start_by_hand(request, out, err)
    # This process reaps its children itself (reap, end_all). With no return code, Popen
    # would wait for this one the next time a command starts, and could take its exit.
    command.returncode = 0
    return command.pid


def start_by_hand(request: dict, out: int, err: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(request["cwd"])
        if request.get("uid") is not None:
            os.setgroups([])
            os.setresgid(request["gid"], request["gid"], request["gid"])
            os.setresuid(request["uid"], request["uid"], request["uid"])
        signal.set_wakeup_fd(-1)
        # Python ignores these two for itself; a simulation gets them as any program does.
        for number in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(number, signal.SIG_DFL)
        os.execvpe(request["argv"][0], request["argv"], request["env"])
    except BaseException as exc:
        os.write(2, f"simdeck: cannot run {request['argv'][0]!r}: {exc}\n".encode())
    os._exit(127)


def kill_all(sig: int) -> None:
    try:
        os.kill(-1, sig)  # every process of the namespace but this one
    except ProcessLookupError:
        pass


def reap() -> list[tuple[int, int]]:
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def end_all() -> None:
    """Kill every process but this one, until none is left (a fork may race a kill)."""
    while True:
        kill_all(signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def code_of(status: int) -> int:
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def clean() -> None:
    end_all()
    # System V IPC objects outlive their processes; this process may remove them (the
    # programs it starts may not: they keep no capability).
    for kind, remove in (("shm", libc.shmctl), ("msg", libc.msgctl), ("sem", libc.semctl)):
        with open(f"/proc/sysvipc/{kind}") as table:
            for line in table.readlines()[1:]:
                remove(int(line.split()[1]), IPC_RMID, None)
    for root, dirs, files in os.walk("/dev/shm", topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))


def own_state() -> tuple:
    """What a program of the same user could change in this process, and its children inherit."""
    limits = [resource.getrlimit(getattr(resource, n)) for n in dir(resource) if n.startswith("RLIMIT_")]
    return limits, os.getpriority(os.PRIO_PROCESS, 0)


def main() -> None:
    harden()
    apply_limits(json.loads(os.environ.pop("SIMDECK_INIT_RLIMITS", "{}")))
    started_as = own_state()
    sock = socket.socket(fileno=int(os.environ.pop("SIMDECK_INIT_FD")))
    sock.set_inheritable(False)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    sock.send(json.dumps({"op": "ready"}).encode())
    running = None
    while True:
        readable = select.select([sock, wake_r], [], [])[0]
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            for pid, status in reap():
                if pid == running:
                    end_all()  # what the command left running ends with it
                    running = None
                    sock.send(json.dumps({"op": "exited", "code": code_of(status)}).encode())
        if sock not in readable:
            continue
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 2, socket.MSG_CMSG_CLOEXEC)
        if not data:
            end_all()
            sys.exit(0)
        request = json.loads(data)
        op = request["op"]
        if op == "run":
            out, err = fds
            try:
                running = start(request, out, err)
            except OSError as exc:  # no fork: the machine is told, and this process goes on
                sock.send(json.dumps({"op": "refused", "error": str(exc)}).encode())
                continue
            finally:
                os.close(out)
                os.close(err)
            pidfd = os.pidfd_open(running)
            socket.send_fds(sock, [json.dumps({"op": "started"}).encode()], [pidfd])
            os.close(pidfd)
        elif op == "signal":
            kill_all(request["sig"])
        elif op == "reset":
            clean()
            running = None
            intact = own_state() == started_as
            sock.send(json.dumps({"op": "clean", "intact": intact}).encode())


main()
