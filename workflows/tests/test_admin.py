import json
import re

import pytest

from tools.models import DataSource
from workflows.models import WorkflowVersion

# A run whose one step records a SQL result, as the sql agent does.
ARTIFACT = """
entry: a
nodes:
  - {id: a, agent: test_artifact, config: {artifact: RESULT}}
edges:
  - {from: a, to: FINISH}
"""

pytestmark = pytest.mark.django_db


def test_a_run_shows_its_steps_and_events_in_order(admin_client, tenant, converse, drive):
    _, run = converse(tenant)
    drive(run)
    page = admin_client.get(f"/admin/workflows/run/{run.id}/change/").content.decode()
    steps = page.index("Steps")
    assert page.index(">a<", steps) < page.index(">b<", steps)
    events = re.findall(r"#(\d+) ([a-z]+\.[a-z_]+)", page[page.index("Run events"):])
    assert events == [("1", "run.queued"), ("2", "run.started"), ("3", "step.succeeded"), ("4", "step.succeeded"),
                      ("5", "run.finished")]


def test_a_version_with_errors_shows_them_and_cannot_be_published(admin_client, tenant, publish):
    workflow = publish(tenant)
    bad = "entry: a\nnodes:\n  - {id: a, agent: nope}\nedges:\n  - {from: a, to: FINISH}\n"
    response = admin_client.post("/admin/workflows/workflowversion/add/", {"workflow": workflow.pk, "spec_yaml": bad},
                                 follow=True)
    assert "cannot be published" in response.content.decode()
    version = WorkflowVersion.objects.get(workflow=workflow, number=2)
    page = admin_client.get(f"/admin/workflows/workflowversion/{version.pk}/change/").content.decode()
    assert "node &#x27;a&#x27;: unknown agent &#x27;nope&#x27;" in page

    response = admin_client.post("/admin/workflows/workflowversion/", {
        "action": "publish", "_selected_action": [version.pk]}, follow=True)
    assert "has errors and cannot be published" in response.content.decode()
    workflow.refresh_from_db()
    assert workflow.live_version.number == 1


def test_a_valid_version_added_in_the_admin_is_published_by_the_action(admin_client, tenant, publish):
    workflow = publish(tenant)
    spec = WorkflowVersion.objects.get(workflow=workflow, number=1).spec_yaml.replace("x is", "x =")
    admin_client.post("/admin/workflows/workflowversion/add/", {"workflow": workflow.pk, "spec_yaml": spec})
    version = WorkflowVersion.objects.get(workflow=workflow, number=2)
    assert version.is_valid()
    admin_client.post("/admin/workflows/workflowversion/", {"action": "publish", "_selected_action": [version.pk]})
    workflow.refresh_from_db()
    assert workflow.live_version == version


@pytest.mark.parametrize("model", [
    "accounts/tenant", "accounts/membership", "accounts/apitoken", "workflows/workflow", "workflows/workflowversion",
    "workflows/conversation", "workflows/message", "workflows/run", "workflows/runevent", "tools/toolcall",
    "approvals/approvalrequest", "approvals/handoverticket", "approvals/cannedreply", "accounts/auditentry",
    "tools/datasource", "tools/sqlexample", "tools/knowledgesource", "tools/document",
])
def test_every_model_is_in_the_admin(admin_client, model):
    assert admin_client.get(f"/admin/{model}/").status_code == 200


def test_a_run_page_shows_its_sql_result_as_a_table_and_a_chart(admin_client, tenant, converse, drive):
    result = {"kind": "sql_result", "sql": "SELECT ...", "columns": ["Country", "Sales"],
              "rows": [["USA", 523.06], ["<b>Canada</b>", 303.96]], "row_count": 2, "truncated": False, "ms": 1.2,
              "chart": {"type": "bar", "x": 0, "y": 1}}
    _, run = converse(tenant, ARTIFACT.replace("RESULT", json.dumps(result)))
    drive(run)
    page = admin_client.get(f"/admin/workflows/run/{run.id}/change/").content.decode()
    assert "<td>USA</td><td>523.06</td>" in page and page.count('<rect x=') == 2
    assert "&lt;b&gt;Canada&lt;/b&gt;" in page and "<b>Canada</b>" not in page  # data is escaped


def test_a_data_source_that_does_not_open_is_not_saved_and_says_why(admin_client, tenant):
    response = admin_client.post("/admin/tools/datasource/add/", {
        "tenant": tenant.pk, "name": "shop", "engine": "sqlite", "location": "missing.sqlite", "row_cap": 200,
        "timeout_ms": 5000, "column_tags": "{}"})
    assert response.status_code == 200 and "missing.sqlite" in response.content.decode()
    assert not DataSource.objects.exists()
