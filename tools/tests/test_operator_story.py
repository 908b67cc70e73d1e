"""The issue's story, from the admin only: an operator registers an MCP server, grants two of its tools to a
workflow node, and sets a policy that one of them needs two approvers above an amount; a run that calls it waits
for both, then runs it exactly once with the approved arguments."""

import json

import pytest

from accounts.models import AuditEntry, Role
from approvals.models import ApprovalRequest
from tools.models import McpServer, Tool
from tools.tests.mcp_fixtures import mcp_http_server

pytestmark = pytest.mark.django_db

REFUND = """
entry: look
nodes:
  - {id: look, agent: tool, config: {tool: crm.lookup_order, args: {order_id: "`7`"}}}
  - id: refund
    agent: tool
    config: {tool: crm.issue_refund, args: {order_id: "look.result.order_id", amount: "`150`", reason: "'late'"}}
edges:
  - {from: look, to: refund}
  - {from: refund, to: HANDOVER, when: "refund.refused"}
  - {from: refund, to: FINISH}
"""


@pytest.fixture
def crm(tmp_path):
    with mcp_http_server(tmp_path) as server:
        yield server


def add(admin_client, model: str, data: dict):
    response = admin_client.post(f"/admin/tools/{model}/add/", data)
    assert response.status_code == 302, response.content.decode()[:3000]


def test_an_operator_sets_it_all_up_in_the_admin_and_two_approvers_let_it_run_once(
        admin_client, tenant, member, client_for, converse, publish, drive, crm):
    url, token, calls = crm
    add(admin_client, "secret", {"tenant": tenant.id, "name": "crm-token", "value": f"Bearer {token}"})
    add(admin_client, "mcpserver", {"tenant": tenant.id, "name": "crm", "transport": "http", "url": url,
                                    "headers": json.dumps({"Authorization": "crm-token"}), "env": "{}",
                                    "command": "[]", "timeout_s": 20, "enabled": "on",
                                    "tools-TOTAL_FORMS": 0, "tools-INITIAL_FORMS": 0})
    server = McpServer.objects.get(tenant=tenant)
    assert server.synced_at and not server.sync_error
    tools = {t.name: t for t in Tool.objects.filter(mcp_server=server)}
    assert {"crm.lookup_order", "crm.issue_refund", "crm.delete_account"} <= set(tools)
    assert (tools["crm.lookup_order"].risk, tools["crm.delete_account"].risk) == ("read", "destructive")
    assert tools["crm.issue_refund"].input_schema["required"] == ["order_id", "amount"]

    workflow = publish(tenant, REFUND, slug="refunds")
    for node, tool in (("look", "crm.lookup_order"), ("refund", "crm.issue_refund")):
        add(admin_client, "toolgrant", {"tenant": tenant.id, "workflow": workflow.id, "node_id": node, "tool": tool})
    add(admin_client, "toolpolicy", {"tenant": tenant.id, "name": "big refunds", "enabled": "on",
                                     "tool": "crm.issue_refund", "condition": "amount > `100`", "require": "approval",
                                     "approver_role": "operator", "quorum": 2, "on_expiry": "reject"})
    assert set(AuditEntry.objects.filter(tenant=tenant).values_list("action", flat=True)) >= {
        "secret.set", "mcpserver.add", "mcpserver.sync", "toolgrant.add", "toolpolicy.add"}

    _, run = converse(tenant, REFUND, slug="refunds")
    run = drive(run)
    assert run.status == "waiting" and run.state["look"]["result"]["order_id"] == 7
    approval = ApprovalRequest.objects.get(run=run)
    assert approval.payload == {"order_id": 7, "amount": 150, "reason": "late"} and approval.quorum == 2

    ann, bob = (client_for(member(tenant, Role.OPERATOR, name)[1]) for name in ("ann", "bob"))
    first = ann.post(f"/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"}, format="json")
    assert first.status_code == 200 and first.json()["status"] == "pending"
    assert ann.post(f"/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"},
                    format="json").status_code == 409
    assert drive(run).status == "waiting" and not calls.exists()
    assert bob.post(f"/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"},
                    format="json").json()["status"] == "approved"
    run = drive(run)
    assert run.sink == "FINISH"
    made = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(made) == 1 and (made[0]["order_id"], made[0]["amount"]) == (7, 150)
    assert run.state["refund"]["result"]["amount"] == 150
