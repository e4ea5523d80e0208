"""Where the client finds its server and API key.

In order: the ``SIMDECK_API_URL`` / ``SIMDECK_API_KEY`` environment
variables, then the config file (``SIMDECK_CONFIG``, default
``~/.config/simdeck/config.json``), which ``make run`` writes on an
instance's first start and ``simdeck auth login`` writes on request.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    if os.environ.get("SIMDECK_CONFIG"):
        return Path(os.environ["SIMDECK_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "simdeck" / "config.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    url: str
    api_key: str | None


def load() -> Settings:
    stored: dict = {}
    path = config_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
    url = os.environ.get("SIMDECK_API_URL") or stored.get("url") or DEFAULT_URL
    key = os.environ.get("SIMDECK_API_KEY") or stored.get("api_key")
    return Settings(url=url.rstrip("/"), api_key=key)


def save(url: str, api_key: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "api_key": api_key}, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
