import random
from datetime import UTC, datetime, timedelta

import pytest

from accounts.models import AuditEntry
from analytics import rollups, slos
from analytics.models import Alert, Slo, Watermark
from workflows import services
from workflows.models import Run
from workflows.tests.specs import LINEAR

from . import factories

NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
FINISHED, FAILED = (Run.Status.DONE, Run.Sink.FINISH), (Run.Status.FAILED, Run.Sink.HANDOVER)
HANDED_OVER = (Run.Status.DONE, Run.Sink.HANDOVER)


def with_slos(slos_yaml: str) -> str:
    return LINEAR + f"slos: {slos_yaml}\n"


def traffic(workflow, start: datetime, end: datetime, outcomes, ms=(50, 2000), seed=0):
    """Two runs a minute of the live version ending in [start, end), each of one of `outcomes` at random."""
    ends = [start + timedelta(seconds=30 * n) for n in range(int((end - start) / timedelta(seconds=30)))]
    factories.runs(workflow.live_version, ends, rng=random.Random(seed), outcomes=outcomes, ms=ms, details=False)


def evaluate(now: datetime) -> None:
    assert rollups.rollup(now=now)
    slos.slos_evaluate(now=now)


@pytest.fixture
def watermark(db):
    """The rollups have run since well before the traffic."""
    Watermark.objects.create(name=rollups.WATERMARK, until=NOW - timedelta(hours=7))


def firing(workflow) -> set[tuple[str, str]]:
    return {(a.slo.metric, a.severity) for a in Alert.objects.filter(slo__workflow=workflow, state="firing")}


def test_a_burst_of_failures_pages_and_a_recovery_resolves_it(tenant, publish, watermark):
    workflow = publish(tenant, with_slos("{success_rate: 0.95}"))
    traffic(workflow, NOW - timedelta(hours=6), NOW - timedelta(minutes=50), [FINISHED])
    traffic(workflow, NOW - timedelta(minutes=50), NOW, [FAILED])

    evaluate(NOW)
    evaluate(NOW)  # again: still one alert

    alert = Alert.objects.get()
    assert (alert.slo.metric, alert.severity, alert.state, alert.opened_at) == ("success_rate", "page", "firing", NOW)
    assert alert.burn_rates["5m"] == pytest.approx(20)  # every run failed: 1 / (1 - 0.95)
    # The hour's 60 minute buckets up to now's: 100 failed runs of 119 (now's minute holds one so far).
    assert alert.burn_rates["1h"] == pytest.approx(100 / 119 * 20)
    assert firing(workflow) == {("success_rate", "page")}  # 6h: 50 minutes of 360 burn 2.8, under 6

    later = NOW + timedelta(minutes=10)
    traffic(workflow, NOW, later, [FINISHED])
    evaluate(later)

    alert.refresh_from_db()
    assert (alert.state, alert.resolved_at) == ("resolved", later)
    assert Alert.objects.count() == 1


def test_a_slow_burn_opens_a_ticket_and_no_page(tenant, publish, watermark):
    workflow = publish(tenant, with_slos("{success_rate: 0.95}"))
    traffic(workflow, NOW - timedelta(hours=6), NOW, [FINISHED, FAILED], seed=3)  # burn about 10 everywhere

    evaluate(NOW)

    assert firing(workflow) == {("success_rate", "ticket")}


def test_slow_runs_burn_a_latency_slo_set_in_the_admin(tenant, publish, watermark):
    workflow = publish(tenant)
    Slo.objects.create(tenant=tenant, workflow=workflow, metric="p95_latency_ms", objective=8000)
    traffic(workflow, NOW - timedelta(hours=6), NOW - timedelta(hours=2), [FINISHED], ms=(50, 7000))
    traffic(workflow, NOW - timedelta(hours=2), NOW, [FINISHED], ms=(9000, 60_000))

    evaluate(NOW)

    assert firing(workflow) == {("p95_latency_ms", "page"), ("p95_latency_ms", "ticket")}


