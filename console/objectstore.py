"""Which storage holds inputs, outputs and logs: a local folder, or an S3-compatible bucket.

A bucket is used when ``SIMDECK_S3_BUCKET`` (or the usual
``AWS_STORAGE_BUCKET_NAME``) is set; each ``SIMDECK_S3_*`` setting may be
given by its usual ``AWS_*`` name instead, and credentials left unset are
found as boto3 finds them (environment, ``~/.aws``, an instance role).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

# name: (Simdeck's variable, the usual AWS variables)
VARIABLES = {
    "bucket_name": ("SIMDECK_S3_BUCKET", "AWS_STORAGE_BUCKET_NAME"),
    "endpoint_url": (
        "SIMDECK_S3_ENDPOINT_URL",
        "AWS_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
    ),
    "access_key": ("SIMDECK_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
    "secret_key": ("SIMDECK_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
    "region_name": ("SIMDECK_S3_REGION", "AWS_S3_REGION_NAME", "AWS_DEFAULT_REGION", "AWS_REGION"),
    "addressing_style": ("SIMDECK_S3_ADDRESSING_STYLE", "AWS_S3_ADDRESSING_STYLE"),
    "location": ("SIMDECK_S3_PREFIX", "AWS_LOCATION"),
    "querystring_expire": ("SIMDECK_S3_URL_SECONDS", "AWS_QUERYSTRING_EXPIRE"),
}
ADDRESSING_STYLES = ("auto", "path", "virtual")


class BadSetting(ValueError):
    pass


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        if value := environ.get(name, "").strip():
            return value
    return ""


def bucket_storage(environ: Mapping[str, str], local_folder: Path) -> dict | None:
    """The ``STORAGES["default"]`` entry for a bucket, or None when no bucket is set.

    ``local_folder`` is where files were stored before the bucket: they
    are still read from there (see :class:`tasks_app.bucket.BucketStorage`).
    """
    found = {key: _first(environ, names) for key, names in VARIABLES.items()}
    if not found["bucket_name"]:
        return None
    style = found["addressing_style"].lower() or ("path" if found["endpoint_url"] else "auto")
    if style not in ADDRESSING_STYLES:
        raise BadSetting(
            f"SIMDECK_S3_ADDRESSING_STYLE is {style!r}; use one of {', '.join(ADDRESSING_STYLES)}."
        )
    expire = found["querystring_expire"] or "3600"
    if not expire.isdigit() or not 60 <= int(expire) <= 7 * 24 * 3600:
        raise BadSetting(
            f"SIMDECK_S3_URL_SECONDS is {expire!r}; give whole seconds from 60 to 604800 (7 days)."
        )
    options = {
        "bucket_name": found["bucket_name"],
        "endpoint_url": found["endpoint_url"] or None,
        "access_key": found["access_key"] or None,
        "secret_key": found["secret_key"] or None,
        "region_name": found["region_name"] or "us-east-1",
        "addressing_style": None if style == "auto" else style,
        "location": found["location"].strip("/"),
        "querystring_expire": int(expire),
        "signature_version": "s3v4",
        "querystring_auth": True,
        "file_overwrite": True,
        # Reads spill to a temporary file past this, instead of holding a big file in memory.
        "max_memory_size": 16 * 1024 * 1024,
        "local_folder": str(local_folder),
    }
    return {"BACKEND": "tasks_app.bucket.BucketStorage", "OPTIONS": options}
