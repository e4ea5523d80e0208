"""Inputs, outputs and logs in an S3-compatible bucket (see console/objectstore.py).

Reads are ranged: opening a 1 GB archive to list its files fetches its
index, not the whole file. Files stored in the local folder before the
bucket was configured are still found there, so existing tasks keep
their files.
"""

from __future__ import annotations

import io
import threading

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError
from django.core.files import File
from django.core.files.storage import FileSystemStorage
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

from tasks_app.downloads import attachment


class BucketStorage(S3Storage):
    def __init__(self, local_folder: str | None = None, **settings):
        super().__init__(**settings)
        self.local = FileSystemStorage(location=local_folder) if local_folder else None
        self._session = None
        self._session_lock = threading.Lock()

    # The web server runs each request's view in a thread of its own, and
    # django-storages makes a connection per thread from a new boto3
    # session: 150 ms or more a request. Threads share one session here,
    # which makes their connections in a few milliseconds.
    def _create_session(self):
        if self._session is None:
            self._session = super()._create_session()
        return self._session

    @property
    def connection(self):
        if getattr(self._connections, "connection", None) is None:
            with self._session_lock:  # a boto3 session is not safe to use from two threads at once
                return super().connection
        return self._connections.connection

    def key(self, name: str) -> str:
        return self._normalize_name(clean_name(name))

    def _in_local_folder(self, name: str) -> bool:
        """Stored before the bucket, and not stored again since."""
        return self.local is not None and self.local.exists(name) and not super().exists(name)

    def exists(self, name: str) -> bool:
        return super().exists(name) or (self.local is not None and self.local.exists(name))

    def size(self, name: str) -> int:
        if self._in_local_folder(name):
            return self.local.size(name)
        return super().size(name)

    def delete(self, name: str) -> None:
        super().delete(name)
        if self.local is not None and self.local.exists(name):
            self.local.delete(name)

    def _open(self, name: str, mode: str = "rb") -> File:
        if "r" not in mode or "+" in mode:
            return super()._open(name, mode)
        if self._in_local_folder(name):
            return self.local.open(name, mode)
        reader = RangeReader(self.connection.meta.client, self.bucket_name, self.key(name))
        return File(io.BufferedReader(reader, 1 << 20), name)

    def download_url(self, name: str, filename: str, content_type: str) -> str | None:
        """A presigned GET offering the file as ``filename``; None for a file of the local folder."""
        if self._in_local_folder(name):
            return None
        parameters = {"ResponseContentDisposition": attachment(filename), "ResponseContentType": content_type}
        return self.url(name, parameters=parameters)

    def start_upload(self, name: str, size: int, part_bytes: int, single_put_bytes: int) -> dict:
        """Presigned PUTs for a client to send ``size`` bytes straight to ``name``.

        Up to ``single_put_bytes`` one PUT; beyond, a multipart upload in
        parts of ``part_bytes`` (more for a file that would need over the
        bucket's 10,000 parts), sent in any order, even side by side.
        """
        client, key, expire = self.connection.meta.client, self.key(name), self.querystring_expire
        target = {"Bucket": self.bucket_name, "Key": key}
        if size <= single_put_bytes:
            url = client.generate_presigned_url(
                "put_object", Params=target, ExpiresIn=expire, HttpMethod="PUT"
            )
            return {"upload_id": None, "parts": [{"number": 1, "url": url, "offset": 0, "size": size}]}
        upload_id = client.create_multipart_upload(**target)["UploadId"]
        part_bytes = max(part_bytes, -(-size // 10_000))
        parts = []
        for number, offset in enumerate(range(0, size, part_bytes), start=1):
            params = target | {"UploadId": upload_id, "PartNumber": number}
            url = client.generate_presigned_url(
                "upload_part", Params=params, ExpiresIn=expire, HttpMethod="PUT"
            )
            parts.append(
                {"number": number, "url": url, "offset": offset, "size": min(part_bytes, size - offset)}
            )
        return {"upload_id": upload_id, "parts": parts}

    def finish_upload(self, name: str, upload_id: str | None, etags: dict[int, str]) -> None:
        """Join the parts of a multipart upload into the object (a single PUT needs nothing)."""
        if upload_id is None:
            return
        client, key = self.connection.meta.client, self.key(name)
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in sorted(etags.items())]
        client.complete_multipart_upload(
            Bucket=self.bucket_name, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    def move_object(self, source: str, target: str) -> None:
        """Copy inside the bucket (in parts for a big object), then delete the source."""
        client = self.connection.meta.client
        copied = {"Bucket": self.bucket_name, "Key": self.key(source)}
        client.copy(copied, self.bucket_name, self.key(target), Config=self.transfer_config)
        client.delete_object(**copied)

    def copy_object(self, source: str, target: str) -> None:
        """Copy inside the bucket (in parts for a big object): no byte passes through us."""
        client = self.connection.meta.client
        copied = {"Bucket": self.bucket_name, "Key": self.key(source)}
        client.copy(copied, self.bucket_name, self.key(target), Config=self.transfer_config)

    def discard_uploads(self, name: str) -> None:
        """Remove what was sent to ``name``: the object, and multipart uploads never completed."""
        client, key = self.connection.meta.client, self.key(name)
        listing = client.list_multipart_uploads(Bucket=self.bucket_name, Prefix=key)
        for upload in listing.get("Uploads", []):
            if upload["Key"] == key:
                client.abort_multipart_upload(Bucket=self.bucket_name, Key=key, UploadId=upload["UploadId"])
        client.delete_object(Bucket=self.bucket_name, Key=key)

    def abort_upload(self, name: str, upload_id: str | None) -> None:
        client, key = self.connection.meta.client, self.key(name)
        if upload_id is not None:
            client.abort_multipart_upload(Bucket=self.bucket_name, Key=key, UploadId=upload_id)

    def check(self) -> None:
        """Write, read and delete a small object; raises what the bucket answers."""
        client = self.connection.meta.client
        key = self.key(".simdeck-check")
        # A GET, not a HEAD: its refusal has a body that says why.
        client.list_objects_v2(Bucket=self.bucket_name, MaxKeys=1)
        client.put_object(Bucket=self.bucket_name, Key=key, Body=b"ok")
        client.get_object(Bucket=self.bucket_name, Key=key)["Body"].read()
        client.delete_object(Bucket=self.bucket_name, Key=key)

    def explain(self, exc: Exception) -> str:
        """What went wrong with the bucket, and what to change: for operators' eyes."""
        bucket = f"bucket {self.bucket_name!r}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        if isinstance(exc, NoCredentialsError):
            return f"No credentials for the {bucket}: set SIMDECK_S3_ACCESS_KEY and SIMDECK_S3_SECRET_KEY."
        if isinstance(exc, EndpointConnectionError):
            return (
                f"Cannot reach the {bucket}. Check SIMDECK_S3_ENDPOINT_URL and that the S3 server runs "
                "and is reachable from this host."
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket", "404") or (status == 404 and code != "NoSuchKey"):
                return f"The {bucket} does not exist. Create it, or set SIMDECK_S3_BUCKET to one that exists."
            if code == "InvalidAccessKeyId":
                return f"The {bucket} does not know the access key. Check SIMDECK_S3_ACCESS_KEY."
            if code == "SignatureDoesNotMatch":
                return f"The {bucket} refuses the secret key. Check SIMDECK_S3_SECRET_KEY."
            if code in (
                "AuthorizationHeaderMalformed",
                "PermanentRedirect",
                "301",
                "IllegalLocationConstraintException",
            ):
                return f"The {bucket} is in another region. Set SIMDECK_S3_REGION to the bucket's region."
            if code in ("AccessDenied", "403") or status == 403:
                return (
                    f"The {bucket} refuses access ({code or status}). Check SIMDECK_S3_ACCESS_KEY and "
                    "SIMDECK_S3_SECRET_KEY; the key must be allowed to list the bucket and to get, put "
                    "and delete its objects."
                )
            return f"The {bucket} answered {status} {code}: {error.get('Message') or exc}."
        if isinstance(exc, BotoCoreError):
            return f"The {bucket} could not be used: {exc}."
        return str(exc)


class RangeReader(io.RawIOBase):
    """An object of the bucket as a seekable file, read with ranged GETs.

    Reading on from where the last read stopped continues the same
    response; a seek elsewhere starts a new one there.
    """

    def __init__(self, client, bucket: str, key: str):
        self.client, self.bucket, self.key = client, bucket, key
        self.pos = 0
        self.body = None
        self.body_pos = -1
        # A GET rather than a HEAD: a refusal then says why, and the read starts at once.
        try:
            response = client.get_object(Bucket=bucket, Key=key, Range="bytes=0-")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                raise
            self.length = 0  # an empty object has no byte 0
        else:
            self.body, self.body_pos = response["Body"], 0
            self.length = int(response["ContentRange"].rsplit("/", 1)[1])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        if self.pos >= self.length:
            return 0
        if self.body is None or self.body_pos != self.pos:
            self._drop()
            response = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-")
            self.body, self.body_pos = response["Body"], self.pos
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        self.body_pos = self.pos
        return len(data)

    def _drop(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop()
        super().close()
