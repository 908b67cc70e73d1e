"""Probes for a load balancer or Kubernetes, outside /api/ and its authentication.

`/healthz` (liveness) answers without touching anything: the process serves requests.
`/readyz` (readiness) checks Postgres, Redis, and that a worker of this instance's queue took a task
within HIL_READY_WORKER_S: every task a worker starts records the time in Redis (`worker_seen`, on
Celery's task_prerun), and beat's sweep sends one every HIL_SWEEP_INTERVAL_S, so an idle but healthy
worker keeps it fresh. Asking workers over the broker (Celery's ping) would take seconds per probe."""

import asyncio
import logging
import time

import redis
import redis.asyncio
from asgiref.sync import sync_to_async
from celery.signals import task_prerun
from django.conf import settings
from django.db import connection, transaction
from django.http import JsonResponse

from core import redis as core_redis

from .middleware import RETRY_AFTER_S

log = logging.getLogger(__name__)
TIMEOUT_S = 2  # each check's bound: a probe that hangs is worse than one that fails
WORKER_KEY_TTL_S = 86_400  # only so that an instance's key does not outlive it for long


def _worker_key() -> str:
    from hil_project.celery import app  # the queue this process sends to (tests set their own)

    return f"hil:worker-seen:{app.conf.task_default_queue}"  # instances sharing a Redis do not collide


_seen_at = 0.0  # when this process last recorded itself (monotonic)


@task_prerun.connect
def worker_seen(**kwargs) -> None:
    """Record that a worker of this queue took a task: at most once a second per process, as every
    task (every run's hop) passes here."""
    global _seen_at
    if time.monotonic() - _seen_at >= 1:
        _seen_at = time.monotonic()
        worker_record()


def worker_record() -> None:
    try:
        core_redis.client().set(_worker_key(), time.time(), ex=WORKER_KEY_TTL_S)
    except (redis.RedisError, OSError) as e:  # the task itself finds out about Redis; the probe will too
        log.warning("worker heartbeat not recorded: %s", e)


def healthz(request):
    return JsonResponse({"status": "ok"})


def _postgres() -> str:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = {TIMEOUT_S * 1000}")
            cursor.execute("SELECT 1")
        return "ok"
    except Exception as e:  # whatever it is, the probe says so in one line
        log.warning("readyz: postgres: %r", e)
        return f"unavailable ({type(e).__name__})"


async def _redis_and_worker() -> tuple[str, str]:
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_timeout=TIMEOUT_S,
                                          socket_connect_timeout=TIMEOUT_S)
    try:
        await client.ping()
        seen = await client.get(_worker_key())
    except Exception as e:
        log.warning("readyz: redis: %r", e)
        return f"unavailable ({type(e).__name__})", "unknown (Redis is unavailable)"
    finally:
        await client.aclose()
    window = settings.HIL_READY_WORKER_S
    if seen is None or time.time() - float(seen) > window:
        return "ok", f"no worker took a task in the last {window:g}s"
    return "ok", "ok"


async def _postgres_bounded() -> str:
    try:
        async with asyncio.timeout(TIMEOUT_S + 1):  # connecting has no timeout unless DATABASE_URL sets one
            return await sync_to_async(_postgres)()
    except TimeoutError:
        return "timed out"


async def readyz(request):
    postgres, (redis_, worker) = await asyncio.gather(_postgres_bounded(), _redis_and_worker())
    checks = {"postgres": postgres, "redis": redis_, "worker": worker}
    if all(v == "ok" for v in checks.values()):
        return JsonResponse({"status": "ready", "checks": checks})
    response = JsonResponse({"status": "unavailable", "checks": checks}, status=503)
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response
