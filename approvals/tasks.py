from celery import shared_task

from . import services


@shared_task(time_limit=60)
def approvals_expire_task() -> int:
    return services.approvals_expire()


@shared_task(time_limit=60)
def tickets_release_task() -> int:
    return services.tickets_release_expired()
