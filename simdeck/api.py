"""The HTTP conversation with a Simdeck server.

One small wrapper over httpx: it adds the API key, turns error bodies into
:class:`~simdeck.errors.SimdeckError` with the server's message, and retries
idempotent requests with backoff while the server is restarting.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import httpx

from simdeck import config
from simdeck.errors import AuthenticationFailed, NotFound, ServerUnreachable, SimdeckError

RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteTimeout)


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, retries: int = 5):
        settings = config.load()
        self.url = (url or settings.url).rstrip("/")
        self.api_key = api_key or settings.api_key
        self.retries = retries
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(
            base_url=self.url + "/api/v1",
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    # -- plumbing ------------------------------------------------------------

    def _raise_for(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
            message, code, field = body.get("message"), body.get("error", "error"), body.get("field")
        except ValueError:
            message, code, field = None, "error", None
        message = message or f"The server answered {response.status_code} {response.reason_phrase}."
        cls = {401: AuthenticationFailed, 404: NotFound}.get(response.status_code, SimdeckError)
        raise cls(message, code=code, status=response.status_code, field=field)

    def request(self, method: str, path: str, *, retry: bool | None = None, **kwargs) -> httpx.Response:
        """Send a request; retry on connection trouble when it is safe to repeat."""
        retry = method in ("GET", "PUT", "DELETE") if retry is None else retry
        attempts = self.retries if retry else 1
        delay = 0.5
        for attempt in range(attempts):
            try:
                response = self.http.request(method, path, **kwargs)
                break
            except RETRYABLE as exc:
                if attempt + 1 >= attempts:
                    raise ServerUnreachable(
                        f"Cannot reach the Simdeck server at {self.url} ({type(exc).__name__}). "
                        "Is it running? Start it with 'make run', or set SIMDECK_API_URL."
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 10)
        self._raise_for(response)
        return response

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, json: Any = None, **kwargs) -> Any:
        return self.request("POST", path, json=json, **kwargs).json()

    def put(self, path: str, json: Any = None, **kwargs) -> Any:
        return self.request("PUT", path, json=json, **kwargs).json()

    def patch(self, path: str, json: Any = None, **kwargs) -> Any:
        return self.request("PATCH", path, json=json, retry=True, **kwargs).json()

    def upload(self, path: str, stream: Iterator[bytes], headers: dict[str, str]) -> Any:
        # Not retried: the body is a one-shot stream. The caller starts over.
        return self.request("PUT", path, content=stream, headers=headers, retry=False).json()

    def download(
        self, path: str, sink: BinaryIO, progress: Callable[[int, int | None], None] | None = None
    ) -> int:
        """Stream a file into ``sink``; returns its size."""
        with self.http.stream("GET", path, timeout=httpx.Timeout(60.0, connect=5.0)) as response:
            if not response.is_success:
                response.read()
                self._raise_for(response)
            total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
            done = 0
            for chunk in response.iter_bytes(1 << 20):
                sink.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        return done


@functools.cache
def default_client() -> Client:
    return Client()


def client() -> Client:
    return default_client()
