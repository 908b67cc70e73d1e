"""Settings come from the environment only (see README for the variables)."""

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from core.keys import master_key_from_text

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).lower() in {"1", "true", "yes", "on"}


DEBUG = env_bool("HIL_DEBUG")
SECRET_KEY = os.environ.get("HIL_SECRET_KEY") or ("insecure-dev-key" if DEBUG else None)
if not SECRET_KEY:
    raise RuntimeError("HIL_SECRET_KEY must be set (or HIL_DEBUG=1 for development)")
# The master key of the tenants' secrets (tools.Secret): the base64 of 32 random bytes, from which each
# tenant's AES-256-GCM key is derived. `manage.py hil_secrets rotate` re-encrypts every secret under a new one.
if os.environ.get("HIL_MASTER_KEY"):
    try:
        HIL_MASTER_KEY = master_key_from_text(os.environ["HIL_MASTER_KEY"])
    except ValueError as e:
        raise RuntimeError(f"HIL_MASTER_KEY: {e}") from None
elif DEBUG:
    # Development and tests only: a key derived from the secret key, so that nothing needs setting. Secrets
    # stored under it cannot be read once HIL_SECRET_KEY changes, and it is no secret without HIL_SECRET_KEY.
    HIL_MASTER_KEY = hashlib.sha256(b"hil-dev-master-key:" + SECRET_KEY.encode()).digest()
else:
    raise RuntimeError("HIL_MASTER_KEY must be set (or HIL_DEBUG=1 for development): the base64 of 32 random bytes")
ALLOWED_HOSTS = os.environ.get("HIL_ALLOWED_HOSTS", "localhost,127.0.0.1,testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("HIL_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
# The demo (`make run`): no secret key of its own and the embedded database, or HIL_DEMO=1. Only then
# may `hil_seed` create users with a known password.
HIL_DEMO = env_bool("HIL_DEMO", not os.environ.get("HIL_SECRET_KEY") and bool(os.environ.get("HIL_EMBEDDED_PGDATA")))

# HTTPS only, unless in development or the demo, which serve plain http://127.0.0.1. Each can be set.
HTTPS_ONLY = not (DEBUG or HIL_DEMO)
SECURE_SSL_REDIRECT = env_bool("HIL_SECURE_SSL_REDIRECT", HTTPS_ONLY)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # a load balancer's or kubelet's probes come over plain HTTP
SESSION_COOKIE_SECURE = env_bool("HIL_SESSION_COOKIE_SECURE", HTTPS_ONLY)
CSRF_COOKIE_SECURE = env_bool("HIL_CSRF_COOKIE_SECURE", HTTPS_ONLY)
SECURE_HSTS_SECONDS = int(os.environ.get("HIL_SECURE_HSTS_SECONDS", 365 * 86_400 if HTTPS_ONLY else 0))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HIL_SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS_ONLY)
SECURE_HSTS_PRELOAD = env_bool("HIL_SECURE_HSTS_PRELOAD", HTTPS_ONLY)
# Only behind a proxy that sets this header on every request (`daphne --proxy-headers` does the same
# job inside Daphne): e.g. HIL_PROXY_SSL_HEADER=X-Forwarded-Proto.
if os.environ.get("HIL_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + os.environ["HIL_PROXY_SSL_HEADER"].upper().replace("-", "_"), "https")

INSTALLED_APPS = [
    "daphne",
    "hil_project.apps.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "accounts",
    "workflows",
    "agents",
    "tools",
    "approvals",
    "analytics",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
]

MIDDLEWARE = [
    "core.tracing.TraceMiddleware",
    "hil_project.middleware.ApiErrorsAsJson",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

# Login throttling (django-axes) for the admin and any session login: after HIL_LOGIN_FAILURE_LIMIT
# failed logins for one username from one address, that pair is refused for HIL_LOGIN_COOLOFF_MIN
# minutes (counted again from each refused try). A success clears the count. Behind a proxy, run
# `daphne --proxy-headers` so that the address is the client's, not the proxy's.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(os.environ.get("HIL_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("HIL_LOGIN_COOLOFF_MIN", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_VERBOSE = False  # its start-up banner in every process says nothing an operator acts on
AXES_RESET_ON_SUCCESS = True
AXES_COOLOFF_MESSAGE = (f"Too many failed logins for this user from your address: logins are refused for "
                        f"{AXES_COOLOFF_TIME.total_seconds() / 60:g} minutes after the last try.")

# Two factors for every member, in the console and the admin alike (accounts/views.py): a password, then a
# TOTP code or a backup code. Each device refuses codes for a time that doubles after each wrong one.
LOGIN_URL = "signin"
OTP_TOTP_ISSUER = "HIL"
# A console claims a ticket under a lease that it renews while it is open: a closed tab gives the ticket
# back to the queue this long after its last renewal (approvals/consumers.py).
HIL_CLAIM_LEASE_S = float(os.environ.get("HIL_CLAIM_LEASE_S", "60"))

ROOT_URLCONF = "hil_project.urls"
ASGI_APPLICATION = "hil_project.asgi.application"
WSGI_APPLICATION = None

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

if not os.environ.get("DATABASE_URL"):
    raise RuntimeError("DATABASE_URL must be set (make run / make test start an embedded Postgres)")
# No persistent connections: under Daphne each request may run on a thread of its own, and a
# connection kept per thread would leak (Django's advice for ASGI). Celery workers, one task at a time
# per process, keep theirs (hil_project/celery.py). Connections are checked before reuse.
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=0, conn_health_checks=True)}
# Parameters sent apart from the SQL (not quoted into it in Python), and repeated statements prepared.
DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
if os.environ.get("HIL_TEST_DATABASE"):  # lets test sessions run side by side on one server
    DATABASES["default"]["TEST"] = {"NAME": os.environ["HIL_TEST_DATABASE"]}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "hil",
    }
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": "hil:channels"},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# API request bodies: bigger ones are a 413, deeper ones a 400.
HIL_MAX_BODY_BYTES = int(os.environ.get("HIL_MAX_BODY_BYTES", str(1024 * 1024)))
HIL_MAX_JSON_DEPTH = int(os.environ.get("HIL_MAX_JSON_DEPTH", "32"))
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.auth.BearerTokenAuthentication",
                                       "accounts.auth.SessionMemberAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.auth.TenantRolePermission"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "hil_project.api.Pagination",
    "PAGE_SIZE": 100,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["hil_project.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "hil_project.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "HIL API",
    "DESCRIPTION": "Run LLM agent workflows with humans in the loop.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ConversationStatus": "workflows.models.Conversation.Status",
        "RunStatus": "workflows.models.Run.Status",
        "ApprovalStatus": "approvals.models.ApprovalRequest.Status",
        "HandoverStatus": "approvals.models.HandoverTicket.Status",
    },
}