def test_a_handover_slo_too_loose_to_burn_at_14_still_pages_when_all_hand_over(tenant, publish, watermark):
    workflow = publish(tenant, with_slos("{handover_rate: 0.3}"))  # burns at most 1 / 0.3: the page asks 0.9 / 0.3
    traffic(workflow, NOW - timedelta(hours=1), NOW, [HANDED_OVER])

    evaluate(NOW)

    assert firing(workflow) == {("handover_rate", "page"), ("handover_rate", "ticket")}


def test_cost_per_request_burns_as_its_mean_over_the_objective(tenant, publish):
    slo = Slo(tenant=tenant, workflow=publish(tenant), metric="cost_per_request_usd", objective=0.05)
    assert slos.burn_rate(slo, {"runs": 4, "cancelled": 0, "cost": 0.4}) == pytest.approx(2)
    assert slos.threshold(slo, slos.RULES["page"]) == 2.0


def test_a_firing_alert_is_never_opened_twice_and_none_other_tenants_see(tenant, other_tenant, publish, watermark):
    ours = publish(tenant, with_slos("{success_rate: 0.95}"))
    theirs = publish(other_tenant, with_slos("{success_rate: 0.95}"))
    traffic(ours, NOW - timedelta(hours=1), NOW, [FAILED])
    traffic(theirs, NOW - timedelta(hours=1), NOW, [FINISHED])

    for minute in range(3):
        evaluate(NOW + timedelta(seconds=20 * minute))

    assert Alert.objects.filter(severity="page").count() == 1
    assert firing(ours) == {("success_rate", "page"), ("success_rate", "ticket")}
    assert firing(theirs) == set()


def test_the_spec_slos_follow_the_live_version(tenant, publish, watermark):
    workflow = publish(tenant, with_slos("{success_rate: 0.95, p95_latency_ms: 8000}"))
    slos.spec_slos_sync()
    assert set(Slo.objects.values_list("metric", "objective", "source", "enabled")) == {
        ("success_rate", 0.95, "spec", True), ("p95_latency_ms", 8000, "spec", True)}

    traffic(workflow, NOW - timedelta(hours=1), NOW, [FAILED])
    evaluate(NOW)
    publish(tenant, with_slos("{success_rate: 0.9}"))
    evaluate(NOW)

    assert set(Slo.objects.values_list("metric", "objective", "enabled")) == {
        ("success_rate", 0.9, True), ("p95_latency_ms", 8000, False)}
    assert firing(workflow) == {("success_rate", "page"), ("success_rate", "ticket")}


@pytest.mark.parametrize("slos_yaml, error", [
    ("{p99_latency_ms: 100}", ("slos: 'p99_latency_ms' is not one of ['success_rate', 'handover_rate', "
                               "'p95_latency_ms', 'cost_per_request_usd']")),
    ("{success_rate: 1}", "slos.success_rate: 1 is greater than or equal to the maximum of 1"),
    ("{handover_rate: 0}", "slos.handover_rate: 0 is less than or equal to the minimum of 0"),
    ("{p95_latency_ms: fast}", "slos.p95_latency_ms: 'fast' is not of type 'integer'"),
])
def test_a_spec_with_a_wrong_slo_says_which_and_why(tenant, slos_yaml, error):
    workflow = services.workflow_create(tenant=tenant, slug="wf")
    version = services.workflow_version_create(workflow=workflow, spec_yaml=with_slos(slos_yaml))
    assert version.errors == [error]


def test_an_operator_acknowledges_an_alert_in_the_admin(tenant, publish, admin_client, admin_user, watermark):
    workflow = publish(tenant, with_slos("{success_rate: 0.95}"))
    traffic(workflow, NOW - timedelta(hours=1), NOW, [FAILED])
    evaluate(NOW)
    alert = Alert.objects.get(severity="page")

    response = admin_client.post("/admin/analytics/alert/", {"action": "acknowledge", "_selected_action": [alert.pk]})

    assert response.status_code == 302
    alert.refresh_from_db()
    assert alert.acknowledged_by == admin_user and alert.acknowledged_at is not None
    assert AuditEntry.objects.filter(action="alert.acknowledge", object_id=str(alert.pk), actor=admin_user).exists()
    assert admin_client.get("/admin/analytics/alert/?state__exact=firing&severity__exact=page").status_code == 200
