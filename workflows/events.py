"""Run events: the database row is the truth; a Redis publish after commit is the doorbell.

Clients that miss a doorbell lose nothing: they read `?after=<seq>` from the database."""

import logging

import redis
import redis.asyncio
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from .models import RunEvent

log = logging.getLogger(__name__)
_client: redis.Redis | None = None


def doorbell_channel(tenant_id: int, run_id) -> str:
    return f"hil:t{tenant_id}:run:{run_id}"


def events_append(run, *events: tuple[str, dict]) -> list[RunEvent]:
    """Append events to `run` in the caller's transaction, numbered after its last one."""
    assert connection.in_atomic_block, "events are appended inside the transaction that caused them"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE workflows_run SET last_seq = last_seq + %s WHERE id = %s RETURNING last_seq",
            [len(events), run.id],
        )
        last = cursor.fetchone()[0]
    now = timezone.now()
    first = last - len(events) + 1
    rows = RunEvent.objects.bulk_create(
        RunEvent(tenant_id=run.tenant_id, run_id=run.id, seq=first + i, type=type_, data=data, ts=now)
        for i, (type_, data) in enumerate(events)
    )
    run.last_seq = last
    tenant_id, run_id = run.tenant_id, run.id
    transaction.on_commit(lambda: doorbell_ring(tenant_id, run_id, last))
    return rows


def doorbell_ring(tenant_id: int, run_id, seq: int) -> None:
    global _client
    try:
        if _client is None:
            _client = redis.Redis.from_url(settings.REDIS_URL)
        _client.publish(doorbell_channel(tenant_id, run_id), seq)
    except redis.RedisError as e:  # listeners catch up from the database
        log.warning("doorbell for run %s not rung: %s", run_id, e)


async def doorbell_subscribe(tenant_id: int, run_id):
    """A Redis pub/sub subscribed to one run's doorbell; the caller closes it."""
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    pubsub = client.pubsub()
    await pubsub.subscribe(doorbell_channel(tenant_id, run_id))
    return pubsub


def events_after(run, after: int, limit: int = 1000) -> list[dict]:
    return [e.envelope() for e in RunEvent.objects.filter(run=run, seq__gt=after).order_by("seq")[:limit]]
