import time

from celery import shared_task
from django.utils import timezone

from . import rollups, slos


@shared_task(time_limit=120, soft_time_limit=110)
def rollup_task() -> None:
    """Every minute (beat): the rollups up to now, then the SLOs against them, once they are caught up, and old
    minute rows pruned. A rollup far behind (its worker was down) goes on at the next beat after 50 s of work."""
    now = timezone.now()
    if rollups.rollup(now=now, deadline=time.monotonic() + 50):
        slos.slos_evaluate(now=now)
        rollups.prune(now=now)
