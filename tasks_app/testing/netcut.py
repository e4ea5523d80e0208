"""A TCP relay whose connections a test can cut, losing what is still on the way.

Put between machines and PostgreSQL, it slows every answer by ``delay``
seconds, so an answer the server has already sent is still in the relay
when the connection is cut: the client never gets it, as when a network
breaks right after the server committed.
"""

from __future__ import annotations

import socket
import threading
import time


class Relay:
    def __init__(self, upstream: tuple[str, int], delay: float = 0.3):
        self.upstream = upstream
        self.delay = delay
        self.links: dict[int, tuple[socket.socket, socket.socket]] = {}  # upstream local port -> sockets
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.links[server.getsockname()[1]] = (client, server)
            threading.Thread(target=self.pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, self.delay), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket, delay: float) -> None:
        try:
            while data := source.recv(65536):
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            _close(sock)

    def cut(self, upstream_port: int) -> bool:
        """Close the connection PostgreSQL knows by this client port, dropping what it still holds."""
        with self.lock:
            link = self.links.pop(upstream_port, None)
        for sock in link or ():
            _close(sock)
        return link is not None

    def close(self) -> None:
        _close(self.server)
        with self.lock:
            links, self.links = list(self.links.values()), {}
        for pair in links:
            for sock in pair:
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
