"""Rollups: what each workflow version did per minute, hour and day, so that charts and SLOs never read raw runs.

`rollup()` recomputes, in SQL, the minute rows of a recent window from runs, steps, tool calls, model calls and
audited tool refusals, then the hour rows those minutes fall in from the minute rows, and the day rows from the
hour rows. The window starts LAG before now, so that a row committed a little after its timestamp (a model
call is written with its step's outcome) is still counted, or at the watermark when that is earlier (a worker
was down). Each chunk of the window is one transaction under an advisory lock: concurrent rollups never
interleave, and recomputing a bucket gives the same row again.

Run latency is a histogram over LATENCY_BOUNDS_MS, 20 slots a decade (each slot's upper bound is 12% above its
lower one), so that percentiles of any merge of rows come from summed histograms. A percentile is reported as
the upper bound of its slot: at most 12% above the true value.
"""

import json
import math
import time
from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import AuditEntry, Tenant
from agents.models import LLMCall
from tools.models import ToolCall
from workflows.models import Run, Step, WorkflowVersion

from .models import Period, Rollup, Satisfaction, Watermark, WorkflowKpi

LATENCY_BOUNDS_MS = tuple(round(10 ** (i / 20)) for i in range(20, 161))  # 10 ms to 10^8 ms (28 h)
MINUTES_KEPT = timedelta(days=8)  # minute rows serve the 1h and 6h charts and the SLO windows; hours and days stay
LAG = timedelta(minutes=5)  # model calls of steps that run longer than this before committing are missed
CHUNK = timedelta(hours=1)  # catching up, one transaction per hour of minutes
TOP_REASONS = 20  # failure reasons kept per row
LOCK_KEY = 0x616E616C79746963  # pg advisory lock: one rollup at a time
WATERMARK = "rollup"
UNITS = {Period.MINUTE: timedelta(minutes=1), Period.HOUR: timedelta(hours=1), Period.DAY: timedelta(days=1)}

COUNTS = ["runs", "finished", "handover", "failed", "cancelled", "cost", "llm_calls", "llm_failures",
          "llm_tokens_in", "llm_tokens_out", "llm_cost", "llm_cache_hits", "llm_saved_cost", "tool_calls",
          "tool_failures", "tool_refusals", "revenue", "csat_responses", "csat_score_sum", "csat_satisfied"]
CALL_COUNTS = [c for c in COUNTS if c.startswith(("llm_", "tool_"))]
MAPS = ["latency_hist", "node_steps", "node_failures", "node_ms", "failure_reasons"]
KEY = ["tenant_id", "workflow_id", "workflow_version_id", "bucket"]
_T = {"run": Run._meta.db_table, "version": WorkflowVersion._meta.db_table, "step": Step._meta.db_table,
      "tool_call": ToolCall._meta.db_table, "llm_call": LLMCall._meta.db_table, "audit": AuditEntry._meta.db_table,
      "tenant": Tenant._meta.db_table, "rollup": Rollup._meta.db_table, "satisfaction": Satisfaction._meta.db_table,
      "kpi": WorkflowKpi._meta.db_table}

