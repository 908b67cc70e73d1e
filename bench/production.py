"""Django set up as production runs it, on plain HTTP, for a benchmark that starts its own Daphne:
`from bench import production` before anything that needs Django (it sets the environment its Daphne and
worker processes inherit). Throwaway keys unless set: the benchmarks store no secret."""

import base64
import os
import secrets

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")
os.environ.setdefault("HIL_LOG_LEVEL", "WARNING")
os.environ["HIL_DEBUG"] = "0"
os.environ["HIL_SECURE_SSL_REDIRECT"] = "0"
os.environ["HIL_ALLOWED_HOSTS"] = "127.0.0.1"
os.environ["HIL_QUEUE"] = f"hil-bench-{os.getpid()}"  # a queue of its own: no other worker takes its runs
if not os.environ.get("HIL_SECRET_KEY"):
    os.environ["HIL_SECRET_KEY"] = secrets.token_urlsafe(32)
if not os.environ.get("HIL_MASTER_KEY"):
    os.environ["HIL_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
django.setup()
