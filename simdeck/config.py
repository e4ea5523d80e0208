"""Where the client finds its server and API key.

In order: the ``SIMDECK_URL`` (or ``SIMDECK_API_URL``) and ``SIMDECK_API_KEY``
environment variables, then the config file (``SIMDECK_CONFIG``, default
``~/.config/simdeck/config.json``), which ``make run`` writes on an
instance's first start and ``simdeck auth login`` writes on request.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLES = ("SIMDECK_URL", "SIMDECK_API_URL")


def config_path() -> Path:
    if os.environ.get("SIMDECK_CONFIG"):
        return Path(os.environ["SIMDECK_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "simdeck" / "config.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str
    api_key: str | None
    # Where each came from, for "simdeck auth whoami": a variable, the file or the default.
    url_source: str = "default"
    key_source: str = "none"


def _stored() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load() -> Settings:
    stored = _stored()
    url, url_source = DEFAULT_URL, "default"
    for name in URL_VARIABLES:
        if os.environ.get(name):
            url, url_source = os.environ[name], name
            break
    else:
        if stored.get("url"):
            url, url_source = stored["url"], str(config_path())
    key, key_source = None, "none"
    if os.environ.get("SIMDECK_API_KEY"):
        key, key_source = os.environ["SIMDECK_API_KEY"], "SIMDECK_API_KEY"
    elif stored.get("api_key"):
        key, key_source = stored["api_key"], str(config_path())
    return Settings(url=url.rstrip("/"), api_key=key, url_source=url_source, key_source=key_source)


def save(url: str, api_key: str) -> Path:
    """Store the address and key, readable by the user only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"url": url.rstrip("/"), "api_key": api_key}, indent=2) + "\n")
    tmp.replace(path)
    return path


def forget_key() -> Path | None:
    """Remove the stored key (the address stays); returns the file, or None if there was none."""
    path = config_path()
    stored = _stored()
    if "api_key" not in stored:
        return None
    del stored["api_key"]
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(stored, indent=2) + "\n")
    path.with_suffix(".tmp").replace(path)
    return path