# Every source grouped by KEY over the minute buckets of [start, end), then joined into one row per key.
_MINUTES_SQL = """
WITH run AS MATERIALIZED (
  SELECT r.id, r.tenant_id, v.workflow_id, r.workflow_version_id, date_trunc('minute', r.finished_at, 'UTC') AS bucket,
         r.status, r.sink, r.cost, r.revenue, extract(epoch FROM r.finished_at - r.created_at) * 1000 AS ms
  FROM {run} r JOIN {version} v ON v.id = r.workflow_version_id
  WHERE r.finished_at >= %(start)s AND r.finished_at < %(end)s
), runs AS (
  SELECT tenant_id, workflow_id, workflow_version_id, bucket, count(*) AS runs,
         count(*) FILTER (WHERE status = 'done' AND sink = 'FINISH') AS finished,
         count(*) FILTER (WHERE status = 'done' AND sink = 'HANDOVER') AS handover,
         count(*) FILTER (WHERE status = 'failed') AS failed,
         count(*) FILTER (WHERE status = 'cancelled') AS cancelled, sum(cost) AS cost, sum(revenue) AS revenue
  FROM run GROUP BY 1, 2, 3, 4
), latency AS (
  SELECT tenant_id, workflow_id, workflow_version_id, bucket, jsonb_object_agg(slot, n) AS latency_hist
  FROM (SELECT tenant_id, workflow_id, workflow_version_id, bucket,
               width_bucket(ms, %(bounds)s::numeric[]) AS slot, count(*) AS n
        FROM run WHERE status <> 'cancelled' GROUP BY 1, 2, 3, 4, 5) slots
  GROUP BY 1, 2, 3, 4
), node AS (
  SELECT run.tenant_id, run.workflow_id, run.workflow_version_id, run.bucket, s.node_id, count(*) AS steps,
         count(*) FILTER (WHERE s.status = 'failed') AS failures,
         sum(extract(epoch FROM s.finished_at - s.started_at) * 1000) AS ms
  FROM run JOIN {step} s ON s.run_id = run.id GROUP BY 1, 2, 3, 4, 5
), nodes AS (
  SELECT tenant_id, workflow_id, workflow_version_id, bucket, jsonb_object_agg(node_id, steps) AS node_steps,
         coalesce(jsonb_object_agg(node_id, failures) FILTER (WHERE failures > 0), '{{}}') AS node_failures,
         jsonb_object_agg(node_id, ms) AS node_ms
  FROM node GROUP BY 1, 2, 3, 4
), reason AS (
  SELECT run.tenant_id, run.workflow_id, run.workflow_version_id, run.bucket,
         s.node_id || ': ' || left(s.error, 200) AS reason, count(*) AS n
  FROM run JOIN {step} s ON s.run_id = run.id WHERE s.status = 'failed' GROUP BY 1, 2, 3, 4, 5
), reasons AS (
  SELECT tenant_id, workflow_id, workflow_version_id, bucket, jsonb_object_agg(reason, n) AS failure_reasons
  FROM (SELECT *, row_number() OVER (PARTITION BY tenant_id, workflow_id, workflow_version_id, bucket
                                     ORDER BY n DESC, reason) AS rank FROM reason) ranked
  WHERE rank <= %(top)s GROUP BY 1, 2, 3, 4
), tools AS (
  SELECT run.tenant_id, run.workflow_id, run.workflow_version_id, run.bucket, count(*) AS tool_calls,
         count(*) FILTER (WHERE t.status = 'failed') AS tool_failures
  FROM run JOIN {tool_call} t ON t.run_id = run.id GROUP BY 1, 2, 3, 4
), llm AS (
  SELECT c.tenant_id, v.workflow_id, r.workflow_version_id, date_trunc('minute', c.created_at, 'UTC') AS bucket,
         count(*) AS llm_calls, count(*) FILTER (WHERE c.outcome <> 'ok') AS llm_failures,
         sum(c.tokens_in) AS llm_tokens_in, sum(c.tokens_out) AS llm_tokens_out, sum(c.cost) AS llm_cost,
         count(*) FILTER (WHERE c.cache <> '') AS llm_cache_hits, sum(c.saved_cost) AS llm_saved_cost
  FROM {llm_call} c JOIN {run} r ON r.id = c.run_id JOIN {version} v ON v.id = r.workflow_version_id
  -- the index is (tenant, created_at): one range scan per tenant
  WHERE c.tenant_id = ANY(ARRAY(SELECT id FROM {tenant})) AND c.created_at >= %(start)s AND c.created_at < %(end)s
  GROUP BY 1, 2, 3, 4
), refused AS MATERIALIZED (  -- filtered before object_id is read as a run's id
  SELECT object_id::uuid AS run_id, created_at FROM {audit}
  WHERE action = 'tool.refused' AND object_type = 'workflows.Run' AND created_at >= %(start)s AND created_at < %(end)s
), refusals AS (
  SELECT r.tenant_id, v.workflow_id, r.workflow_version_id, date_trunc('minute', a.created_at, 'UTC') AS bucket,
         count(*) AS tool_refusals
  FROM refused a JOIN {run} r ON r.id = a.run_id JOIN {version} v ON v.id = r.workflow_version_id
  GROUP BY 1, 2, 3, 4
), csat AS (
  SELECT s.tenant_id, v.workflow_id, r.workflow_version_id, date_trunc('minute', s.created_at, 'UTC') AS bucket,
         count(*) AS csat_responses, sum(s.score) AS csat_score_sum,
         count(*) FILTER (WHERE s.score >= 4) AS csat_satisfied
  FROM {satisfaction} s JOIN {run} r ON r.id = s.run_id JOIN {version} v ON v.id = r.workflow_version_id
  WHERE s.created_at >= %(start)s AND s.created_at < %(end)s
  GROUP BY 1, 2, 3, 4
), keys AS (
  SELECT tenant_id, workflow_id, workflow_version_id, bucket FROM runs
  UNION SELECT tenant_id, workflow_id, workflow_version_id, bucket FROM llm
  UNION SELECT tenant_id, workflow_id, workflow_version_id, bucket FROM refusals
  UNION SELECT tenant_id, workflow_id, workflow_version_id, bucket FROM csat
)
INSERT INTO {rollup} (tenant_id, workflow_id, workflow_version_id, bucket, period, {counts}, {maps})
SELECT keys.*, 'minute', {counts_or_zero}, {maps_or_empty}
FROM keys LEFT JOIN runs USING ({key}) LEFT JOIN latency USING ({key}) LEFT JOIN nodes USING ({key})
     LEFT JOIN reasons USING ({key}) LEFT JOIN tools USING ({key}) LEFT JOIN llm USING ({key})
     LEFT JOIN refusals USING ({key}) LEFT JOIN csat USING ({key})
""".format(**_T, key=", ".join(KEY), counts=", ".join(COUNTS), maps=", ".join(MAPS),
           counts_or_zero=", ".join(f"coalesce({c}, 0)" for c in COUNTS),
           maps_or_empty=", ".join(f"coalesce({m}, '{{}}')" for m in MAPS))


