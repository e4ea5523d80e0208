"""The web server: several daphne processes answering on one listening socket.

Django runs the synchronous views of one process under one interpreter lock,
so a single daphne uses one core however many requests wait. This opens the
socket once and starts ``--processes`` daphne servers on it (``daphne --fd``);
the kernel hands each new connection to one of them. WebSockets work across
them because live events travel through Redis (the Channels layer).

    python -m console.webserver --host 127.0.0.1 --port 8000 --processes 2 [--state FILE]

A daphne that dies is started again on the same socket (console/supervisor.py);
only one that keeps dying ends the web server. It stops them all on SIGTERM or
SIGINT, and each dies with it if it is killed outright. With ``--state``
it keeps what runs in that file, as the launcher does, for the health page.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path

from console.supervisor import CrashLoop, Program, Supervisor


def default_processes() -> int:
    """``SIMDECK_WEB_PROCESSES``, else one per core, at most four."""
    configured = os.environ.get("SIMDECK_WEB_PROCESSES", "").strip()
    if configured:
        return max(1, int(configured))
    return max(1, min(os.cpu_count() or 1, 4))


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def serve(host: str, port: int, processes: int, state: Path | None = None) -> int:
    sock = listen(host, port)
    fd = sock.fileno()
    argv = [sys.executable, "-m", "daphne", "--fd", str(fd), "console.asgi:application"]
    # The socket stays open here: a daphne that dies is replaced on the same socket.
    servers = Supervisor(
        [
            Program(f"web server process {i + 1}", argv, own_session=False, pass_fds=(fd,))
            for i in range(processes)
        ],
        say=lambda text: print(text, flush=True),
        state_file=state,
    )
    servers.start()
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    code = 0
    try:
        servers.run(lambda: bool(stopping), poll=0.2)
    except CrashLoop as exc:
        print(f"{exc} Stopping the web server.", flush=True)
        code = 1
    servers.stop()
    servers.write_state(stopped=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console.webserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--processes", type=int, default=None, help="daphne processes (default: one per core, up to 4)"
    )
    parser.add_argument("--state", type=Path, default=None, help="keep what runs in this JSON file")
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.processes or default_processes(), args.state)


if __name__ == "__main__":
    raise SystemExit(main())
