from celery import shared_task

from . import cache


@shared_task(time_limit=300)
def llm_cache_expire_task() -> int:
    return cache.expired_delete()
