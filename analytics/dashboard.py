"""The analytics dashboard's data: what one page shows for a choice of tenants, workflow, version and time range,
read from the rollups only (a few indexed queries, whatever the number of runs). The admin draws it as charts,
the console's Dashboard tab and the API (`GET /api/v1/analytics/`) serve it as JSON, and as CSV per bucket."""

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import timezone

from accounts.models import Tenant

from . import rollups, slos
from .models import Alert, Period, Slo

# The ranges one may choose, and the rows each reads: a chart has at most a few hundred points.
RANGES = {"1h": (timedelta(hours=1), Period.MINUTE), "6h": (timedelta(hours=6), Period.MINUTE),
          "24h": (timedelta(hours=24), Period.HOUR), "7d": (timedelta(days=7), Period.HOUR),
          "30d": (timedelta(days=30), Period.DAY), "90d": (timedelta(days=90), Period.DAY)}
DEFAULT_RANGE = "24h"
# The columns of the CSV export, in order: one row per bucket.
CSV_COLUMNS = ["bucket", "runs", "finished", "handover", "failed", "cancelled", "success_rate", "handover_rate",
               "p50_ms", "p95_ms", "cost", "cost_per_run", "llm_calls", "llm_failures", "llm_tokens_in",
               "llm_tokens_out", "llm_cost", "llm_cache_hits", "llm_saved_cost", "tool_calls", "tool_failures",
               "tool_refusals", "revenue", "csat_responses", "csat_score", "csat_satisfied_rate", "minutes_saved",
               "cost_saved"]


@dataclass(frozen=True)
class Filters:
    tenant_ids: tuple[int, ...]
    range: str = DEFAULT_RANGE
    workflow_id: int | None = None
    version_id: int | None = None
    now: datetime = field(default_factory=timezone.now)

    @property
    def period(self) -> str:
        return RANGES[self.range][1]

    @property
    def start(self) -> datetime:
        """The first bucket: whole buckets, the current one included."""
        return rollups.floor(self.now - RANGES[self.range][0], self.period) + rollups.UNITS[self.period]

    @property
    def end(self) -> datetime:
        return rollups.floor(self.now, self.period) + rollups.UNITS[self.period]

    def buckets(self) -> list[datetime]:
        unit = rollups.UNITS[self.period]
        return [self.start + i * unit for i in range(round((self.end - self.start) / unit))]

    def scope(self) -> dict:
        return {"tenant_ids": list(self.tenant_ids), "period": self.period, "start": self.start, "end": self.end,
                "workflow_id": self.workflow_id, "version_id": self.version_id}


def dashboard(filters: Filters) -> dict:
    """Everything the page shows: a point per bucket (empty buckets included, with no runs), the totals with the
    top failure reasons and slowest nodes, cost per tenant, and each SLO's burn rate per bucket with its alerts."""
    scope = filters.scope()
    return {"range": filters.range, "period": filters.period, "start": filters.start, "end": filters.end,
            "series": _every_bucket(filters, rollups.series(**scope)), "totals": rollups.totals(**scope),
            "tenants": _per_tenant(scope), "slos": _slo_burns(filters, scope)}


def _every_bucket(filters: Filters, points: list[dict]) -> list[dict]:
    found = {point["bucket"]: point for point in points}
    empty = rollups.metrics({c: 0 for c in rollups.COUNTS} | {m: {} for m in rollups.MAPS}
                            | dict.fromkeys(rollups.VALUED))
    return [found.get(bucket) or {**empty, "bucket": bucket} for bucket in filters.buckets()]


def _per_tenant(scope: dict) -> list[dict]:
    names = dict(Tenant.objects.filter(id__in=scope["tenant_ids"]).values_list("id", "slug"))
    return [{"tenant": names[row["tenant_id"]], "runs": row["runs"], "cost": row["cost"],
             "cost_per_run": row["cost"] / row["runs"] if row["runs"] else None}
            for row in rollups.merged(**scope, by=("tenant_id",), maps=())]


def _slo_burns(filters: Filters, scope: dict) -> list[dict]:
    """Per enabled SLO of the workflows in scope: its burn rate in each bucket (how many times faster than the SLO
    allows the bucket spent its error budget; None without runs) and its alerts firing."""
    objectives = Slo.objects.filter(tenant_id__in=filters.tenant_ids, enabled=True).select_related("workflow")
    if filters.workflow_id is not None:
        objectives = objectives.filter(workflow_id=filters.workflow_id)
    objectives = list(objectives.order_by("workflow__slug", "metric"))
    if not objectives:
        return []
    rows = {(row["bucket"], row["workflow_id"]): row for row in rollups.merged(
        **scope, by=("bucket", "workflow_id"), maps=(), extra=slos.slow_sums(objectives))}
    firing = {}
    for alert in Alert.objects.filter(slo__in=objectives, state=Alert.State.FIRING):
        firing.setdefault(alert.slo_id, []).append(alert.severity)
    buckets = filters.buckets()
    return [{"workflow": slo.workflow.slug, "metric": slo.metric, "objective": slo.objective,
             "firing": sorted(firing.get(slo.pk, [])),
             "burn": [slos.burn_rate(slo, rows.get((bucket, slo.workflow_id))) for bucket in buckets]}
            for slo in objectives]


def as_csv(data: dict) -> str:
    """The dashboard's points, one row per bucket (ISO times, rates as shares, money in USD)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for point in data["series"]:
        writer.writerow({**point, "bucket": point["bucket"].isoformat()})
    return out.getvalue()
