import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from analytics import rollups
from analytics.models import Period, WorkflowKpi
from workflows.models import Run

from . import factories

NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)


def test_requests_the_ai_resolved_are_valued_at_what_a_human_would_have_cost(tenant):
    version, = factories.versions(tenant, "support", count=1)
    runs = factories.runs(version, [NOW - timedelta(minutes=m) for m in range(1, 41)], rng=random.Random(5),
                          details=False)
    rollups.rollup(now=NOW)
    window = {"tenant_ids": [tenant.id], "workflow_id": version.workflow_id, "period": Period.HOUR,
              "start": NOW - timedelta(hours=2), "end": NOW + timedelta(hours=1)}
    assert rollups.totals(**window)["cost_saved"] is None  # until an operator says what a human costs

    WorkflowKpi.objects.create(tenant=tenant, workflow_id=version.workflow_id, human_handling_minutes=6,
                               human_hourly_cost_usd=Decimal(30))
    figures = rollups.totals(**window)

    resolved = sum(r.status == Run.Status.DONE and r.sink == Run.Sink.FINISH for r in runs)
    ended = sum(r.status != Run.Status.CANCELLED for r in runs)
    handed_over = sum(r.status == Run.Status.DONE and r.sink == Run.Sink.HANDOVER for r in runs)
    ai_cost = sum(r.cost for r in runs)
    assert (figures["finished"], figures["handover_rate"], figures["cost"]) == (resolved, handed_over / ended, ai_cost)
    assert figures["minutes_saved"] == resolved * 6
    assert figures["cost_saved"] == (Decimal(resolved * 6) / 60 * 30 - ai_cost).quantize(Decimal("0.01"))
