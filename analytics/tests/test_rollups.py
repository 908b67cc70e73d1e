import math
import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from django.db.models import F

from accounts.models import AuditEntry
from agents.models import LLMCall
from analytics import rollups
from analytics.models import Period, Rollup, Satisfaction, Watermark
from analytics.rollups import COUNTS, LATENCY_BOUNDS_MS, MAPS
from tools.models import ToolCall
from workflows.models import Run, Step

from . import factories

NOW = datetime(2026, 3, 10, 1, 20, 30, tzinfo=UTC)  # three hours of traffic before it cross a day
PERIODS = {Period.MINUTE: "minute", Period.HOUR: "hour", Period.DAY: "day"}


@pytest.fixture
def traffic(tenant, other_tenant):
    """3,200 runs over the three hours before NOW, in two tenants, two workflows each, two versions each,
    with their steps, model calls, tool calls and refusals; and rows no rollup may count."""
    rng = random.Random(11)
    for owner in (tenant, other_tenant):
        for slug in ("support", "sales"):
            for version in factories.versions(owner, slug):
                factories.runs(version, [NOW - timedelta(seconds=rng.uniform(0, 3 * 3600)) for _ in range(400)],
                               rng=rng)
    factories.stray_rows(tenant, version, NOW - timedelta(minutes=1))
    Watermark.objects.create(name=rollups.WATERMARK, until=NOW - timedelta(hours=4))  # rollups ran until then


def floor(moment: datetime, period: str) -> datetime:
    return moment.replace(second=0, microsecond=0, **({} if period == "minute" else {"minute": 0}),
                          **({"hour": 0} if period == "day" else {}))


def brute_force() -> dict:
    """Every rollup row, computed in Python from all raw rows, row by row."""
    rows = defaultdict(lambda: {**{c: 0 for c in COUNTS}, **{m: Counter() for m in MAPS}})

    def add(run, at):
        return [rows[run.tenant_id, run.workflow_version.workflow_id, run.workflow_version_id, p, floor(at, p)]
                for p in PERIODS.values()]

    steps, tool_calls = defaultdict(list), defaultdict(list)
    for step in Step.objects.all():
        steps[step.run_id].append(step)
    for call in ToolCall.objects.all():
        tool_calls[call.run_id].append(call)
    ended = {run.id: run for run in Run.objects.filter(finished_at__isnull=False).select_related("workflow_version")}
    for run in ended.values():
        for row in add(run, run.finished_at):
            row["runs"] += 1
            row["cost"] += run.cost
            row["revenue"] += run.revenue or 0
            row[{"done": "finished" if run.sink == "FINISH" else "handover"}.get(run.status, run.status)] += 1
            if run.status != Run.Status.CANCELLED:
                ms = (run.finished_at - run.created_at) / timedelta(milliseconds=1)
                row["latency_hist"][str(rollups.latency_slot(ms))] += 1
        for step in steps[run.id]:
            for row in add(run, run.finished_at):
                row["node_steps"][step.node_id] += 1
                row["node_ms"][step.node_id] += step.duration_ms()
                if step.status == Step.Status.FAILED:
                    row["node_failures"][step.node_id] += 1
                    row["failure_reasons"][f"{step.node_id}: {step.error}"] += 1
        for call in tool_calls[run.id]:
            for row in add(run, run.finished_at):
                row["tool_calls"] += 1
                row["tool_failures"] += call.status == "failed"
    for call in LLMCall.objects.filter(run__isnull=False).select_related("run__workflow_version"):
        for row in add(call.run, call.created_at):
            row["llm_calls"] += 1
            row["llm_failures"] += call.outcome != "ok"
            row["llm_tokens_in"] += call.tokens_in
            row["llm_tokens_out"] += call.tokens_out
            row["llm_cost"] += call.cost
            row["llm_cache_hits"] += call.cache != ""
            row["llm_saved_cost"] += call.saved_cost
    for rating in Satisfaction.objects.select_related("run__workflow_version"):
        for row in add(rating.run, rating.created_at):
            row["csat_responses"] += 1
            row["csat_score_sum"] += rating.score
            row["csat_satisfied"] += rating.score >= 4
    for entry in AuditEntry.objects.filter(action="tool.refused"):
        for row in add(ended[uuid.UUID(entry.object_id)], entry.created_at):
            row["tool_refusals"] += 1
    return {key: {**row, **{m: dict(row[m]) for m in MAPS}} for key, row in rows.items()}


def stored() -> dict:
    return {(r["tenant_id"], r["workflow_id"], r["workflow_version_id"], r["period"], r["bucket"]):
            {c: r[c] for c in COUNTS + MAPS} for r in Rollup.objects.values()}


def test_rollups_match_a_brute_force_recomputation(traffic):
    assert rollups.rollup(now=NOW)

    expected = brute_force()
    assert len(expected) > 1400  # nearly every minute of every version
    assert stored() == expected
    assert {p for *_, p, _ in expected} == {"minute", "hour", "day"}
    assert len({b for *_, p, b in expected if p == "day"}) == 2  # the traffic crosses midnight


def test_percentiles_of_merged_rows_are_those_of_the_raw_durations_in_their_slots(tenant, traffic):
    rollups.rollup(now=NOW)

    start = NOW - timedelta(hours=4)
    for point in rollups.series(tenant_ids=[tenant.id], period=Period.HOUR, start=start, end=NOW):
        ends = Run.objects.filter(tenant=tenant, finished_at__gte=point["bucket"],
                                  finished_at__lt=point["bucket"] + timedelta(hours=1))
        durations = sorted((r.finished_at - r.created_at) / timedelta(milliseconds=1)
                           for r in ends.exclude(status=Run.Status.CANCELLED))
        assert point["runs"] == ends.count()
        for q, name in ((0.5, "p50_ms"), (0.95, "p95_ms")):
            nearest_rank = durations[math.ceil(q * len(durations)) - 1]
            assert point[name] == LATENCY_BOUNDS_MS[rollups.latency_slot(nearest_rank)]
        ended = len(durations)
        assert point["success_rate"] == (ended - ends.filter(status="failed").count()) / ended
        assert point["cost_per_run"] == sum(r.cost for r in ends) / ends.count()


