"""Business KPIs of a workflow, from its rollups and what an operator says a human would have spent
(`WorkflowKpi`): requests resolved without a human, the time and cost that saved.

A request resolved without a human is a run that ended in FINISH. Revenue and customer satisfaction are
not here yet: no workflow records revenue in a place a rollup can read, and no API receives CSAT."""

from datetime import datetime
from decimal import Decimal

from . import rollups
from .models import WorkflowKpi


def workflow_kpis(*, tenant_id: int, workflow_id: int, period: str, start: datetime, end: datetime) -> dict:
    """Over the buckets of `period` in [start, end). Time and cost saved are None until the workflow's
    human handling time is set."""
    total = rollups.totals(tenant_id=tenant_id, workflow_id=workflow_id, period=period, start=start, end=end)
    setting = WorkflowKpi.objects.filter(tenant_id=tenant_id, workflow_id=workflow_id).first()
    resolved = total["finished"]
    kpis = {"resolved_without_human": resolved, "intervention_rate": total["handover_rate"],
            "ai_cost": total["cost"], "minutes_saved": None, "cost_saved": None}
    if setting is not None:
        minutes = resolved * setting.human_handling_minutes
        human_cost = Decimal(minutes) / 60 * setting.human_hourly_cost_usd
        kpis.update(minutes_saved=minutes, cost_saved=(human_cost - total["cost"]).quantize(Decimal("0.01")))
    return kpis