# Celery: one broker (Redis); the database is the source of truth for every run.
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT = "hil_project.broker:Transport"  # kombu's, with a worker crash on Redis loss mended
# A task that cannot be sent at once is left to the sweeper (the run is queued in Postgres): a request
# must not wait seconds for Redis (kombu would retry for 6 s). Workers reconnect by their own settings.
CELERY_BROKER_TRANSPORT_OPTIONS = {"max_retries": 0, "socket_connect_timeout": 1}
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("HIL_QUEUE", "hil")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Keep each worker's database connection between tasks (Celery closes it after every task
# otherwise); hil_project/celery.py still drops connections that broke or outlived CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = 1000

# The engine (see README, "Settings"): a worker holds a run under a lease of HIL_LEASE_S, which a
# heartbeat extends while a step runs; the sweeper sends again the tasks of runs whose lease expired
# (their worker died) or that no worker took HIL_RESEND_AFTER_S after they were due.
HIL_LEASE_S = float(os.environ.get("HIL_LEASE_S", "30"))
HIL_STEP_GRACE_S = float(os.environ.get("HIL_STEP_GRACE_S", "10"))
HIL_MAX_CLAIMS = int(os.environ.get("HIL_MAX_CLAIMS", "3"))
HIL_RESEND_AFTER_S = float(os.environ.get("HIL_RESEND_AFTER_S", "30"))
HIL_RESEND_MAX_S = float(os.environ.get("HIL_RESEND_MAX_S", "600"))
HIL_MAX_OUTPUT_BYTES = int(os.environ.get("HIL_MAX_OUTPUT_BYTES", str(1024 * 1024)))
HIL_SWEEP_INTERVAL_S = float(os.environ.get("HIL_SWEEP_INTERVAL_S", "10"))
# How many threads (each with its connection) read the database for one process's event-stream and
# WebSocket clients: Postgres connections stay bounded whatever the number of clients.
HIL_STREAM_DB_READS = int(os.environ.get("HIL_STREAM_DB_READS", "4"))
# /readyz fails when no worker started a task (the sweep is one) for this long.
HIL_READY_WORKER_S = float(os.environ.get("HIL_READY_WORKER_S", "60"))
# A model's circuit breaker (agents/breaker.py) opens after HIL_BREAKER_FAILURES failures within
# HIL_BREAKER_WINDOW_S, then refuses calls for HIL_BREAKER_COOLDOWN_S before letting one probe through.
HIL_BREAKER_FAILURES = int(os.environ.get("HIL_BREAKER_FAILURES", "5"))
HIL_BREAKER_WINDOW_S = float(os.environ.get("HIL_BREAKER_WINDOW_S", "60"))
HIL_BREAKER_COOLDOWN_S = float(os.environ.get("HIL_BREAKER_COOLDOWN_S", "30"))
HIL_LLM_CALL_TIMEOUT_S = float(os.environ.get("HIL_LLM_CALL_TIMEOUT_S", "60"))  # one model call, within the step's deadline
# The router's caches (agents/cache.py) keep an answer this long; 0 turns both off. A semantic hit needs a
# cosine similarity of at least HIL_LLM_SEMANTIC_THRESHOLD between the last user messages (MiniLM puts
# "refund for order 5" and "refund for order 6" at 0.87: lower thresholds serve one order's answer to another).
HIL_LLM_CACHE_TTL_S = int(os.environ.get("HIL_LLM_CACHE_TTL_S", "86400"))
HIL_LLM_SEMANTIC_THRESHOLD = float(os.environ.get("HIL_LLM_SEMANTIC_THRESHOLD", "0.95"))
CELERY_BEAT_SCHEDULE = {
    "runs-sweep": {"task": "workflows.tasks.runs_sweep_task", "schedule": HIL_SWEEP_INTERVAL_S},
    "approvals-expire": {"task": "approvals.tasks.approvals_expire_task", "schedule": HIL_SWEEP_INTERVAL_S},
    "tickets-release": {"task": "approvals.tasks.tickets_release_task", "schedule": HIL_SWEEP_INTERVAL_S},
    # Expired answers are never served; this only gives their space back.
    "llm-cache-expire": {"task": "agents.tasks.llm_cache_expire_task", "schedule": 3600},
    # Rollups of the last minutes, then SLO burn-rate alerts; a send not taken within the minute is dropped.
    "analytics-rollup": {"task": "analytics.tasks.rollup_task", "schedule": 60, "options": {"expires": 55}},
}
# Modules imported at start-up that register custom agents (comma-separated).
HIL_AGENT_MODULES = [m for m in os.environ.get("HIL_AGENT_MODULES", "").split(",") if m]
# The demo's order data: the Chinook sample database, read-only.
HIL_ORDERS_DB = os.environ.get("HIL_ORDERS_DB", str(BASE_DIR / "data" / "chinook" / "chinook.sqlite"))
# Data sources that are files (SQLite, DuckDB) live in a folder per tenant under this one: <dir>/<tenant slug>/.
HIL_DATA_DIR = os.environ.get("HIL_DATA_DIR", str(BASE_DIR / ".data" / "sources"))
# A PostgreSQL data source may not be the server HIL keeps its own rows on (it would read every tenant's), unless
# this is on (tests put their copy of the sample data there).
HIL_DATA_SOURCES_ON_OWN_SERVER = os.environ.get("HIL_DATA_SOURCES_ON_OWN_SERVER") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # JSON lines (hil_project/logs.py); HIL_LOG_FORMAT=text for plain lines.
    "formatters": {"json": {"()": "hil_project.logs.JsonFormatter"},
                   "text": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": os.environ.get("HIL_LOG_FORMAT", "json")}},
    "root": {"handlers": ["console"], "level": os.environ.get("HIL_LOG_LEVEL", "INFO")},
    # sqlglot warns of each statement it reads as a generic command, which the SQL guard then refuses anyway. httpx
    # (and httpx2, the `openai` client's) log each request with its URL: a line per model or tool call, which their
    # llm.call and tool events record already, and a URL may carry a token.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "sqlglot": {"level": "ERROR"},
                "httpx": {"level": "WARNING"}, "httpx2": {"level": "WARNING"}},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / ".data" / "celerybeat-schedule")
