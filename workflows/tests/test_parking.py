"""A node can wait for a human in the middle of its work: the run waits holding no worker, and on the
decision the node runs again, replaying the calls it made before from the ledger."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest
from approvals.services import approvals_expire
from tools.models import ToolCall
from workflows.models import Run

pytestmark = pytest.mark.django_db


@pytest.fixture
def parked(tenant, converse, drive, tmp_path):
    """parked(**config) -> (run waiting inside node `g`, its approval, a reader of the effects log)."""
    log = tmp_path / "effects.log"
    log.touch()

    def make(**config):
        spec = f"""
entry: g
nodes:
  - {{id: g, agent: test_gated, config: {json.dumps({"log": str(log), "amount": 40, **config})}}}
  - {{id: refused, agent: responder, config: {{template: "not paid: {{{{ g.paid.reason }}}}"}}}}
edges:
  - {{from: g, to: refused, when: g.paid.refused}}
  - {{from: g, to: FINISH}}
  - {{from: refused, to: FINISH}}
"""
        _, run = converse(tenant, spec)
        run = drive(run)
        return run, ApprovalRequest.objects.get(run=run), lambda: [line.rsplit(":", 1)[1] for line in log.read_text().split()]

    return make


def decide(api, approval, body):
    return api.post(f"/api/v1/approvals/{approval.id}/decision/", body, format="json")


def test_the_run_waits_inside_the_node_after_acting_once(parked):
    run, approval, calls = parked()
    assert (run.status, run.current_node, run.lease_owner) == ("waiting", "g", "")
    assert calls() == ["1"]  # `before` acted; `pay` waits
    assert (approval.node_id, approval.call_key, approval.title) == ("g", f"{run.id}:g:2", "Pay?")
    assert approval.payload == {"amount": 40}
    assert not run.steps.exists()  # nothing is finished yet
    assert run.events.filter(type="run.waiting").get().data == {"node": "g", "approval": str(approval.id),
                                                                "call": f"{run.id}:g:2"}


def test_approved_the_node_goes_on_and_each_effect_happens_once(api, parked, drive):
    run, approval, calls = parked()
    assert decide(api, approval, {"decision": "approve"}).status_code == 200
    run = drive(run)
    assert run.sink == "FINISH"
    assert calls() == ["1", "2", "3"]  # `before` replayed from the ledger, not made again
    assert run.state["g"]["paid"] == {"done": True, "amount": 40}
    assert list(ToolCall.objects.filter(run=run).values_list("tool", "status", "executions")) == [
        ("test.before", "succeeded", 1), ("test.pay", "succeeded", 1), ("test.after", "succeeded", 1)]
    assert ToolCall.objects.get(tool="test.pay").decision["by"] == "operator-acme"


def test_edited_the_call_is_made_with_the_human_arguments(api, parked, drive):
    run, approval, calls = parked()
    assert decide(api, approval, {"decision": "edit", "payload": {"amount": 25}}).status_code == 200
    run = drive(run)
    assert run.state["g"]["paid"] == {"done": True, "amount": 25}


def test_rejected_the_call_is_refused_to_the_agent_and_never_made(api, parked, drive):
    run, approval, calls = parked()
    assert decide(api, approval, {"decision": "reject", "comment": "too much"}).status_code == 200
    run = drive(run)
    assert run.state["g"]["paid"] == {"refused": True, "reason": "rejected by operator-acme: too much"}
    assert calls() == ["1", "3"]
    assert run.messages.get(role="ai").text == "not paid: rejected by operator-acme: too much"


def test_expired_with_handover_as_its_outcome_the_run_hands_over(parked, drive):
    run, approval, calls = parked(approval={"on_expiry": "HANDOVER", "timeout_s": 60})
    assert approval.expires_at < timezone.now() + timedelta(seconds=61)
    ApprovalRequest.objects.filter(pk=approval.pk).update(expires_at=timezone.now())
    assert approvals_expire() == 1
    run = drive(run)
    assert (run.sink, run.reason) == ("HANDOVER", "approval 'Pay?' expired")
    assert calls() == ["1"]


def test_every_approval_expires_by_the_tenant_default_when_its_workflow_sets_none(tenant, parked):
    tenant.approval_timeout_s = 600
    tenant.save()
    _, approval, _ = parked()
    assert timezone.now() + timedelta(seconds=590) < approval.expires_at < timezone.now() + timedelta(seconds=601)
    assert approval.on_expiry == "reject"


def test_a_second_delivery_while_waiting_changes_nothing(parked):
    from workflows import engine

    run, approval, calls = parked()
    engine.run_execute(run_id=run.id)
    assert Run.objects.get(id=run.id).last_seq == run.last_seq and calls() == ["1"]
