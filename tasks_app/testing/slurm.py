"""A real Slurm cluster of several nodes on this one host, for the tests and benchmarks.

It installs nothing: it runs the installed ``munged``, ``slurmctld`` and one
``slurmd`` per node, each node in a network namespace of its own behind a
bridge (a host of its own as far as Slurm can tell). Its configuration,
state and logs live in a folder of its own, on ports of its own, so it
leaves the host's Slurm (if any) alone; clients find it through
``SLURM_CONF``.

Jobs on the nodes reach the host only at the bridge's address, so the
database and Redis the tests use on loopback are relayed there
(tasks_app/testing/forward.py), and the pilots are told those addresses.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

# The bridge, veths and namespaces are named "sdt", a kind letter and the
# starting process' id in base 36 (15 characters at most in all), so clusters
# of runs side by side keep apart and one left by a killed run is known.
PREFIX = "sdt"
NODES = ("m1", "m2")
NODE_CPUS = 4
NODE_MEMORY_MB = 40000  # declared, not enforced (task/none): the machine types' memory fits


def why_not() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "starting slurmd nodes in network namespaces needs root"
    for name in ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scancel", "ip", "nsenter", "unshare"):
        if not shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{name} is not installed (Debian: apt-get install slurm-wlm munge)"
    if not Path("/etc/munge/munge.key").exists():
        return "munge has no key (/etc/munge/munge.key); create one with mungekey"
    return None


def _which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([_which(argv[0]), *argv[1:]], capture_output=True, text=True, check=check)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = digits[digit] + out
        if not number:
            return out


def _sweep_leftovers() -> None:
    """Remove the network of clusters whose process is gone (a run killed outright)."""
    names = _sh("ip", "-o", "link", "show", check=False).stdout.split("\n")
    links = [line.split(": ")[1].split("@")[0] for line in names if line.count(": ") >= 2]
    spaces = [line.split()[0] for line in _sh("ip", "netns", "list", check=False).stdout.splitlines() if line]
    for name in links + spaces:
        if not name.startswith(PREFIX) or len(name) < len(PREFIX) + 2:
            continue
        tag = name[len(PREFIX) + 1 :].split("-")[0]
        try:
            alive = psutil.pid_exists(int(tag, 36))
        except ValueError:
            continue
        if not alive:
            kind = "netns" if name in spaces else "link"
            _sh("ip", kind, "del", name, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.procs: list[subprocess.Popen] = []
        self.started_munged = False
        tag = _base36(os.getpid())
        self.bridge = f"{PREFIX}b{tag}"
        self.veth = f"{PREFIX}v{tag}-"  # and the node's name
        self.netns = f"{PREFIX}n{tag}-"  # and the node's name
        # A subnet of its own too; a host address on two bridges would route to one only.
        self.subnet = f"10.213.{os.getpid() % 250 + 1}"
        self.host = f"{self.subnet}.1"
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    # -- up --------------------------------------------------------------------

    def start(self, timeout: float = 30) -> SlurmCluster:
        try:
            self._munge()
            self._network()
            self._configure()
            self._daemons(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _munge(self) -> None:
        if subprocess.run([_which("munge"), "-n"], capture_output=True).returncode == 0:
            return  # a munged already answers
        _sh("install", "-d", "-o", "munge", "-g", "munge", "/run/munge")
        _sh("runuser", "-u", "munge", "--", _which("munged"))
        self.started_munged = True

    def _network(self) -> None:
        _sweep_leftovers()
        self._network_down()
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.host}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for i, node in enumerate(NODES, start=1):
            ns, veth = self.netns + node, self.veth + node
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.subnet}.1{i}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _network_down(self) -> None:
        for node in NODES:
            _sh("ip", "link", "del", self.veth + node, check=False)
            _sh("ip", "netns", "del", self.netns + node, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)

    def _configure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "state").mkdir(exist_ok=True)
        r = self.root
        nodes = "\n".join(
            f"NodeName={n} NodeAddr={self.subnet}.1{i} CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB}"
            for i, n in enumerate(NODES, start=1)
        )
        self.conf.write_text(
            f"""ClusterName=simdeck-test
SlurmctldHost={socket.gethostname()}({self.host})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
SlurmUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool-%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=1000
ReturnToService=2
SlurmdTimeout=30
MpiDefault=none
JobCompType=jobcomp/none
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")
        self.procs.append(
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        )
        log.close()

    def _daemons(self, timeout: float) -> None:
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for node in NODES:
            inner = f"hostname {node} && exec {_which('slurmd')} -D -f {self.conf} -N {node}"
            argv = [_which("nsenter"), f"--net=/run/netns/{self.netns}{node}", _which("unshare"), "--uts"]
            self._spawn(f"slurmd-{node}", [*argv, "sh", "-c", inner])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False).stdout
            if sorted(line.split()[1] for line in out.splitlines() if line.strip()) == ["idle"] * len(NODES):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.3)
        raise RuntimeError(f"The Slurm test cluster did not come up; see {self.root}/*.log\n{self.logs()}")

    # -- use --------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        argv = (_which(argv[0]), *argv[1:])
        return subprocess.run(argv, env=os.environ | self.env, capture_output=True, text=True, check=check)

    def active_jobs(self) -> list[str]:
        """Ids of the jobs queued, running or finishing."""
        out = self.run("squeue", "--noheader", "--format=%i").stdout
        return out.split()

    def relay(self, *urls: str) -> tuple[subprocess.Popen, list[str]]:
        """Relay the loopback servers of ``urls`` to the bridge; the URLs as the nodes reach them."""
        pairs, moved = [], []
        for url in urls:
            parts = urlsplit(url)
            port = parts.port
            pairs.append(f"{self.host}:{port}={parts.hostname}:{port}")
            netloc = parts.netloc.rsplit("@", 1)
            netloc[-1] = f"{self.host}:{port}"
            moved.append(urlunsplit(parts._replace(netloc="@".join(netloc))))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks_app.testing.forward", *pairs],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            raise RuntimeError("The relay to the Slurm nodes did not start.")
        self.procs.append(proc)
        return proc, moved

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted([*self.root.glob("*.log"), *self.root.glob("*.out")])
        )

    # -- down -------------------------------------------------------------------

    def stop(self) -> None:
        if self.conf.exists() and self.procs:
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 15
            while (
                time.monotonic() < deadline and self.run("squeue", "--noheader", check=False).stdout.strip()
            ):
                time.sleep(0.3)
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        # A job step whose slurmd went first would run on, orphaned.
        for proc in psutil.process_iter(["name"]):
            try:
                if proc.info["name"] == "slurmstepd" and proc.environ().get("SLURM_CONF") == str(self.conf):
                    proc.kill()
            except psutil.Error:
                continue
        self._network_down()
        if self.started_munged:
            pid = Path("/run/munge/munged.pid")
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], check=False)
