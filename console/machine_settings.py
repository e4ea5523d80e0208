"""Settings of a machine on another host (``simdeck-machine``): the server's, less everything secret.

Such a machine reaches the server only through its machine interface, with
its own token (tasks_app/executor/remote.py). It has no database (Django's
dummy backend refuses any query), no broker, no bucket credentials, and a
secret key of its own that signs nothing the server trusts. What it reads
of the server's settings (machine types, limits) comes from the server with
each machine it runs.
"""

import os
import secrets
from pathlib import Path

# Set, so that nothing looks for embedded servers; never connected to.
os.environ["DATABASE_URL"] = "postgres://none@machine-has-no-database.invalid:1/none"
for _name in ("REDIS_URL", "CELERY_BROKER_URL"):
    os.environ[_name] = "redis://machine-has-no-redis.invalid:1/0"
for _name in list(os.environ):
    if _name.startswith(("SIMDECK_S3_", "AWS_")):
        del os.environ[_name]
os.environ["SECRET_KEY"] = secrets.token_urlsafe(50)
os.environ.setdefault("SIMDECK_HOME", str(Path.home() / ".simdeck-machine"))

from console.settings import *  # noqa: E402,F403

DATABASES = {"default": {"ENGINE": "django.db.backends.dummy"}}
