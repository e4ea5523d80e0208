"""The HTTP conversation with a Simdeck server.

One small wrapper over httpx: it adds the API key, turns error bodies into
typed :mod:`simdeck.errors` with the server's message, and retries requests
that are safe to repeat with backoff while the server is restarting.
"""

from __future__ import annotations

import functools
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import certifi
import httpx

from simdeck import config, errors
from simdeck.errors import ServerUnreachable

# Attempts per request that is safe to repeat; the CLI lowers it so that a
# dead server is reported in about a second.
DEFAULT_RETRIES = 5
RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteTimeout)
# Repeating these changes nothing the first one did not.
IDEMPOTENT = {"GET", "PUT", "DELETE"}
CHUNK = 1 << 20
# Inputs this big go straight to the server's bucket, when it has one.
DIRECT_UPLOAD_MIN_BYTES = 8 * 1024 * 1024


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
        except (ValueError, AttributeError):
            message, code, field = None, "error", None
        if not message:
            message = f"The server at {self.url} answered {response.status_code} {response.reason_phrase}."
            if response.status_code == 404:
                message += " Is this the address of a Simdeck server?"
        cls = errors.for_status(response.status_code)
        raise cls(message, code=code, status=response.status_code, field=field)

    def _unreachable(self, exc: Exception) -> ServerUnreachable:
        return ServerUnreachable(
            f"Cannot reach the Simdeck server at {self.url} ({type(exc).__name__}). "
            "Is it running? Start it with 'make run', or set SIMDECK_URL."
        )

    def request(self, method: str, path: str, *, retry: bool | None = None, **kwargs) -> httpx.Response:
        """Send a request; retry on connection trouble when it is safe to repeat."""
        retry = method in IDEMPOTENT if retry is None else retry
        attempts = max(1, self.retries) if retry else 1
        delay = 0.5
        for attempt in range(attempts):
            try:
                response = self.http.request(method, path, **kwargs)
                if response.status_code == 503 and attempt + 1 < attempts and _busy(response):
                    # The server is up but too busy, or its database restarts: ask again shortly.
                    time.sleep(delay)
                    delay = min(delay * 2, 10)
                    continue
                break
            except RETRYABLE as exc:
                if attempt + 1 >= attempts:
                    raise self._unreachable(exc) from None
                time.sleep(delay)
                delay = min(delay * 2, 10)
            except httpx.TransportError as exc:  # e.g. a malformed address
                raise self._unreachable(exc) from None
        self._raise_for(response)
        return response

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, json: Any = None, **kwargs) -> Any:
        return self.request("POST", path, json=json, **kwargs).json()

    def put(self, path: str, json: Any = None, **kwargs) -> Any:
        return self.request("PUT", path, json=json, **kwargs).json()

    def patch(self, path: str, json: Any = None, **kwargs) -> Any:
        # A merge of the same keys twice gives the same result: safe to repeat.
        return self.request("PATCH", path, json=json, retry=True, **kwargs).json()

    def delete(self, path: str, **kwargs) -> Any:
        response = self.request("DELETE", path, **kwargs)
        return response.json() if response.content else None  # 204: nothing to say

    def upload(self, path: str, stream: Iterator[bytes], headers: dict[str, str]) -> Any:
        # Not retried: the body is a one-shot stream. The caller starts over.
        return self.request("PUT", path, content=stream, headers=headers, retry=False).json()

    def upload_input(
        self, task_id: str, upload_url: str, archive: Path, digest: str, progress: Callable[[int], None]
    ) -> Any:
        """Send a task's input archive; returns the task as the server then describes it.

        A big archive goes straight to the server's bucket when it has one, in
        presigned PUTs (parts of a multipart upload beyond 100 MB); otherwise,
        and for small archives, through the server.
        """
        size = archive.stat().st_size
        if size >= DIRECT_UPLOAD_MIN_BYTES:
            try:
                plan = self.post(f"/tasks/{task_id}/input/direct", json={"size": size})
            except errors.SimdeckError as exc:
                if exc.code != "no_direct_upload":
                    raise
            else:
                parts = [
                    {"number": part["number"], "etag": put_part(part, archive, progress)}
                    for part in plan["parts"]
                ]
                done = {"upload_id": plan["upload_id"], "parts": parts, "size": size, "sha256": digest}
                return self.post(f"/tasks/{task_id}/input/direct/done", json=done)
        headers = {"Content-Length": str(size), "X-Archive-Size": str(size), "X-Content-SHA256": digest}
        return self.upload(upload_url.removeprefix("/api/v1"), read_file(archive, 0, size, progress), headers)

    def download(
        self, path: str, sink: BinaryIO, progress: Callable[[int, int | None], None] | None = None
    ) -> int:
        """Stream a file into ``sink``; returns its size.

        A server that stores files in a bucket answers with a redirect to a
        presigned URL of the bucket; that URL is fetched without the API
        key, which it neither needs nor may see.
        """
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(60.0, connect=5.0)) as response:
                if response.is_redirect:
                    location = response.headers["Location"]
                else:
                    if not response.is_success:
                        response.read()
                        self._raise_for(response)
                    return _receive(response.iter_bytes(CHUNK), response.headers, sink, progress)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        return fetch_presigned(location, sink, progress)


