import re

import pytest

from workflows.models import WorkflowVersion

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
])
def test_every_model_is_in_the_admin(admin_client, model):
    assert admin_client.get(f"/admin/{model}/").status_code == 200
