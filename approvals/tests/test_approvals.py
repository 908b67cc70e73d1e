"""Approvals: a human decides once, the run resumes once, and the decision is audited."""

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEntry
from approvals.models import ApprovalRequest
from approvals.services import approvals_expire
from workflows.models import Message

pytestmark = pytest.mark.django_db

GATE = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {amount: 20}}}
  - id: gate
    kind: approval
    config:
      title: Big refund
      payload: "{amount: a.amount}"
      schema: {type: object, required: [amount], properties: {amount: {type: number, maximum: 50}}}
      timeout_s: 3600
  - {id: paid, agent: responder, config: {template: "paid {{ gate.payload.amount }}"}}
  - {id: declined, agent: responder, config: {template: "declined: {{ gate.decision }}"}}
edges:
  - {from: a, to: gate}
  - {from: gate, to: paid, when: "gate.approved"}
  - {from: gate, to: declined}
  - {from: paid, to: FINISH}
  - {from: declined, to: FINISH}
"""


@pytest.fixture
def waiting(tenant, converse, drive):
    """A run waiting on its gate, and the approval it waits on."""
    _, run = converse(tenant, GATE)
    run = drive(run)
    assert run.status == "waiting"
    return run, ApprovalRequest.objects.get(run=run)


def decision(api, approval, body):
    return api.post(f"/api/v1/approvals/{approval.id}/decision/", body, format="json")


def test_the_pending_list_shows_what_waits(api, waiting):
    run, approval = waiting
    response = api.get("/api/v1/approvals/?status=pending")
    assert response.status_code == 200
    [row] = response.json()["results"]
    assert (row["id"], row["run"], row["node_id"]) == (str(approval.id), str(run.id), "gate")
    assert row["title"] == "Big refund"
    assert row["payload"] == {"amount": 20} and row["status"] == "pending" and row["expires_at"]
    assert api.get("/api/v1/approvals/?status=approved").json()["results"] == []


def test_a_decided_approval_leaves_the_pending_list(api, waiting):
    _, approval = waiting
    decision(api, approval, {"decision": "approve"})
    assert api.get("/api/v1/approvals/?status=pending").json()["count"] == 0
    assert api.get("/api/v1/approvals/?status=approved").json()["count"] == 1


def test_an_unknown_status_filter_is_400(api, waiting):
    response = api.get("/api/v1/approvals/?status=maybe")
    assert response.status_code == 400 and "status" in response.json()


def test_approve_resumes_the_run_once_and_a_second_decision_is_409(api, waiting, drive):
    run, approval = waiting
    response = decision(api, approval, {"decision": "approve", "comment": "fine"})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["decided_payload"], body["comment"]) == ("approved", {"amount": 20}, "fine")
    assert body["decided_by"] == "operator-acme" and body["decided_at"]
    again = decision(api, approval, {"decision": "reject"})
    assert again.status_code == 409
    assert again.json() == {"detail": "this approval was already decided (approved)"}
    run = drive(run)
    assert run.sink == "FINISH" and Message.objects.get(run=run, role="ai").text == "paid 20"
    assert run.events.filter(type="run.resumed").count() == 1
    assert run.events.filter(type="approval.decided").count() == 1


def test_reject_follows_the_default_edge(api, waiting, drive):
    run, approval = waiting
    assert decision(api, approval, {"decision": "reject"}).json()["status"] == "rejected"
    run = drive(run)
    assert Message.objects.get(run=run, role="ai").text == "declined: reject"


def test_edit_carries_the_edited_payload_on(api, waiting, drive):
    run, approval = waiting
    response = decision(api, approval, {"decision": "edit", "payload": {"amount": 7.5}})
    assert response.status_code == 200 and response.json()["decided_payload"] == {"amount": 7.5}
    assert Message.objects.get(run=drive(run), role="ai").text == "paid 7.5"


BAD_DECISIONS = {
    "edit without payload": ({"decision": "edit"}, "detail", "an 'edit' decision needs the edited payload"),
    "payload with approve": ({"decision": "approve", "payload": {"amount": 1}}, "detail",
                             "a payload can only be sent with an 'edit' decision"),
    "payload with reject": ({"decision": "reject", "payload": {"amount": 1}}, "detail",
                            "a payload can only be sent with an 'edit' decision"),
    "edit breaking the schema": ({"decision": "edit", "payload": {"amount": 500}}, "detail",
                                 "edited payload: 500 is greater than the maximum of 50"),
    "unknown decision": ({"decision": "maybe"}, "decision", '"maybe" is not a valid choice.'),
    "expire is not for humans": ({"decision": "expire"}, "decision", '"expire" is not a valid choice.'),
    "no decision": ({}, "decision", "This field is required."),
    "payload not an object": ({"decision": "edit", "payload": [1]}, "payload", 'Expected a dictionary of items'),
    "a list body": ([{"decision": "approve"}], "non_field_errors", "Invalid data. Expected a dictionary"),
    "comment not a string": ({"decision": "approve", "comment": 5}, "comment", "Not a valid string."),
}


@pytest.mark.parametrize("body,field,message", BAD_DECISIONS.values(), ids=BAD_DECISIONS.keys())
def test_a_bad_decision_is_400_and_leaves_it_pending(api, waiting, body, field, message):
    run, approval = waiting
    response = decision(api, approval, body)
    assert response.status_code == 400
    detail = response.json()[field]
    assert message in (detail if isinstance(detail, str) else detail[0])
    approval.refresh_from_db()
    run.refresh_from_db()
    assert (approval.status, run.status) == ("pending", "waiting")
    assert not run.events.filter(type="approval.decided").exists() and not AuditEntry.objects.filter(
        action__startswith="approval.").exists()


def test_a_viewer_cannot_decide(tenant, member, client_for, waiting):
    _, approval = waiting
    viewer = client_for(member(tenant, role="viewer")[1])
    assert decision(viewer, approval, {"decision": "approve"}).status_code == 403
    approval.refresh_from_db()
    assert approval.status == "pending"


def test_a_past_deadline_expires_it_and_the_run_takes_the_default_edge(waiting, drive):
    run, approval = waiting
    ApprovalRequest.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert approvals_expire() == 1
    approval.refresh_from_db()
    assert approval.status == "expired" and approval.decided_by is None
    run = drive(run)
    assert run.sink == "FINISH" and Message.objects.get(run=run, role="ai").text == "declined: expire"
    assert run.events.filter(type="run.resumed").count() == 1


def test_an_approval_before_its_deadline_is_not_expired(waiting):
    run, approval = waiting
    assert approvals_expire() == 0
    approval.refresh_from_db()
    assert approval.status == "pending" and approval.expires_at > timezone.now() + timedelta(minutes=59)


def test_a_decision_after_expiry_is_409(api, waiting):
    _, approval = waiting
    ApprovalRequest.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    approvals_expire()
    assert decision(api, approval, {"decision": "approve"}).status_code == 409


@pytest.mark.parametrize("body,new", [
    ({"decision": "approve", "comment": "ok"}, {"status": "approved", "payload": {"amount": 20}, "comment": "ok"}),
    ({"decision": "edit", "payload": {"amount": 3}}, {"status": "edited", "payload": {"amount": 3}, "comment": ""}),
    ({"decision": "reject", "comment": "no"}, {"status": "rejected", "payload": {"amount": 20}, "comment": "no"}),
])
def test_a_decision_is_audited_with_actor_old_and_new(tenant, api, waiting, body, new):
    _, approval = waiting
    decision(api, approval, body)
    entry = AuditEntry.objects.get(action=f"approval.{body['decision']}")
    assert (entry.tenant, entry.actor.username) == (tenant, "operator-acme")
    assert (entry.object_type, entry.object_id) == ("approvals.ApprovalRequest", str(approval.id))
    assert entry.old == {"status": "pending", "payload": {"amount": 20}}
    assert entry.new == new


@pytest.mark.parametrize("payload", [{"amount": 1, "note": "a\x00b"}, {"amount": 1, "a\x00b": 1},
                                     {"amount": 1, "notes": [{"x": "\x00"}]}])
def test_a_nul_anywhere_in_an_edited_payload_is_400(api, waiting, payload):
    """Postgres cannot store a NUL in jsonb: this used to be a 500 (DataError)."""
    _, approval = waiting
    response = decision(api, approval, {"decision": "edit", "payload": payload})
    assert response.status_code == 400 and response.json()["detail"].startswith("payload")
    approval.refresh_from_db()
    assert approval.status == "pending"