def sum_maps(rows: str, keys: list[str], maps: list[str]) -> str:
    """A query of `keys` and `maps`, the JSON object {map: {key: total}} of the `maps` columns of the CTE `rows`
    summed key by key per value of `keys`: one pass over all the maps' pairs, grouped. (An aggregate merging the maps
    a row at a time took ten times as long, 40-55 µs a row and map.)"""
    pairs = " UNION ALL ".join(f"SELECT '{m}' AS map, key, value FROM jsonb_each_text({rows}.{m})" for m in maps)
    by = "".join(f"{k}, " for k in keys)
    return (f"SELECT {by}jsonb_object_agg(map, sums) AS maps FROM ("
            f"SELECT {by}map, jsonb_object_agg(key, total) AS sums FROM ("
            f"SELECT {by}pair.map, pair.key, sum(pair.value::numeric) AS total FROM {rows}, LATERAL ({pairs}) pair "
            f"GROUP BY {by}pair.map, pair.key) totals GROUP BY {by}map) per_map"
            + (f" GROUP BY {by[:-2]}" if keys else ""))


def summed(rows: str, keys: list[str], sums: str, maps: list[str], join: str = "") -> str:
    """A query of `keys`, `sums` (a select list over the CTE `rows` and `join`, maybe empty) and `maps`, each the
    column of summed maps of that name, over the rows grouped by `keys` (or all of them as one row)."""
    prefixed = ", ".join(f"{rows}.{k}" for k in keys)
    grouped = (f"SELECT {', '.join(filter(None, [prefixed, sums]))} FROM {rows} {join}"
               + (f" GROUP BY {prefixed}" if keys else ""))
    if not maps:
        return grouped
    columns = "".join(f", coalesce(m.maps->'{m}', '{{}}') AS {m}" for m in maps)
    on = f"USING ({', '.join(keys)})" if keys else "ON true"
    return f"SELECT c.*{columns} FROM ({grouped}) c LEFT JOIN ({sum_maps(rows, keys, maps)}) m {on}"


# The rows of a coarser period from those of the next finer one, over whole buckets [start, end).
_MERGE_SQL = """
INSERT INTO {rollup} (tenant_id, workflow_id, workflow_version_id, bucket, {counts}, period, {maps})
WITH finer AS MATERIALIZED (
  SELECT tenant_id, workflow_id, workflow_version_id, date_trunc(%(period)s, bucket, 'UTC') AS bucket, {counts}, {maps}
  FROM {rollup} WHERE period = %(finer)s AND bucket >= %(start)s AND bucket < %(end)s
)
SELECT {key}, {counts}, %(period)s, {maps_but_reasons}, analytics_jsonb_top(failure_reasons, %(top)s)
FROM ({summed}) merged
""".format(**_T, key=", ".join(KEY), counts=", ".join(COUNTS), maps=", ".join(MAPS),
           maps_but_reasons=", ".join(m for m in MAPS if m != "failure_reasons"),
           summed=summed("finer", KEY, ", ".join(f"sum(finer.{c}) AS {c}" for c in COUNTS), MAPS))


def rollup(*, now: datetime | None = None, deadline: float | None = None) -> bool:
    """Bring the rollups up to `now`, a chunk at a time. True once caught up; False when past `deadline`
    (time.monotonic()) first, or when another rollup holds the lock (it covers the same minutes)."""
    now = now or timezone.now()
    end = floor(now, Period.MINUTE) + UNITS[Period.MINUTE]
    start = _window_start(now)
    while start < end:
        if deadline is not None and time.monotonic() > deadline:
            return False
        upto = min(start + CHUNK, end)
        if not _rollup_chunk(start, upto, now):
            return False
        start = upto
    return True


