"""The dashboard: its data through the API (JSON and CSV) and the admin's charts, scoped to what the caller may see;
customer satisfaction posted by an integration; revenue a run records."""

import csv
import io
import random
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import Role
from accounts.services import membership_set, user_ensure
from analytics import rollups
from analytics.models import Satisfaction, Slo
from analytics.tests.factories import runs, versions
from conftest import verified_login
from workflows import services
from workflows.models import Run
from workflows.spec import SpecError, load

pytestmark = pytest.mark.django_db


@pytest.fixture
def traffic(tenant, other_tenant):
    """Runs of two versions of `support` in the last 40 minutes, and of another tenant's workflow, rolled up."""
    rng, now = random.Random(7), timezone.now()
    ends = [now - timedelta(minutes=2, seconds=s * 60) for s in range(40)]
    first, second = versions(tenant, "support")
    made = runs(first, ends[:25], rng=rng, ms=(100, 5000)) + runs(second, ends[25:], rng=rng, ms=(100, 5000))
    theirs = runs(versions(other_tenant, "theirs", 1)[0], ends[:7], rng=rng)
    assert rollups.rollup(now=now)
    return made, theirs


def test_the_api_gives_a_point_per_bucket_and_the_totals_of_the_tenant_only(api, traffic):
    made, _ = traffic
    data = api.get("/api/v1/analytics/?range=1h").json()

    assert (data["range"], data["period"], len(data["series"])) == ("1h", "minute", 60)
    assert sum(p["runs"] for p in data["series"]) == data["totals"]["runs"] == len(made)
    assert data["totals"]["handover"] == sum(r.sink == "HANDOVER" and r.status == "done" for r in made)
    assert Decimal(str(data["totals"]["revenue"])) == sum(r.revenue or 0 for r in made)
    assert [t["tenant"] for t in data["tenants"]] == ["acme"]
    empty = [p for p in data["series"] if p["runs"] == 0]
    assert empty and all(p["success_rate"] is None and p["p95_ms"] is None for p in empty)  # gaps, not zeros

    version_2 = api.get("/api/v1/analytics/?range=1h&workflow=support&version=2").json()
    assert version_2["totals"]["runs"] == 15


def test_the_csv_export_has_the_same_points(api, traffic):
    response = api.get("/api/v1/analytics/?range=6h&format=csv")

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    json_points = api.get("/api/v1/analytics/?range=6h").json()["series"]
    assert len(rows) == len(json_points) == 360
    assert [int(r["runs"]) for r in rows] == [p["runs"] for p in json_points]
    assert sum(int(r["runs"]) for r in rows) == len(traffic[0])


@pytest.mark.parametrize("query,status,message", [
    ("range=2y", 400, '"2y" is not a valid choice'),
    ("version=1", 400, "a version needs its workflow"),
    ("workflow=theirs", 404, "No Workflow matches"),  # another tenant's
    ("workflow=support&version=9", 404, "No WorkflowVersion matches"),
    ("format=xml", 400, '"xml" is not a valid choice'),
])
def test_bad_filters_are_refused_with_what_is_wrong(api, traffic, query, status, message):
    response = api.get(f"/api/v1/analytics/?{query}")
    assert response.status_code == status and message in str(response.json())


def test_slo_burn_per_bucket_is_the_share_of_bad_runs_over_the_budget(api, tenant, traffic):
    made, _ = traffic
    Slo.objects.create(tenant=tenant, workflow_id=made[0].workflow_version.workflow_id, metric="success_rate",
                       objective=0.9)
    data = api.get("/api/v1/analytics/?range=1h&workflow=support").json()

    slo, = data["slos"]
    assert (slo["workflow"], slo["metric"], slo["firing"]) == ("support", "success_rate", [])
    for point, burn in zip(data["series"], slo["burn"]):
        ended = point["runs"] - point["cancelled"]
        assert burn == (pytest.approx(point["failed"] / ended / 0.1) if ended else None)


def test_a_viewer_reads_the_dashboard_and_needs_a_token(client_for, member, tenant, client, traffic):
    assert client.get("/api/v1/analytics/").status_code in (401, 403)
    assert client_for(member(tenant, role=Role.VIEWER)[1]).get("/api/v1/analytics/").status_code == 200


def test_the_admin_dashboard_draws_the_charts_of_the_staff_members_tenants(tenant, other_tenant, traffic):
    made, theirs = traffic
    user = user_ensure(username="lead", is_staff=True)
    membership_set(tenant=tenant, user=user, role=Role.OPERATOR)
    client = verified_login(Client(), user)

    page = client.get("/admin/analytics/dashboard/?range=6h")

    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("<svg") >= 7 and "Runs" in html and f"<b>{len(made)}</b>" in html
    assert "theirs" not in html  # another tenant's workflow is not even a choice
    workflow = made[0].workflow_version.workflow_id
    assert client.get(f"/admin/analytics/dashboard/?workflow={theirs[0].workflow_version.workflow_id}"
                      ).status_code == 400
    exported = client.get(f"/admin/analytics/dashboard/?range=1h&workflow={workflow}&format=csv")
    assert sum(int(r["runs"]) for r in csv.DictReader(io.StringIO(exported.content.decode()))) == len(made)
    assert "Dashboard" in client.get("/admin/").content.decode()


