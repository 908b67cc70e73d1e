import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")

app = Celery("hil_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _beat_schedule_folder(sender, **kwargs):
    os.makedirs(os.path.dirname(sender.conf.beat_schedule_filename), exist_ok=True)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs):
    from django.db import close_old_connections

    close_old_connections()
