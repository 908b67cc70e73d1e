"""GET /metrics: the caller's tenant's rollups in Prometheus's text format, to operators and admins only."""

import math
import random
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import Role
from analytics import rollups
from analytics.tests.factories import runs, versions
from workflows.models import Run

pytestmark = pytest.mark.django_db


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_tenants_counts_and_latency_and_no_one_elses(api, tenant, other_tenant):
    rng, now = random.Random(3), timezone.now()
    ends = [now - timedelta(minutes=10, seconds=s) for s in range(40)]
    made = runs(versions(tenant, "support", 1)[0], ends, rng=rng, ms=(100, 2000))
    runs(versions(other_tenant, "theirs", 1)[0], ends[:5], rng=rng)
    assert rollups.rollup(now=now)

    response = api.get("/metrics")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    found = samples(response.content.decode())
    for outcome, (status, sink) in {"finished": ("done", "FINISH"), "handover": ("done", "HANDOVER"),
                                    "failed": ("failed", "HANDOVER"), "cancelled": ("cancelled", "")}.items():
        expected = sum(run.status == status and run.sink == sink for run in made)
        assert found[("hil_runs_total", (("outcome", outcome), ("version", "1"), ("workflow", "support")))] == expected
    assert not any(dict(labels).get("workflow") == "theirs" for _, labels in found)
    p95 = found[("hil_run_latency_ms", (("quantile", "0.95"), ("workflow", "support")))]
    ended = sorted((r.finished_at - r.created_at).total_seconds() * 1000 for r in made
                   if r.status != Run.Status.CANCELLED)
    true_p95 = ended[math.ceil(0.95 * len(ended)) - 1]
    assert true_p95 <= p95 <= true_p95 * 1.13  # the upper bound of the slot holding it


def test_only_operators_and_admins_may_scrape(client_for, member, tenant, client):
    assert client.get("/metrics").status_code in (401, 403)
    assert client_for(member(tenant, role=Role.AGENT)[1]).get("/metrics").status_code == 403
    assert client_for(member(tenant, role=Role.ADMIN)[1]).get("/metrics").status_code == 200
