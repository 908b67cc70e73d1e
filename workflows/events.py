"""Run events: the database row is the truth; a Redis publish after commit is the doorbell.

Clients that miss a doorbell lose nothing: they read `?after=<seq>` from the database."""

import logging

import redis
from django.db import connection, transaction
from django.utils import timezone

from core import redis as core_redis
from core import tracing

from .models import Run, RunEvent

log = logging.getLogger(__name__)


def doorbell_channel(tenant_id: int, stream) -> str:
    """A tenant's doorbell for one stream: a run's id, `conversation-<id>` (its messages), or `desk`."""
    return f"hil:t{tenant_id}:run:{stream}"


def events_append(run, *events: tuple[str, dict]) -> None:
    """Append events to `run` in the caller's transaction, numbered after its last one."""
    assert connection.in_atomic_block, "events are appended inside the transaction that caused them"
    run.last_seq = run_commit(run, where=("TRUE", []), fields={}, events=list(events)).last_seq


class SQL:
    """A field value that the database computes, such as a time on its own clock."""

    def __init__(self, sql: str, params: tuple = ()):
        self.sql, self.params = sql, list(params)


def db_now(plus_s: float = 0) -> SQL:
    """The database's clock, `plus_s` seconds on: every worker compares leases and wake-ups against it."""
    return SQL("clock_timestamp() + make_interval(secs => %s)", (plus_s,))


def run_commit(run: Run, *, lease: str | None = None, where: tuple[str, list] | None = None, fields: dict,
                events: list[tuple[str, dict]], rows: tuple = ()) -> Run | None:
    """Update the run, insert `rows` and append `events` numbered after its last one, in one statement
    (atomic on its own), only if the run is still held under `lease` or matches `where`. Returns the
    updated run, or None. The doorbell rings after commit.

    Every run event is written here. It is the engine's hot path: one round trip per step."""
    if where is None:
        where = ("status = %s AND lease_owner = %s", [Run.Status.RUNNING, lease])
    sets, params = [], []
    for name, value in fields.items():
        field = Run._meta.get_field(name)
        if isinstance(value, SQL):
            sets.append(f"{field.column} = {value.sql}")
            params += value.params
        else:
            sets.append(f"{field.column} = %s")
            params.append(field.get_db_prep_save(value, connection))
    sets.append(f"last_seq = last_seq + {len(events)}")
    sql = [f"WITH r AS (UPDATE {Run._meta.db_table} SET {', '.join(sets)} WHERE id = %s AND ({where[0]}) RETURNING *)"]
    params += [run.id, *where[1]]
    now, trace_id = timezone.now(), tracing.trace_id()
    for i, row in enumerate((*[RunEvent(tenant_id=run.tenant_id, run_id=run.id, seq=0, type=type_, data=data, ts=now,
                                        trace_id=trace_id) for type_, data in events], *rows)):
        columns = [f for f in row._meta.concrete_fields if not f.primary_key or f.name == "id" and row.pk]
        values = [f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in columns]
        placeholders = ["%s"] * len(columns)
        if isinstance(row, RunEvent):  # numbered after the run's last event, in order
            placeholders[columns.index(RunEvent._meta.get_field("seq"))] = f"r.last_seq - {len(events) - 1 - i}"
            values.pop(columns.index(RunEvent._meta.get_field("seq")))
        sql.append(f", i{i} AS (INSERT INTO {row._meta.db_table} ({', '.join(f.column for f in columns)})"
                   f" SELECT {', '.join(placeholders)} FROM r)")
        params += values
    with connection.cursor() as cursor:
        cursor.execute(" ".join(sql) + " SELECT * FROM r", params)
        found = cursor.fetchone()
        if found is None:
            return None
        returned = dict(zip((c.name for c in cursor.description), found, strict=True))
    run_fields = Run._meta.concrete_fields
    updated = Run.from_db(connection.alias, [f.attname for f in run_fields], [
        f.from_db_value(returned[f.column], None, connection) if hasattr(f, "from_db_value") else returned[f.column]
        for f in run_fields])
    transaction.on_commit(lambda: doorbell_ring(updated.tenant_id, updated.id, updated.last_seq))
    return updated


def doorbell_ring(tenant_id: int, stream, seq: int = 0, text: str = "") -> None:
    """Ring the stream's doorbell with its last seq and, where given, the message it is about (`seq text`):
    a listener that has seen every seq before it sends that without reading the database."""
    try:
        core_redis.client().publish(doorbell_channel(tenant_id, stream), f"{seq} {text}" if text else seq)
    except redis.RedisError as e:  # listeners catch up from the database
        log.warning("doorbell for %s not rung: %s", stream, e)


def conversation_stream(conversation_id) -> str:
    return f"conversation-{conversation_id}"


def message_rung(message) -> None:
    """Ring the conversation's doorbell once the message is committed (a console shows it live)."""
    transaction.on_commit(lambda: doorbell_ring(message.tenant_id, conversation_stream(message.conversation_id)))


def events_after(run, after: int, limit: int = 1000) -> list[dict]:
    return [e.envelope() for e in RunEvent.objects.filter(run=run, seq__gt=after).order_by("seq")[:limit]]
