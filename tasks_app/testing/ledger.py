"""A ledger simulations report to over the network, for checks that nothing ran twice.

A sandboxed simulation writes nowhere but its own folder, so what it did is
sent to a small TCP server on the host (its group must be allowed the
network) and appended to a file there, one line per report: the word, the
task's id, its attempt and when the report arrived.
"""

from __future__ import annotations

import collections
import socketserver
import threading
import time
from pathlib import Path


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.touch()

        lock = threading.Lock()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                word, task, attempt = self.rfile.readline().split()
                with lock:
                    # How often the word was reported for the task before, whatever the attempt.
                    before = sum(
                        1 for line in path.read_bytes().splitlines() if line.split()[:2] == [word, task]
                    )
                    with open(path, "ab") as out:
                        out.write(b"%s %s %s %.6f\n" % (word, task, attempt, time.time()))
                self.wfile.write(b"%d\n" % before)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def note(self, word: str) -> str:
        """A command line that reports ``word`` for its task's attempt, and prints how often it did before."""
        port = self.server.server_address[1]
        return (
            "python -c \"import os, socket; s = socket.create_connection(('127.0.0.1', "
            f"{port})); s.sendall(b'{word} ' + os.environ['SIMDECK_TASK_ID'].encode() + b' ' + "
            "os.environ['SIMDECK_TASK_ATTEMPT'].encode() + b'\\n'); "
            'print(s.makefile().readline().strip())"'
        )

    def text(self) -> str:
        return self.path.read_text()

    def reports(self, word: str) -> dict[str, list[tuple[int, float]]]:
        """Each task's reports of ``word``: (attempt, when), in the order they came."""
        found = collections.defaultdict(list)
        for line in self.text().splitlines():
            said, task, attempt, at = line.split()
            if said == word:
                found[task].append((int(attempt), float(at)))
        return dict(found)

    def doubled(self, start: str = "start", done: str = "done") -> tuple[set[str], set[str]]:
        """Tasks whose work ran twice at once, and tasks whose work was done again later.

        Twice at once: one attempt reported its work done more than once, or
        an attempt was still working when a later one started. Done again:
        an attempt finished its work and a later one did it again, as when a
        machine dies between the end of a simulation and the record of it
        and the task is resubmitted; that is recovery, not a duplicate.
        """
        starts, dones = self.reports(start), self.reports(done)
        at_once, again = set(), set()
        for task, ends in dones.items():
            attempts = [a for a, _ in ends]
            if len(set(attempts)) < len(attempts):
                at_once.add(task)
                continue
            ended = dict(ends)
            began = dict(starts.get(task, []))
            for a in attempts:
                later = [began[b] for b in began if b > a]
                if any(t < ended[a] for t in later):
                    at_once.add(task)
                elif later or any(b > a for b in attempts):
                    again.add(task)
        return at_once, again - at_once

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
