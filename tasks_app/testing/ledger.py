"""A ledger simulations report to over the network, for checks that nothing ran twice.

A sandboxed simulation writes nowhere but its own folder, so what it did is
sent to a small TCP server on the host (its group must be allowed the
network) and appended to a file there, one line per report.
"""

from __future__ import annotations

import socketserver
import threading
from pathlib import Path


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.touch()

        lock = threading.Lock()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                with lock:
                    before = path.read_bytes().splitlines(keepends=True).count(line)
                    with open(path, "ab") as out:
                        out.write(line)
                self.wfile.write(b"%d\n" % before)  # how often it was reported before

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def note(self, word: str) -> str:
        """A command line that reports ``word`` and its task's id, and prints how often it did before."""
        port = self.server.server_address[1]
        return (
            "python -c \"import os, socket; s = socket.create_connection(('127.0.0.1', "
            f"{port})); s.sendall(b'{word} ' + os.environ['SIMDECK_TASK_ID'].encode() + b'\\n'); "
            'print(s.makefile().readline().strip())"'
        )

    def text(self) -> str:
        return self.path.read_text()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