def prune(*, now: datetime | None = None) -> int:
    """Delete the minute rows older than MINUTES_KEPT (their hours and days are kept); how many went."""
    return Rollup.objects.filter(period=Period.MINUTE, bucket__lt=(now or timezone.now()) - MINUTES_KEPT).delete()[0]


def _window_start(now: datetime) -> datetime:
    """LAG before now, or the watermark when that is earlier; on the first rollup, the first run's end."""
    watermark = Watermark.objects.filter(name=WATERMARK).values_list("until", flat=True).first()
    if watermark is None:
        watermark = Run.objects.filter(finished_at__isnull=False).order_by("finished_at").values_list(
            "finished_at", flat=True).first() or now
    return floor(min(watermark, now - LAG), Period.MINUTE)


def _rollup_chunk(start: datetime, end: datetime, now: datetime) -> bool:
    """Recompute the minute rows of [start, end) and the hour and day rows they fall in; False if locked out.
    The watermark moves to `end`, or to LAG before now for the minutes late rows may still join."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
        if not cursor.fetchone()[0]:
            return False
        _replace(cursor, Period.MINUTE, start, end, _MINUTES_SQL, {"bounds": list(LATENCY_BOUNDS_MS)})
        outer_start, outer_end = start, end
        for finer, period in ((Period.MINUTE, Period.HOUR), (Period.HOUR, Period.DAY)):
            outer_start, outer_end = floor(outer_start, period), ceil(outer_end, period)
            _replace(cursor, period, outer_start, outer_end, _MERGE_SQL, {"period": period, "finer": finer})
        Watermark.objects.update_or_create(name=WATERMARK, defaults={"until": min(end, now - LAG)})
    return True


def _replace(cursor, period: str, start: datetime, end: datetime, sql: str, params: dict) -> None:
    cursor.execute(f"DELETE FROM {_T['rollup']} WHERE period = %s AND bucket >= %s AND bucket < %s",
                   [period, start, end])
    cursor.execute(sql, {**params, "start": start, "end": end, "top": TOP_REASONS})


def floor(moment: datetime, period: str) -> datetime:
    moment = moment.astimezone(UTC)
    if period == Period.DAY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Period.HOUR:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0)


def ceil(moment: datetime, period: str) -> datetime:
    floored = floor(moment, period)
    return floored if floored == moment else floored + UNITS[period]


# --- reading ---------------------------------------------------------------------------------------------------


def latency_slot(ms: float) -> int:
    """The histogram slot of a duration, as Postgres's width_bucket puts it: slot i holds [bound i-1, bound i)."""
    return bisect_right(LATENCY_BOUNDS_MS, ms)


def percentiles(hist: dict, *qs: float) -> list[int | None]:
    """The q-quantiles (0-1, ascending) of a latency histogram: each the upper bound of the slot holding it, in
    ms (the last slot, past 10^8 ms, reports its lower bound). None for an empty histogram."""
    counts = sorted((int(slot), n) for slot, n in hist.items())
    total, seen, found = sum(n for _, n in counts), 0, []
    ranks = iter(max(1, math.ceil(q * total)) for q in qs)
    rank = next(ranks, None)
    for slot, n in counts:
        seen += n
        while rank is not None and seen >= rank:
            found.append(LATENCY_BOUNDS_MS[min(slot, len(LATENCY_BOUNDS_MS) - 1)])
            rank = next(ranks, None)
    return found + [None] * (len(qs) - len(found))


def slower_than(rows: str, threshold_ms: float) -> str:
    """SQL: the runs of a row of `rows` at or above the largest bound not above `threshold_ms`: those slower than it,
    plus any in the slot it falls in (up to 12% faster), so that a latency SLO errs on the side of alerting."""
    return (f"(SELECT coalesce(sum(value::numeric), 0) FROM jsonb_each_text({rows}.latency_hist) "
            f"WHERE key::int >= {latency_slot(float(threshold_ms))})")


def series(*, tenant_ids: list[int], period: str, start: datetime, end: datetime, workflow_id: int | None = None,
           version_id: int | None = None) -> list[dict]:
    """Per bucket of `period` in [start, end), the tenants' metrics (of one workflow or version if given)."""
    return [metrics(row) for row in merged(tenant_ids=tenant_ids, period=period, start=start, end=end,
                                           workflow_id=workflow_id, version_id=version_id, by=("bucket",),
                                           maps=("latency_hist",))]


