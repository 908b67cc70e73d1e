"""SLOs and their multi-window burn-rate alerts (Google SRE workbook, "Alerting on SLOs").

A burn rate is how fast the error budget goes: the share of bad runs in a window over the share the SLO
allows. An alert opens when both of its windows burn faster than its threshold, and resolves as soon as
one of them no longer does (the short window clears within minutes of a recovery):

    page    1h and 5m burn > 14.4   (2% of a 30-day budget in an hour)
    ticket  6h and 30m burn > 6     (5% in six hours)

Bad runs, of the runs that ended (cancelled ones aside): failed ones for `success_rate` (budget 1 - objective),
handed over ones for `handover_rate` (budget: the objective), those slower than the objective for
`p95_latency_ms` (budget 5%, counted in SQL from the rollups' latency histograms; see slow_sums).
An SLO whose budget is so large that 14.4 or 6 cannot be reached (a 30% handover rate burns at most 3.3)
has its threshold capped at the burn of 90% bad runs for a page and 60% for a ticket.
`cost_per_request_usd` is a threshold on the window's mean cost per run: its burn is that mean over
the objective, and it pages above 2 and tickets above 1.

Windows are read from the minute rollups: a window of N minutes is the N minute buckets up to `now`'s.
"""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.services import audit_record
from workflows.models import Workflow

from . import rollups
from .models import Alert, Period, Rollup, Slo

logger = logging.getLogger(__name__)

WINDOWS = {"5m": 5, "30m": 30, "1h": 60, "6h": 360}  # minutes


@dataclass(frozen=True)
class Rule:
    long: str
    short: str
    burn: float  # the threshold for ratio SLOs
    worst_share: float  # caps it at the burn of this share of bad runs
    cost_burn: float  # the threshold for the cost SLO


RULES = {Alert.Severity.PAGE: Rule("1h", "5m", 14.4, 0.9, 2.0),
         Alert.Severity.TICKET: Rule("6h", "30m", 6.0, 0.6, 1.0)}
LATENCY_BUDGET = 0.05  # p95: 5% of runs may be slower


def slos_evaluate(*, now: datetime | None = None) -> None:
    """Open or resolve each enabled SLO's alerts from the minute rollups up to `now`."""
    now = now or timezone.now()
    spec_slos_sync()
    slos = list(Slo.objects.filter(enabled=True))
    windows = _window_totals(slos, now)
    for slo in slos:
        for severity, rule in RULES.items():
            burns = {w: burn_rate(slo, windows.get((slo.workflow_id, w))) for w in (rule.long, rule.short)}
            limit = threshold(slo, rule)
            if all(b is not None and b > limit for b in burns.values()):
                _alert_fire(slo, severity, burns, now)
            else:
                _alert_resolve(Alert.objects.filter(slo=slo, severity=severity), now)
    _alert_resolve(Alert.objects.filter(slo__enabled=False), now)


def burn_rate(slo: Slo, window: dict | None) -> float | None:
    """How many times faster than the SLO allows the window spent its budget; None with no run in it."""
    if not window or not window["runs"]:
        return None
    if slo.metric == Slo.Metric.COST_PER_REQUEST_USD:
        return float(window["cost"]) / window["runs"] / slo.objective
    ended = window["runs"] - window["cancelled"]
    if not ended:
        return None
    bad = window[{Slo.Metric.SUCCESS_RATE: "failed", Slo.Metric.HANDOVER_RATE: "handover",
                  Slo.Metric.P95_LATENCY_MS: f"slow_{slo.pk}"}[slo.metric]]
    return float(bad) / ended / error_budget(slo)


def error_budget(slo: Slo) -> float:
    """The share of ended runs that may be bad (ratio SLOs)."""
    return {Slo.Metric.SUCCESS_RATE: 1 - slo.objective, Slo.Metric.HANDOVER_RATE: slo.objective,
            Slo.Metric.P95_LATENCY_MS: LATENCY_BUDGET}[slo.metric]


def threshold(slo: Slo, rule: Rule) -> float:
    if slo.metric == Slo.Metric.COST_PER_REQUEST_USD:
        return rule.cost_burn
    return min(rule.burn, rule.worst_share / error_budget(slo))


