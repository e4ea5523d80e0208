"""Settings, read from environment variables.

Everything an instance keeps (embedded database and Redis, stored inputs
and outputs, work directories, logs) lives under ``SIMDECK_HOME``. With no
``DATABASE_URL`` / ``REDIS_URL`` the embedded servers under that folder are
used, and started if they are not running yet, so ``manage.py`` in a second
shell reaches the same data as the running instance.
"""

from pathlib import Path

import environ

from console import embedded

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
SIMDECK_HOME = Path(env.str("SIMDECK_HOME", default=str(BASE_DIR / ".simdeck"))).resolve()
SIMDECK_HOME.mkdir(parents=True, exist_ok=True)

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

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
            ],
        },
    },
]

DATABASE_URL = env.str("DATABASE_URL", default="") or embedded.start_postgres(SIMDECK_HOME)
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="") or embedded.start_redis(SIMDECK_HOME)

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
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
    # Inputs, outputs and logs go through Django's storage API so that an
    # S3-compatible backend can replace the local folder.
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(SIMDECK_HOME / "storage")},
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage",
    },
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# Celery: the broker carries one queue per machine group. A task message is
# acknowledged only after the task ran, so a machine that dies gives its
# message back; the lifecycle's guarded update makes a second delivery a no-op.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
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
# Spot rehearsals: the chance per machine and hour that the local provider reclaims it.
SIMDECK_SPOT_RECLAIM_RATE = env.float("SIMDECK_SPOT_RECLAIM_RATE", default=0.0)
# What a "GB" of disk and of memory is. Rehearsals and tests shrink them to
# exercise the limits with small files; in production leave them alone.
SIMDECK_DISK_GB_BYTES = env.int("SIMDECK_DISK_GB_BYTES", default=2**30)
SIMDECK_MEMORY_GB_BYTES = env.int("SIMDECK_MEMORY_GB_BYTES", default=2**30)
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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
