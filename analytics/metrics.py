"""A tenant's analytics in Prometheus's text format, for those who run Grafana: counters summed from the day
rollups (a scrape never reads runs), the run latency's p50 and p95 over the last hour, and the SLO alerts firing."""

from datetime import timedelta

from django.db.models import Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .models import Alert, Period, Rollup
from .rollups import percentile

LABELS = ["workflow", "version"]
# (metric, help, Rollup field, extra label and its value)
COUNTERS = [
    ("hil_runs", "Runs that ended, by outcome.", "finished", ("outcome", "finished")),
    ("hil_runs", None, "handover", ("outcome", "handover")),
    ("hil_runs", None, "failed", ("outcome", "failed")),
    ("hil_runs", None, "cancelled", ("outcome", "cancelled")),
    ("hil_run_cost_usd", "What the runs cost, USD.", "cost", None),
    ("hil_llm_calls", "Model calls.", "llm_calls", None),
    ("hil_llm_failures", "Model calls whose outcome was not ok.", "llm_failures", None),
    ("hil_llm_tokens", "Model tokens, by direction.", "llm_tokens_in", ("direction", "in")),
    ("hil_llm_tokens", None, "llm_tokens_out", ("direction", "out")),
    ("hil_llm_cost_usd", "What the model calls cost, USD.", "llm_cost", None),
    ("hil_llm_cache_hits", "Model calls answered from the cache.", "llm_cache_hits", None),
    ("hil_tool_calls", "Tool calls.", "tool_calls", None),
    ("hil_tool_failures", "Tool calls that failed.", "tool_failures", None),
    ("hil_tool_refusals", "Tool calls refused, by a rule or a human.", "tool_refusals", None),
]


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
                .annotate(**{field: Sum(field) for _, _, field, _ in COUNTERS})
                .order_by("workflow__slug", "workflow_version__number"))
        families = {}
        for name, text, field, extra in COUNTERS:
            family = families.get(name) or families.setdefault(name, CounterMetricFamily(
                name, text, labels=LABELS + ([extra[0]] if extra else [])))
            for row in rows:
                labels = [row["workflow__slug"], str(row["workflow_version__number"])] + ([extra[1]] if extra else [])
                family.add_metric(labels, float(row[field] or 0))
        yield from families.values()
        yield from self._latency()
        firing = GaugeMetricFamily("hil_slo_alerts_firing", "SLO burn-rate alerts firing.",
                                   labels=["workflow", "metric", "severity"])
        for slo in Alert.objects.filter(tenant_id=self.tenant_id, state=Alert.State.FIRING).values(
                "slo__workflow__slug", "slo__metric", "severity"):
            firing.add_metric([slo["slo__workflow__slug"], slo["slo__metric"], slo["severity"]], 1)
        yield firing

    def _latency(self):
        """p50 and p95 of the runs that ended in this hour and the one before, per workflow."""
        since = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        merged: dict[str, dict] = {}
        for slug, hist in Rollup.objects.filter(tenant_id=self.tenant_id, period=Period.HOUR, bucket__gte=since) \
                .values_list("workflow__slug", "latency_hist"):
            into = merged.setdefault(slug, {})
            for slot, n in hist.items():
                into[slot] = into.get(slot, 0) + n
        gauge = GaugeMetricFamily("hil_run_latency_ms", "Run latency over the last hour or two, by quantile.",
                                  labels=["workflow", "quantile"])
        for slug, hist in sorted(merged.items()):
            for q in (0.5, 0.95):
                if (value := percentile(hist, q)) is not None:
                    gauge.add_metric([slug, str(q)], value)
        yield gauge