def test_percentiles_of_a_histogram_come_in_one_pass_nearest_rank():
    hist = {"7": 1, "2": 9, "40": 10}  # slots out of order, as JSON keys come
    assert rollups.percentiles(hist, 0, 0.45, 0.5, 0.95, 1) == [
        LATENCY_BOUNDS_MS[2], LATENCY_BOUNDS_MS[2], LATENCY_BOUNDS_MS[7], LATENCY_BOUNDS_MS[40], LATENCY_BOUNDS_MS[40]]
    assert rollups.percentiles({"500": 1}, 0.5) == [LATENCY_BOUNDS_MS[-1]]  # past the last bound
    assert rollups.percentiles({}, 0.5, 0.95) == [None, None]


def test_a_tenant_sees_only_its_own_runs(tenant, other_tenant, traffic):
    rollups.rollup(now=NOW)

    for owner in (tenant, other_tenant):
        total = rollups.totals(tenant_ids=[owner.id], period=Period.DAY, start=NOW - timedelta(days=2), end=NOW)
        assert total["runs"] == Run.objects.filter(tenant=owner, finished_at__isnull=False).count() == 1600
    assert not Rollup.objects.exclude(tenant_id=F("workflow_version__tenant_id")).exists()


def test_totals_name_the_top_failure_reasons_and_the_slowest_nodes(tenant, traffic):
    rollups.rollup(now=NOW)

    total = rollups.totals(tenant_ids=[tenant.id], period=Period.DAY, start=NOW - timedelta(days=2), end=NOW)
    failed = Step.objects.filter(tenant=tenant, status="failed", run__finished_at__isnull=False)
    top = Counter(f"{s.node_id}: {s.error}" for s in failed).most_common(1)[0]
    assert total["failure_reasons"][0] == top
    durations = defaultdict(list)
    for step in Step.objects.filter(tenant=tenant, run__finished_at__isnull=False):
        durations[step.node_id].append(step.duration_ms())
    means = {node: sum(ms) / len(ms) for node, ms in durations.items()}
    assert [node for node, _ in total["slowest_nodes"]] == sorted(means, key=lambda n: -means[n])


def test_running_it_again_changes_nothing(traffic):
    rollups.rollup(now=NOW)
    first = stored()

    assert rollups.rollup(now=NOW)
    assert stored() == first


def test_a_late_row_is_counted_by_the_next_rollup(tenant, traffic):
    rollups.rollup(now=NOW)
    version = Run.objects.filter(tenant=tenant).first().workflow_version
    before = stored()

    # A model call committed two minutes after it was made, and a run that ended in the minute just gone.
    LLMCall.objects.create(tenant=tenant, run=Run.objects.filter(workflow_version=version).first(), model="m",
                           tokens_in=7, cost=Decimal("0.25"), outcome="ok", created_at=NOW - timedelta(minutes=2))
    factories.runs(version, [NOW - timedelta(seconds=20)], rng=random.Random(1), details=False)
    rollups.rollup(now=NOW + timedelta(minutes=1))

    after = stored()
    assert after == brute_force()
    hour = (tenant.id, version.workflow_id, version.id, "hour", floor(NOW, "hour"))
    assert after[hour]["llm_tokens_in"] == before[hour]["llm_tokens_in"] + 7
    assert after[hour]["runs"] == before[hour]["runs"] + 1


def test_a_rollup_that_was_down_catches_up_on_every_minute_since(tenant, traffic):
    rollups.rollup(now=NOW)
    version = Run.objects.filter(tenant=tenant).first().workflow_version
    factories.runs(version, [NOW + timedelta(hours=1, minutes=7)], rng=random.Random(2))

    assert rollups.rollup(now=NOW + timedelta(hours=3))  # far past LAG: only the watermark leads back to it

    assert stored() == brute_force()


def test_a_rollup_waits_for_none_while_another_holds_the_lock(traffic):
    settings = connection.settings_dict
    with psycopg.connect(host=settings["HOST"], port=settings["PORT"], user=settings["USER"],
                         password=settings["PASSWORD"], dbname=settings["NAME"], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [rollups.LOCK_KEY])
        assert rollups.rollup(now=NOW) is False
    assert not Rollup.objects.exists()
    assert rollups.rollup(now=NOW)


def test_minute_rows_are_pruned_after_eight_days_and_their_hours_and_days_kept(traffic):
    rollups.rollup(now=NOW)
    before = stored()

    assert rollups.prune(now=NOW + timedelta(days=8, hours=-3, minutes=-5)) == 0  # the traffic's first minute
    gone = rollups.prune(now=NOW + timedelta(days=8, hours=-1))  # is not yet 8 days old; its first two hours are

    after = stored()
    assert gone == sum(p == "minute" for *_, p, _ in before) - sum(p == "minute" for *_, p, _ in after) > 0
    oldest = min(b for *_, p, b in after if p == "minute")
    assert NOW - timedelta(hours=1) <= oldest < NOW - timedelta(minutes=59)  # those before the cut went, no more
    assert {k: v for k, v in before.items() if k[3] != "minute"} == {k: v for k, v in after.items() if k[3] != "minute"}
