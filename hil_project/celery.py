import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hil_project.settings")

app = Celery("hil_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _beat_schedule_folder(sender, **kwargs):
    os.makedirs(os.path.dirname(sender.conf.beat_schedule_filename), exist_ok=True)
