"""The web server: several daphne processes answering on one listening socket.

Django runs the synchronous views of one process under one interpreter lock,
so a single daphne uses one core however many requests wait. This opens the
socket once and starts ``--processes`` daphne servers on it (``daphne --fd``);
the kernel hands each new connection to one of them. WebSockets work across
them because live events travel through Redis (the Channels layer).

    python -m console.webserver --host 127.0.0.1 --port 8000 --processes 2

It stops them all on SIGTERM or SIGINT, and stops the others when one of
them ends, so whoever started it sees the web server as one process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


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


def serve(host: str, port: int, processes: int) -> int:
    sock = listen(host, port)
    fd = sock.fileno()
    argv = [sys.executable, "-m", "daphne", "--fd", str(fd), "console.asgi:application"]
    servers = [subprocess.Popen(argv, pass_fds=(fd,)) for _ in range(processes)]
    sock.close()  # the servers hold it now
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: stopping.append(signum))
    code = 0
    while not stopping:
        ended = next((s for s in servers if s.poll() is not None), None)
        if ended is not None:
            print(f"A web server process ended (exit code {ended.returncode}); stopping the others.")
            code = ended.returncode or 1
            break
        time.sleep(0.2)
    for server in servers:
        if server.poll() is None:
            server.terminate()
    deadline = time.monotonic() + 15
    for server in servers:
        try:
            server.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console.webserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--processes", type=int, default=None, help="daphne processes (default: one per core, up to 4)"
    )
    args = parser.parse_args(argv)
    return serve(args.host, args.port, args.processes or default_processes())


if __name__ == "__main__":
    raise SystemExit(main())
