"""Settings: everything comes from the environment (12-factor).

With no environment set, CNET Agent runs embedded: SQLite in WAL mode under
``var/`` and Celery over kombu's filesystem transport, so one machine needs
no server at all. Production sets ``DATABASE_URL`` and ``CELERY_BROKER_URL``.
"""

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """A setting from the environment, or from the file named by ``<name>_FILE``."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DATA_DIR = Path(env_str("CNET_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", False)
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'cnet.sqlite3'}")
# Embedded: one machine on SQLite in the data folder (``make run``). A server database means a
# deployment, where every control-plane host must share one key that no workload can read.
CNET_EMBEDDED = env_bool("CNET_EMBEDDED", DATABASE_URL.startswith("sqlite"))
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and not CNET_EMBEDDED:
        raise ImproperlyConfigured(
            "SECRET_KEY (or SECRET_KEY_FILE) must be set: this is not an embedded install "
            "(DATABASE_URL names a server database, or CNET_EMBEDDED is off)")
    # Embedded mode keeps a generated key in the data folder, never in the repo.
    from django.core.management.utils import get_random_secret_key

    from core.files import write_private_file

    key_file = DATA_DIR / "secret_key"
    SECRET_KEY = (key_file.read_text().strip() if key_file.exists()
                  else write_private_file(key_file, get_random_secret_key(), keep_existing=True))

# Where agents reach this control plane: its host name is one the web answers to.
CNET_SERVER_URL = env_str("CNET_SERVER_URL", "http://127.0.0.1:8000")
# Loopback, the server URL's host, and what is configured; "*" only behind a proxy that checks Host.
ALLOWED_HOSTS = list(dict.fromkeys(
    ["localhost", "127.0.0.1", "[::1]", urlsplit(CNET_SERVER_URL).hostname or "localhost",
     *env_list("ALLOWED_HOSTS")]))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# --- TLS (on in deploy/: the proxy in front terminates it) ---------------------------------
# The header the proxy sets to say the client's request came over HTTPS (e.g. X-Forwarded-Proto);
# trust it only when every request reaches the web through that proxy.
if env_str("CNET_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + env_str("CNET_PROXY_SSL_HEADER").upper().replace("-", "_"), "https")
# Session and CSRF cookies sent over HTTPS only.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("CNET_SECURE_COOKIES", False)
# HSTS: browsers use HTTPS only for this long (0: off); an HTTPS answer carries it.
SECURE_HSTS_SECONDS = env_int("CNET_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CNET_HSTS_INCLUDE_SUBDOMAINS", False)
# Plain-HTTP requests are redirected to HTTPS (by Django; the proxy usually does it first).
SECURE_SSL_REDIRECT = env_bool("CNET_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^api/health/live/?$"]  # load balancers probe over plain HTTP
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

INSTALLED_APPS = [
    "cnetsite.admin_site.ConsoleAdminConfig",  # the Web UI: django.contrib.admin as a console
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "cnetsite",
    "nodes",
    "scheduler",
    "workloads",
    "mlmodels",
]

MIDDLEWARE = [
    "cnetsite.metrics.middleware.RequestLatencyMiddleware",  # first: times everything below
    "django.middleware.security.SecurityMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "cnetsite.urls"
WSGI_APPLICATION = "cnetsite.wsgi.application"

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

# Persistent connections: measured here, CONN_MAX_AGE=0 costs ~6x in API throughput.
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web, the workers and the agent read while one writes;
    # IMMEDIATE makes writers queue on the lock instead of failing on upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0 if env_bool("CNET_SQLITE_NO_PERSIST") else 600

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every start when it is missing
WHITENOISE_USE_FINDERS = True

LOGIN_URL = "/admin/login/"

# Bodies over 1 MiB are refused with 413 (see core.middleware).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("CNET_MAX_BODY_BYTES", 1024 * 1024)
# Model artifacts: the largest one the registry stores (uploaded or written by training).
CNET_ML_MAX_ARTIFACT_BYTES = env_int("CNET_ML_MAX_ARTIFACT_BYTES", 512 * 1024 * 1024)
CNET_MAX_UPLOAD_BYTES = CNET_ML_MAX_ARTIFACT_BYTES + 1024 * 1024  # the file plus its form fields
# The ports model servers may listen on (mlmodels/serving.py); the default holds the seed's 9000.
CNET_ML_SERVE_PORTS = env_str("CNET_ML_SERVE_PORTS", "9000-9999")
# The only paths that take multipart uploads that big (core.middleware): a model's new version.
CNET_UPLOAD_PATHS = [r"^/api/ml/models/[^/]+/versions/?$"]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.BearerOrTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.HeaderLimitOffsetPagination",
    "PAGE_SIZE": env_int("CNET_API_PAGE_SIZE", 100),
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Views name the actions they limit (core.throttles); 429 past the rate, saying when to retry.
    "DEFAULT_THROTTLE_CLASSES": ["core.throttles.ActionRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        # Workload submissions per user (an array of N is one).
        "submissions": env_str("CNET_THROTTLE_SUBMISSIONS", "300/min"),
        # Login attempts (the console's form, the browsable API's) per client address.
        "login": env_str("CNET_THROTTLE_LOGIN", "20/min"),
    },
    # Proxies in front that append to X-Forwarded-For (1 behind the nginx of deploy/): a client's
    # address is what the nearest of them saw. 0: the connection's address; a forged header is ignored.
    "NUM_PROXIES": env_int("CNET_NUM_PROXIES", 0),
}

# Throttle counters. Per process unless shared: give every web host one Redis (CNET_CACHE_URL).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if env_str("CNET_CACHE_URL"):
    CACHES["default"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                         "LOCATION": env_str("CNET_CACHE_URL")}

SPECTACULAR_SETTINGS = {
    "TITLE": "CNET Agent API",
    "DESCRIPTION": "Distributed resource manager and workload scheduler.",
    "VERSION": "0.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and docs are API calls like any other: every one is authenticated.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# --- Celery -------------------------------------------------------------------------------
# CNET_BROKER_DIR: an agent on this machine that joined an embedded control plane rings at its doorbells
BROKER_DIR = Path(env_str("CNET_BROKER_DIR", str(DATA_DIR / "broker")))
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Exchange bindings; kombu's default is "control" relative to the working directory.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # The filesystem transport polls; 1 s (its default) would dominate dispatch latency.
        "polling_interval": env_float("CNET_BROKER_POLL_SECONDS", 0.05),
    }
else:
    # Redis redelivers an unacknowledged message only after this timeout; the database,
    # not the broker, is the record of what must run (see workloads.dispatch), so a
    # short timeout only adds duplicate doorbells, which starts ignore.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    }
    # Redis Sentinel (CELERY_BROKER_URL=sentinel://h1:26379;sentinel://h2:26379): the master group.
    if env_str("CELERY_BROKER_MASTER_NAME"):
        CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = env_str("CELERY_BROKER_MASTER_NAME")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task unless
# this is set: a new Postgres connection per start message cost ~5 ms of each start here.
# Connections are kept; cnetsite.celery checks them before each task as Django does per request.
CELERY_DB_REUSE_MAX = 2**31
CELERY_TASK_DEFAULT_QUEUE = "control"
# RabbitMQ: "quorum" declares the control queue and every node.<id> queue as replicated
# quorum queues (Celery then turns off global QoS by itself). Redis ignores it.
CELERY_TASK_DEFAULT_QUEUE_TYPE = env_str("CELERY_QUEUE_TYPE", "classic")
CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = CELERY_TASK_DEFAULT_QUEUE_TYPE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}
CELERY_BROKER_CONNECTION_TIMEOUT = env_float("CELERY_BROKER_CONNECTION_TIMEOUT", 3.0)

# --- CNET ---------------------------------------------------------------------------------
# The node a submission is "local" to when it names none.
CNET_LOCAL_NODE_ID = env_str("CNET_LOCAL_NODE_ID", socket.gethostname())
# Where an agent finds the control plane (its node API is under /api/node/): runagent --server wins.
# CNET_SERVER_URL is read above, with the hosts the web answers to.
CNET_DEFAULT_STRATEGY = env_str("CNET_DEFAULT_STRATEGY", "default")
# The highest priority a user without staff rights may give a submission (issue 15: no queue jumping).
CNET_MAX_USER_PRIORITY = env_int("CNET_MAX_USER_PRIORITY", 100)
# Heartbeat every 5 s while the fleet is small (one row write a beat; CNET_MAX_HEARTBEATS_PER_SECOND
# stretches it for a large one). Offline after 15 s of silence (the 5 s interval and Nomad's 10 s
# heartbeat_grace) puts the work of a host cut off on another host within ~17 s (tests/cluster
# measures it); a cut-off agent kills its own work just before that (Agent.fence_once).
CNET_HEARTBEAT_SECONDS = env_float("CNET_HEARTBEAT_SECONDS", 5.0)
# Beats the control plane takes per second, fleet-wide (Nomad's max_heartbeats_per_second): each
# node beats every max(CNET_HEARTBEAT_SECONDS, live nodes / this) s and goes offline after that
# interval and a grace of max(10 s, 0.3 intervals) (nodes/heartbeats.py). 250: up to 1,250 nodes
# beat every 5 s (1,000: 200/s, declared offline within 17 s with the 2 s tick); 10,000 beat every
# 40 s (offline after 52 s, declared within 54 s). A beat costs this 2-core machine ~2 ms of CPU
# (bench/fleet_heartbeat_cost.py), so 250/s is half a core; Nomad's 50 would make 10,000 nodes beat
# every 200 s; 200 would need a 50 s interval and leave a 60 s detection no room for a late beat.
CNET_MAX_HEARTBEATS_PER_SECOND = env_float("CNET_MAX_HEARTBEATS_PER_SECOND", 250.0)
# Silent for this many heartbeats: unhealthy. Silent for the grace period: offline, work lost.
# Two, so a small fleet's node is unhealthy (10 s) before it is offline (15 s), not at once.
CNET_UNHEALTHY_AFTER_BEATS = env_int("CNET_UNHEALTHY_AFTER_BEATS", 2)
CNET_OFFLINE_AFTER_SECONDS = env_float("CNET_OFFLINE_AFTER_SECONDS", 15.0)
# Joins and registrations one web process runs at once; one more is answered 503 at once with a
# Retry-After, and its agent tries again. Beats are never held back by them (as Kubernetes' API
# priority and fairness puts node heartbeats in a level of their own): a fleet registering at once
# queued thousands of slow registrations ahead of the beats of the nodes already in.
CNET_NODE_REGISTRATIONS_IN_FLIGHT = env_int("CNET_NODE_REGISTRATIONS_IN_FLIGHT", 2)
CNET_REDISPATCH_AFTER_SECONDS = env_float("CNET_REDISPATCH_AFTER_SECONDS", 30.0)
CNET_STOP_GRACE_SECONDS = env_float("CNET_STOP_GRACE_SECONDS", 10.0)
# Agent environment variables a workload sees although they look like configuration or credentials.
CNET_WORKLOAD_ENV_PASSTHROUGH = env_list("CNET_WORKLOAD_ENV_PASSTHROUGH")
CNET_LOG_DIR = Path(env_str("CNET_LOG_DIR", str(DATA_DIR / "logs")))
# A workload's output kept in the database: over this, its first and last halves (workloads/logs.py).
CNET_LOG_MAX_BYTES = env_int("CNET_LOG_MAX_BYTES", 8 * 1024 * 1024)
# Lines one log read returns at most (?lines= above it is refused; without it, the last this many).
CNET_LOG_MAX_LINES = env_int("CNET_LOG_MAX_LINES", 10_000)
# Output and events of workloads that ended longer ago than this are deleted (hourly, by beat).
CNET_LOG_RETENTION_DAYS = env_int("CNET_LOG_RETENTION_DAYS", 30)
CNET_WORK_DIR = Path(env_str("CNET_WORK_DIR", str(BASE_DIR)))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# Container safety: off unless the operator opts in.
CNET_CONTAINERS_ALLOW_PRIVILEGED = env_bool("CNET_CONTAINERS_ALLOW_PRIVILEGED", False)
CNET_CONTAINERS_ALLOW_HOST_NETWORK = env_bool("CNET_CONTAINERS_ALLOW_HOST_NETWORK", False)
CNET_CONTAINERS_ALLOW_HOST_MOUNTS = env_bool("CNET_CONTAINERS_ALLOW_HOST_MOUNTS", False)

# Control loops: liveness, re-dispatch, pending retry. Idempotent, so a short period is cheap.
CNET_CONTROL_TICK_SECONDS = env_float("CNET_CONTROL_TICK_SECONDS", 2.0)
CELERY_BEAT_SCHEDULE = {
    "control-tick": {
        "task": "workloads.control_tick",
        "schedule": CNET_CONTROL_TICK_SECONDS,
        "options": {"queue": "control", "expires": CNET_CONTROL_TICK_SECONDS * 2},
    },
    "logs-expire": {
        "task": "workloads.logs_expire",
        "schedule": 3600.0,
        "options": {"queue": "control", "expires": 3600.0},
    },
    "stranded-predictions": {
        "task": "mlmodels.dispatch_stranded_predictions",
        "schedule": 10.0,
        "options": {"queue": "control", "expires": 20.0},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
APPEND_SLASH = False

# --- Metrics (/metrics, cnetsite.metrics) ---------------------------------------------------
# Staff-only by default; true exposes it unauthenticated (bind it to a private network then).
CNET_METRICS_PUBLIC = env_bool("CNET_METRICS_PUBLIC", False)
# Dispatch latency (submit → running) covers workloads first started within this window.
CNET_METRICS_DISPATCH_WINDOW_SECONDS = env_float("CNET_METRICS_DISPATCH_WINDOW_SECONDS", 300.0)

# --- Workload containment (issue 15, workloads/executors/) ------------------------------------
# The data folder holds the secret key, the admin password, the SQLite file and the agents'
# credentials: owner only, whoever created it (a workload runs as another uid and must not enter).
if DATA_DIR.stat().st_uid == os.geteuid():
    DATA_DIR.chmod(0o700)
# An agent running as root runs each workload as its own uid from this range (leased to one
# running workload at a time), with no supplementary groups; false runs them as the agent's user.
CNET_WORKLOAD_ISOLATION = env_bool("CNET_WORKLOAD_ISOLATION", True)
CNET_WORKLOAD_UID_RANGE = env_str("CNET_WORKLOAD_UID_RANGE", "200000-299999")
# Staff's mapping of owners to named system accounts, "username=account,…": their workloads run
# as that account (with its groups) instead of a uid of the range.
CNET_WORKLOAD_ACCOUNTS = env_list("CNET_WORKLOAD_ACCOUNTS")
# Each workload's own working folder (an overlay of CNET_WORK_DIR; see docs/architecture.md).
# Outside the data folder (which workloads may not enter), on a filesystem overlayfs accepts as
# an upper layer (ext4, xfs; not overlayfs itself).
CNET_WORKSPACE_DIR = Path(env_str("CNET_WORKSPACE_DIR", "/var/lib/cnet-workspaces"))
# Processes and threads a workload may have at once, unless it asks (requirements.pids, or config.pids).
CNET_WORKLOAD_PIDS_LIMIT = env_int("CNET_WORKLOAD_PIDS_LIMIT", 4096)
# The most a submission may ask for (its requirements.pids or config.pids): the default pid_max of
# a machine with few cores, so no one workload may hold every pid a node has.
CNET_WORKLOAD_PIDS_MAX = env_int("CNET_WORKLOAD_PIDS_MAX", 32768)
# Containers: named volumes allowed to everyone (a volume named "<username>-…" is its user's own),
# networks a container may join, and the capabilities kept of the engine's set (all others dropped).
CNET_CONTAINER_VOLUMES = env_list("CNET_CONTAINER_VOLUMES")
CNET_CONTAINER_NETWORKS = env_list("CNET_CONTAINER_NETWORKS", "bridge,none")
CNET_CONTAINER_CAPABILITIES = env_list("CNET_CONTAINER_CAPABILITIES",
                                       "CHOWN,DAC_OVERRIDE,FOWNER,SETGID,SETUID,NET_BIND_SERVICE")