def _receive(
    chunks: Iterator[bytes], headers, sink: BinaryIO, progress: Callable[[int, int | None], None] | None
) -> int:
    length = headers.get("Content-Length")
    total = int(length) if length else None
    done = 0
    for chunk in chunks:
        sink.write(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)
    return done


def fetch_presigned(url: str, sink: BinaryIO, progress: Callable[[int, int | None], None] | None) -> int:
    """Download from a bucket's presigned URL.

    With the standard library's HTTP client, which reads a body about twice
    as fast as httpx: a big download is bound by it, not by the network.
    """
    store = urllib.parse.urlsplit(url).netloc
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        response = urllib.request.urlopen(url, timeout=60, context=context)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise errors.for_status(exc.code)(
            f"The file store at {store} refused the download ({exc.code} {exc.reason}). "
            "Ask again; if it persists, tell the server's operator.",
            code="storage_refused",
            status=exc.code,
        ) from None
    except OSError as exc:  # URLError, timeouts, refused connections
        raise ServerUnreachable(f"Cannot reach the file store at {store} ({exc}) to download.") from None

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = response.read(CHUNK)
            except OSError as exc:
                raise ServerUnreachable(
                    f"The download from the file store at {store} broke off ({exc})."
                ) from None
            if not chunk:
                return
            yield chunk

    with response:
        return _receive(chunks(), response.headers, sink, progress)


def read_file(
    path: Path, offset: int, size: int, progress: Callable[[int], None] | None = None
) -> Iterator[bytes]:
    """``size`` bytes of ``path`` from ``offset``, a chunk at a time (a body httpx streams)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while size > 0 and (chunk := f.read(min(CHUNK, size))):
            size -= len(chunk)
            if progress:
                progress(len(chunk))
            yield chunk


def put_part(
    part: dict, path: Path, progress: Callable[[int], None] | None = None, *, what: str = "the input"
) -> str:
    """PUT one part of a presigned upload plan, without any key of ours; returns the bucket's ETag.

    The client sends inputs this way, and a machine on another host its outputs.
    """
    store = httpx.URL(part["url"]).netloc.decode()
    try:
        response = httpx.put(
            part["url"],
            content=read_file(path, part["offset"], part["size"], progress),
            headers={"Content-Length": str(part["size"])},
            timeout=httpx.Timeout(300.0, connect=5.0),
        )
    except httpx.TransportError as exc:
        raise ServerUnreachable(
            f"Cannot reach the file store at {store} ({type(exc).__name__}) to upload {what}."
        ) from None
    if not response.is_success:
        raise errors.for_status(response.status_code)(
            f"The file store at {store} refused the upload ({response.status_code} "
            f"{response.reason_phrase}). Submit again; if it persists, tell the server's operator.",
            code="storage_refused",
            status=response.status_code,
        )
    return response.headers["ETag"]


def request_key() -> dict[str, str]:
    """A fresh key for a request that makes something: sent again, it makes nothing twice."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def _busy(response: httpx.Response) -> bool:
    """A 503 of the server itself, not of a task's machine (which a retry would not wake)."""
    try:
        return response.json().get("error") == "unavailable"
    except (ValueError, AttributeError):
        return False


@functools.cache
def default_client() -> Client:
    return Client(retries=DEFAULT_RETRIES)


def client() -> Client:
    """The client every object shares, configured from the environment or the config file."""
    return default_client()