def slow_sums(objectives: list[Slo]) -> dict[str, str]:
    """Per latency SLO, `slow_<pk>`: SQL summing the runs of its workflow's rows `r` slower than its objective
    (burn_rate reads it), so that no histogram is merged."""
    return {f"slow_{slo.pk}": f"sum(CASE WHEN r.workflow_id = {int(slo.workflow_id)} "
                              f"THEN {rollups.slower_than('r', slo.objective)} END)"
            for slo in objectives if slo.metric == Slo.Metric.P95_LATENCY_MS}


def _window_totals(objectives: list[Slo], now: datetime) -> dict[tuple[int, str], dict]:
    """Per workflow and window, the summed minute rollups the SLOs read."""
    if not objectives:
        return {}
    windows = ", ".join(f"('{name}', {minutes})" for name, minutes in WINDOWS.items())
    sums = [*(f"sum(r.{c}) AS {c}" for c in ("runs", "cancelled", "failed", "handover", "cost")),
            *(f"{sql} AS {name}" for name, sql in slow_sums(objectives).items())]
    sql = f"""
        SELECT r.workflow_id, w.name, {", ".join(sums)}
        FROM {Rollup._meta.db_table} r
        JOIN (VALUES {windows}) AS w(name, minutes) ON r.bucket > %(now)s - make_interval(mins => w.minutes)
        WHERE r.period = %(minute)s AND r.workflow_id = ANY(%(ids)s)
          AND r.bucket > %(now)s - make_interval(mins => %(longest)s) AND r.bucket <= %(now)s
        GROUP BY 1, 2"""
    rows = rollups.fetch(sql, {"now": now, "minute": Period.MINUTE, "longest": max(WINDOWS.values()),
                               "ids": list({slo.workflow_id for slo in objectives})})
    return {(row["workflow_id"], row["name"]): row for row in rows}


def _alert_fire(slo: Slo, severity: str, burns: dict, now: datetime) -> None:
    """Open the SLO's alert of this severity unless one is firing (the partial unique index keeps concurrent
    evaluations to one), else keep the highest burn rates seen on the one firing."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(slo=slo, severity=severity, state=Alert.State.FIRING).first()
        if alert is not None:
            peaks = {w: max(alert.burn_rates.get(w, 0), b) for w, b in burns.items()}
            if peaks != alert.burn_rates:
                Alert.objects.filter(pk=alert.pk).update(burn_rates=peaks)
            return
        try:
            with transaction.atomic():
                Alert.objects.create(tenant_id=slo.tenant_id, slo=slo, severity=severity, opened_at=now,
                                     burn_rates=burns)
        except IntegrityError:  # a concurrent evaluation opened it first
            return
    logger.warning("SLO %s (%s, workflow %s of tenant %s): %s alert firing, burn rates %s",
                   slo.pk, slo.metric, slo.workflow_id, slo.tenant_id, severity, burns)


def _alert_resolve(alerts, now: datetime) -> None:
    alerts.filter(state=Alert.State.FIRING).update(state=Alert.State.RESOLVED, resolved_at=now)


def spec_slos_sync() -> None:
    """Make the spec SLO rows say what the live versions' `slos:` say: new ones added, changed objectives
    updated, and those no longer in the live spec disabled (kept, with their alerts' history)."""
    wanted = {}
    for workflow_id, tenant_id, slos in Workflow.objects.filter(live_version__spec__has_key="slos").values_list(
            "id", "tenant_id", "live_version__spec__slos"):
        for metric, objective in slos.items():
            wanted[workflow_id, metric] = Slo(tenant_id=tenant_id, workflow_id=workflow_id, metric=metric,
                                              objective=objective, source=Slo.Source.SPEC)
    for slo in Slo.objects.filter(source=Slo.Source.SPEC):
        new = wanted.pop((slo.workflow_id, slo.metric), None)
        if new is None and slo.enabled:
            Slo.objects.filter(pk=slo.pk).update(enabled=False)
        elif new is not None and (not slo.enabled or slo.objective != new.objective):
            Slo.objects.filter(pk=slo.pk).update(enabled=True, objective=new.objective)
    Slo.objects.bulk_create(wanted.values(), ignore_conflicts=True)


@transaction.atomic
def alert_acknowledge(*, alert: Alert, actor) -> bool:
    """Record who took the alert on; False if someone already had."""
    now = timezone.now()
    if not Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(acknowledged_by=actor,
                                                                                  acknowledged_at=now):
        return False
    audit_record(tenant_id=alert.tenant_id, actor=actor, action="alert.acknowledge", obj=alert,
                 old={"acknowledged_at": None}, new={"acknowledged_at": now.isoformat()})
    return True
