"""A tenant's analytics in Prometheus's text format, for those who run Grafana: counters summed from the day
rollups (a scrape never reads runs), the run latency's p50 and p95 over the last hour, and the SLO alerts firing."""

from datetime import timedelta

from django.db.models import Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from workflows.models import Workflow

from .models import Alert, Period, Rollup
from .rollups import fetch, percentiles, summed

LABELS = ["workflow", "version"]
# name, help, and the Rollup field of each sample (with its extra label, if the family has one)
COUNTERS = [
    ("hil_runs", "Runs that ended, by outcome.", "outcome",
     {"finished": "finished", "handover": "handover", "failed": "failed", "cancelled": "cancelled"}),
    ("hil_run_cost_usd", "What the runs cost, USD.", None, {"cost": None}),
    ("hil_llm_calls", "Model calls.", None, {"llm_calls": None}),
    ("hil_llm_failures", "Model calls whose outcome was not ok.", None, {"llm_failures": None}),
    ("hil_llm_tokens", "Model tokens, by direction.", "direction", {"llm_tokens_in": "in", "llm_tokens_out": "out"}),
    ("hil_llm_cost_usd", "What the model calls cost, USD.", None, {"llm_cost": None}),
    ("hil_llm_cache_hits", "Model calls answered from the cache.", None, {"llm_cache_hits": None}),
    ("hil_tool_calls", "Tool calls.", None, {"tool_calls": None}),
    ("hil_tool_failures", "Tool calls that failed.", None, {"tool_failures": None}),
    ("hil_tool_refusals", "Tool calls refused, by a rule or a human.", None, {"tool_refusals": None}),
]
FIELDS = [field for *_, samples in COUNTERS for field in samples]
# The runs that ended in this hour and the one before, their latency histograms summed per workflow.
LATENCY_SQL = f"""
WITH r AS MATERIALIZED (
  SELECT workflow.slug, rollup.latency_hist
  FROM {Rollup._meta.db_table} rollup JOIN {Workflow._meta.db_table} workflow ON workflow.id = rollup.workflow_id
  WHERE rollup.tenant_id = %s AND rollup.period = %s AND rollup.bucket >= %s
) {summed("r", ["slug"], "", ["latency_hist"])} ORDER BY slug
"""


def exposition(tenant_id: int) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(tenant_id))
    return generate_latest(registry)


class _Collector:
    def __init__(self, tenant_id: int):
        self.tenant_id = tenant_id

    def collect(self):
        rows = (Rollup.objects.filter(tenant_id=self.tenant_id, period=Period.DAY)
                .values("workflow__slug", "workflow_version__number")
                .annotate(**{field: Sum(field) for field in FIELDS})
                .order_by("workflow__slug", "workflow_version__number"))
        for name, text, label, samples in COUNTERS:
            family = CounterMetricFamily(name, text, labels=LABELS + ([label] if label else []))
            for row in rows:
                for field, value in samples.items():
                    family.add_metric([row["workflow__slug"], str(row["workflow_version__number"])]
                                      + ([value] if label else []), float(row[field] or 0))
            yield family
        yield self._latency()
        firing = GaugeMetricFamily("hil_slo_alerts_firing", "SLO burn-rate alerts firing.",
                                   labels=["workflow", "metric", "severity"])
        for alert in Alert.objects.filter(tenant_id=self.tenant_id, state=Alert.State.FIRING).values(
                "slo__workflow__slug", "slo__metric", "severity"):
            firing.add_metric([alert["slo__workflow__slug"], alert["slo__metric"], alert["severity"]], 1)
        yield firing

    def _latency(self) -> GaugeMetricFamily:
        since = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        gauge = GaugeMetricFamily("hil_run_latency_ms", "Run latency over the last hour or two, by quantile.",
                                  labels=["workflow", "quantile"])
        for row in fetch(LATENCY_SQL, [self.tenant_id, Period.HOUR, since]):
            for q, value in zip((0.5, 0.95), percentiles(row["latency_hist"], 0.5, 0.95)):
                if value is not None:
                    gauge.add_metric([row["slug"], str(q)], value)
        return gauge