def test_a_superuser_sees_every_tenant_and_the_cost_per_tenant(admin_client, traffic):
    html = admin_client.get("/admin/analytics/dashboard/?range=6h").content.decode()
    assert "Cost per tenant" in html and re.search(r"<title>globex: [\d.]+</title>", html)


def test_the_dashboard_escapes_names(tenant, traffic, admin_client):
    tenant.slug = "<script>alert(1)</script>"  # in the filters, the tiles, the cost per tenant's bars
    tenant.save()
    html = admin_client.get("/admin/analytics/dashboard/?range=1h").content.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html


# --- customer satisfaction ------------------------------------------------------------------------------------


@pytest.fixture
def answered(tenant, converse, drive):
    conversation, run = converse(tenant)
    return conversation, drive(run)


def test_an_integration_posts_a_rating_once(api, answered):
    conversation, run = answered
    url = f"/api/v1/conversations/{conversation.id}/satisfaction/"

    first = api.post(url, {"score": 4, "comment": "quick"}, format="json")
    again = api.post(url, {"score": 4, "comment": "quick"}, format="json")
    changed = api.post(url, {"score": 1}, format="json")

    assert first.status_code == 201 and first.json()["run"] == str(run.id)
    assert again.status_code == 200 and again.json() == first.json()
    assert changed.status_code == 409 and "already rated 4" in changed.json()["detail"]
    assert api.get(url).json()["score"] == 4 and Satisfaction.objects.count() == 1


@pytest.mark.parametrize("body", [{"score": 0}, {"score": 6}, {"score": "5"}, {"score": True}, {},
                                  {"score": 3, "comment": "x" * 2001}, {"score": 3, "comment": 7}])
def test_a_bad_rating_is_refused_and_nothing_is_saved(api, answered, body):
    conversation, _ = answered
    response = api.post(f"/api/v1/conversations/{conversation.id}/satisfaction/", body, format="json")
    assert response.status_code == 400 and response.json()
    assert not Satisfaction.objects.exists()


def test_a_conversation_without_a_finished_turn_or_of_another_tenant_cannot_be_rated(api, tenant, other_tenant,
                                                                                     publish, answered):
    publish(tenant)
    waiting = services.conversation_start(tenant=tenant, workflow_slug="wf")
    response = api.post(f"/api/v1/conversations/{waiting.id}/satisfaction/", {"score": 5}, format="json")
    assert response.status_code == 400 and "no finished turn" in response.json()["detail"]

    publish(other_tenant)
    theirs = services.conversation_start(tenant=other_tenant, workflow_slug="wf")
    assert api.post(f"/api/v1/conversations/{theirs.id}/satisfaction/", {"score": 5},
                    format="json").status_code == 404
    assert not Satisfaction.objects.exists()


def test_ratings_count_in_the_rollups_of_the_rated_runs_version(api, answered):
    conversation, run = answered
    api.post(f"/api/v1/conversations/{conversation.id}/satisfaction/", {"score": 5}, format="json")
    rollups.rollup()

    totals = api.get("/api/v1/analytics/?range=1h").json()["totals"]
    assert (totals["csat_responses"], totals["csat_score"], totals["csat_satisfied_rate"]) == (1, 5.0, 1.0)


# --- revenue ----------------------------------------------------------------------------------------------------

SALE = """
entry: a
kpis: {revenue: a.order.total}
nodes:
  - {id: a, agent: test_echo, config: {output: {order: {total: %s}}}}
edges:
  - {from: a, to: FINISH}
"""


@pytest.mark.parametrize("total,revenue", [("42.5", Decimal("42.5")), ("'19.99'", Decimal("19.99")),
                                           ("'lots'", None), ("null", None), ("true", None), ("1e400", None)])
def test_a_run_records_the_revenue_its_spec_points_at(tenant, converse, drive, total, revenue):
    _, run = converse(tenant, SALE % total)
    run = drive(run)
    assert run.status == Run.Status.DONE and run.revenue == revenue


def test_a_revenue_expression_that_does_not_parse_is_a_spec_error():
    with pytest.raises(SpecError) as refused:
        load(SALE.replace("a.order.total", "'a.order.['") % 1)
    assert refused.value.errors[0].startswith("kpis: revenue: invalid JMESPath 'a.order.['")
