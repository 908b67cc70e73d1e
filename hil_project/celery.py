import os
import sys

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")

app = Celery("hil_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _beat_schedule_folder(sender, **kwargs):
    os.makedirs(os.path.dirname(sender.conf.beat_schedule_filename), exist_ok=True)


@worker_init.connect
def _worker_checks(sender, **kwargs):
    """A step that overstays its deadline is stopped by killing the worker child that runs it (its watch,
    and the task's hard time limit behind it): only the prefork pool survives that without losing other work.
    A worker runs one task at a time per process, so it keeps its database connections between
    tasks (the web process does not: see settings)."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool
    from django.conf import settings

    pool = get_implementation(sender.pool_cls)
    if not issubclass(pool, TaskPool):
        sys.exit(f"HIL needs the prefork pool (-P prefork), not {pool.__module__}: it stops a step that overstays "
                 "its deadline by killing the worker child that runs it, which no other pool can do.")
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 60


@worker_process_init.connect
def _watch_steps(**kwargs):
    from workflows.engine import steps_stopped_when_overstaying

    steps_stopped_when_overstaying()


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs):
    from django.db import close_old_connections

    close_old_connections()


from . import health  # noqa: E402,F401  (each task a worker takes is recorded in Redis for /readyz)