def totals(*, tenant_ids: list[int], period: str, start: datetime, end: datetime, workflow_id: int | None = None,
           version_id: int | None = None) -> dict:
    """The metrics of [start, end) as one, read from the rows of `period` (whole buckets), with the top failure
    reasons and the slowest nodes (by mean step duration)."""
    rows = merged(tenant_ids=tenant_ids, period=period, start=start, end=end, workflow_id=workflow_id,
                  version_id=version_id)
    row = rows[0] if rows else {c: 0 for c in COUNTS} | {m: {} for m in MAPS} | dict.fromkeys(VALUED)
    slowest = sorted(((node, ms / row["node_steps"][node]) for node, ms in row["node_ms"].items()),
                     key=lambda pair: -pair[1])
    reasons = sorted(row["failure_reasons"].items(), key=lambda pair: (-pair[1], pair[0]))[:TOP_REASONS]
    return {**metrics(row), "failure_reasons": reasons, "slowest_nodes": [(n, round(ms)) for n, ms in slowest],
            "node_failures": row["node_failures"]}


# What the runs the AI resolved would have cost in human time, for the workflows an operator valued (WorkflowKpi).
VALUED = {"minutes_saved": "sum(r.finished * k.human_handling_minutes)",
          "human_cost": "sum((r.finished * k.human_handling_minutes)::numeric / 60 * k.human_hourly_cost_usd)",
          "valued_cost": "sum(r.cost) FILTER (WHERE k.id IS NOT NULL)"}


def merged(*, tenant_ids: list[int], period: str, start: datetime, end: datetime, workflow_id: int | None = None,
           version_id: int | None = None, by: tuple[str, ...] = (), maps: tuple[str, ...] = tuple(MAPS),
           extra: dict[str, str] | None = None) -> list[dict]:
    """The rows of `period` in [start, end) summed per value of the `by` columns (KEY's), in their order:
    counts, VALUED, `extra` (name: an aggregate over the rows `r`) and the `maps` (only those: each costs a pass
    over its pairs). One row, or none, without `by`."""
    where, params = ["tenant_id = ANY(%s)", "period = %s", "bucket >= %s", "bucket < %s"], [
        list(tenant_ids), period, start, end]
    for column, value in (("workflow_id", workflow_id), ("workflow_version_id", version_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    assert set(by) <= set(KEY) and set(maps) <= set(MAPS)
    sums = ", ".join([*(f"sum(r.{c}) AS {c}" for c in COUNTS),
                      *(f"{sql} AS {name}" for name, sql in (VALUED | (extra or {})).items())])
    sql = (f"WITH r AS MATERIALIZED (SELECT * FROM {_T['rollup']} WHERE {' AND '.join(where)}) "
           + summed("r", list(by), sums, list(maps), join=f"LEFT JOIN {_T['kpi']} k ON k.workflow_id = r.workflow_id")
           + (f" ORDER BY {', '.join(by)}" if by else ""))
    return [row for row in fetch(sql, params) if row["runs"] is not None]


def fetch(sql: str, params) -> list[dict]:
    """Rows as dicts, their JSON maps decoded (Django leaves jsonb to its fields, which a raw query has not)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    for row in rows:
        row.update({m: json.loads(row[m]) for m in MAPS if m in row})
    return rows


def metrics(row: dict) -> dict:
    """The figures a chart shows, from summed counts: rates are of runs that ended (cancelled ones aside).
    The KPIs: requests resolved without a human are runs that ended in FINISH; the time and cost that saved are
    None until an operator sets what a human costs for one of the workflows (WorkflowKpi)."""
    ended = row["runs"] - row["cancelled"]
    rated = row["csat_responses"]
    return {
        **{c: row[c] for c in KEY if c in row}, "runs": row["runs"], "finished": row["finished"],
        "handover": row["handover"], "failed": row["failed"], "cancelled": row["cancelled"],
        "success_rate": (ended - row["failed"]) / ended if ended else None,
        "handover_rate": row["handover"] / ended if ended else None,
        **dict(zip(("p50_ms", "p95_ms"), percentiles(row["latency_hist"], 0.5, 0.95))),
        "cost": row["cost"], "cost_per_run": row["cost"] / row["runs"] if row["runs"] else None,
        **{c: row[c] for c in CALL_COUNTS},
        "revenue": row["revenue"], "csat_responses": rated,
        "csat_score": row["csat_score_sum"] / rated if rated else None,
        "csat_satisfied_rate": row["csat_satisfied"] / rated if rated else None,
        "minutes_saved": row["minutes_saved"],
        "cost_saved": None if row["human_cost"] is None else
        (row["human_cost"] - row["valued_cost"]).quantize(Decimal("0.01")),
    }
