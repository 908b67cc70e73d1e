"""The one mediation point of tool calls, through real runs: contracts, grants, policies, approvals bound to the
arguments, rate limits and quotas, costs, output schemas, PII redaction, events and audit rows."""

import json
import threading

import pytest

from accounts.models import AuditEntry, Role
from approvals.models import ApprovalRequest, DeskEvent
from approvals.services import approval_decide
from core.errors import Conflict, Forbidden, ServiceError
from tools.mediation import _Admission, contract_of
from tools.models import PiiVault, Tool, ToolCall, ToolGrant, ToolLimit, ToolPolicy
from tools.services import args_hash, governed_save, secret_set, tenant_tools
from tools.tests import tools as test_tools
from workflows.models import Message, RunEvent

pytestmark = pytest.mark.django_db


def spec(calls, tools=("test.pay", "test.noop", "test.wipe", "test.bad_output", "test.profile"), then="FINISH"):
    granted = f", tools: {json.dumps(list(tools))}" if tools else ""
    return f"""
entry: work
nodes:
  - {{id: work, agent: test_tool_calls, config: {{calls: {json.dumps(calls)}}}{granted}}}
edges:
  - {{from: work, to: {then}}}
"""


def results(run):
    return run.state["work"]["results"]


def tool_events(run):
    return [e.data for e in RunEvent.objects.filter(run=run, type="tool.call").order_by("seq")]


@pytest.fixture
def people(tenant, member):
    return {name: member(tenant, role, name)[0] for name, role in
            (("ann", Role.OPERATOR), ("bob", Role.OPERATOR), ("cid", Role.AGENT), ("vic", Role.VIEWER))}


def policy(tenant, actor=None, **fields):
    rule = ToolPolicy(tenant=tenant, name=fields.pop("name", "rule"), **fields)
    governed_save(obj=rule, actor=actor)
    return rule


def test_a_granted_call_runs_once_and_is_an_event(tenant, converse, drive):
    _, run = converse(tenant, spec([["test.pay", {"amount": 5, "to": "ann"}]]))
    run = drive(run)
    assert run.sink == "FINISH" and results(run) == [{"paid": 5, "to": "ann"}]
    assert ToolCall.objects.get(run=run).executions == 1
    event, = tool_events(run)
    assert event["outcome"] == "ok" and event["tool"] == "test.pay" and event["result"] == {"paid": 5, "to": "ann"}
    assert run.steps.get().cost == run.cost and str(run.cost) == "0.010000"  # the tool's cost is the step's


def test_nothing_is_granted_by_default_and_a_refusal_is_audited(tenant, converse, drive, publish, people):
    _, run = converse(tenant, spec([["test.noop", {}]], tools=()))
    run = drive(run)
    assert results(run) == [{"refused": True, "code": "not_granted",
                             "reason": "node 'work' has not been granted the tool test.noop"}]
    assert not ToolCall.objects.filter(run=run).exists()
    audit = AuditEntry.objects.get(action="tool.refused")
    assert (audit.object_id, audit.new["code"], audit.new["tool"]) == (str(run.id), "not_granted", "test.noop")

    workflow = publish(tenant, spec([["test.noop", {}]], tools=()))  # an operator grants it in the admin
    governed_save(obj=ToolGrant(tenant=tenant, workflow=workflow, node_id="work", tool="test.noop"),
                  actor=people["ann"])
    _, again = converse(tenant, spec([["test.noop", {}]], tools=()), turn_id="t2")
    assert results(drive(again)) == [{"ok": True}]
    assert AuditEntry.objects.filter(action="toolgrant.add", actor=people["ann"]).exists()


@pytest.mark.parametrize("name, args, code, reason", [
    ("test.pay", {"amount": -1, "to": "x"}, "invalid_arguments",
     "test.pay: -1 is less than the minimum of 0 at /amount"),
    ("test.pay", {"amount": 1, "to": "x", "and": "rm -rf /"}, "invalid_arguments",
     "test.pay: Additional properties are not allowed ('and' was unexpected)"),
    ("test.pay", ["not", "an", "object"], "invalid_arguments", "test.pay: the arguments must be a JSON object"),
    ("no.such", {}, "unknown_tool", "there is no tool no.such"),
    ("test.bad_output", {}, "invalid_output",
     "test.bad_output ran, and returned output its schema rejects: 'answer' is a required property"),
])
def test_what_does_not_meet_the_contract_is_refused_with_why(tenant, converse, drive, name, args, code, reason):
    _, run = converse(tenant, spec([[name, args]], tools=("test.pay", "test.bad_output", "no.such")))
    run = drive(run)
    assert run.sink == "FINISH" and results(run) == [{"refused": True, "code": code, "reason": reason}]
    assert all(call[0] != name or call[1] != args for call in test_tools.made)


def test_a_policy_denies_by_argument_value(tenant, converse, drive):
    policy(tenant, tool="test.*", condition="amount > `100`", require="deny")
    _, run = converse(tenant, spec([["test.pay", {"amount": 150, "to": "x"}], ["test.pay", {"amount": 50, "to": "y"}]]))
    first, second = results(drive(run))
    assert first == {"refused": True, "code": "denied", "reason": "test.pay: denied by policy 'rule'"}
    assert second == {"paid": 50, "to": "y"}


def test_two_approvers_then_exactly_once_with_the_approved_arguments(tenant, converse, drive, people):
    policy(tenant, tool="test.pay", condition="amount > `100`", require="approval", approver_role="operator",
           quorum=2, name="big payments")
    args = {"amount": 150, "to": "x"}
    _, run = converse(tenant, spec([["test.pay", args]]))
    run = drive(run)
    assert run.status == "waiting"
    approval = ApprovalRequest.objects.get(run=run)
    assert (approval.quorum, approval.approver_role, approval.policy) == (2, "operator", "big payments")
    assert approval.args_hash == args_hash("test.pay", args) and approval.payload == args
    assert approval.preview == {"will": "pay 150 to x"}

    with pytest.raises(Forbidden):  # an agent may not decide what needs an operator
        approval_decide(approval=approval, decision="approve", actor=people["cid"])
    with pytest.raises(ServiceError, match="needs 2 approvers"):
        approval_decide(approval=approval, decision="edit", payload={"amount": 101, "to": "x"}, actor=people["ann"])
    approval_decide(approval=approval, decision="approve", actor=people["ann"])
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    with pytest.raises(Conflict, match="already approved"):
        approval_decide(approval=approval, decision="approve", actor=people["ann"])
    assert drive(run).status == "waiting"  # one vote resumes nothing
    approval_decide(approval=approval, decision="approve", actor=people["bob"])
    run = drive(run)
    assert run.sink == "FINISH" and results(run) == [{"paid": 150, "to": "x"}]
    call = ToolCall.objects.get(run=run)
    assert (call.executions, call.status, call.decision["args_hash"]) == (1, "succeeded", approval.args_hash)
    assert [m for m in test_tools.made if m[2] == call.idempotency_key] == [("test.pay", args, call.idempotency_key)]
    assert list(RunEvent.objects.filter(run=run, type="approval.voted").values_list("data__by", flat=True)) == ["ann"]
    voted = DeskEvent.objects.get(tenant=tenant, type="approval.voted").data  # the console's inbox shows progress
    assert (voted["id"], voted["votes"], voted["quorum"], voted["status"]) == (str(approval.id), ["ann"], 2, "pending")


def test_an_edit_that_a_stricter_policy_covers_is_refused(tenant, converse, drive, people):
    policy(tenant, tool="test.pay", require="approval", name="all payments")
    policy(tenant, tool="test.pay", condition="amount > `1000`", require="approval", quorum=2, name="huge payments")
    _, run = converse(tenant, spec([["test.pay", {"amount": 10, "to": "x"}]]))
    approval = ApprovalRequest.objects.get(run=drive(run))
    with pytest.raises(ServiceError, match="policy 'huge payments' asks 2 approver"):
        approval_decide(approval=approval, decision="edit", payload={"amount": 5000, "to": "x"}, actor=people["cid"])
    with pytest.raises(ServiceError, match="edited payload"):
        approval_decide(approval=approval, decision="edit", payload={"amount": "lots", "to": "x"}, actor=people["cid"])
    approval_decide(approval=approval, decision="edit", payload={"amount": 20, "to": "x"}, actor=people["cid"])
    assert results(drive(run)) == [{"paid": 20, "to": "x"}]


def test_an_approval_for_some_arguments_never_runs_others(tenant, converse, drive, people, tmp_path):
    policy(tenant, tool="test.pay", require="approval")
    calls = tmp_path / "calls.json"
    calls.write_text(json.dumps([["test.pay", {"amount": 10, "to": "me"}]]))
    _, run = converse(tenant, f"""
entry: work
nodes:
  - {{id: work, agent: test_tool_calls, config: {{calls_file: "{calls}"}}, tools: [test.pay]}}
edges:
  - {{from: work, to: FINISH}}
""")
    approval = ApprovalRequest.objects.get(run=drive(run))
    calls.write_text(json.dumps([["test.pay", {"amount": 9999, "to": "attacker"}]]))  # the model changes its mind
    approval_decide(approval=approval, decision="approve", actor=people["cid"])
    refusal, = results(drive(run))
    assert refusal["code"] == "changed_arguments" and "was test.pay" in refusal["reason"]
    assert not [m for m in test_tools.made if m[1].get("to") == "attacker"]
    assert ToolCall.objects.get(run=run).executions == 0


def test_a_rejection_is_a_refusal_the_workflow_can_route(tenant, converse, drive, people):
    policy(tenant, tool="test.pay", require="approval")
    _, run = converse(tenant, spec([["test.pay", {"amount": 10, "to": "x"}]]))
    approval_decide(approval=ApprovalRequest.objects.get(run=drive(run)), decision="reject", comment="no",
                    actor=people["cid"])
    assert results(drive(run)) == [{"refused": True, "code": "rejected", "reason": "test.pay: rejected by cid: no"}]


def test_a_destructive_tool_needs_an_operator_unless_a_policy_says_otherwise(tenant, converse, drive, people):
    _, run = converse(tenant, spec([["test.wipe", {}]]))
    approval = ApprovalRequest.objects.get(run=drive(run))
    assert approval.approver_role == "operator"
    with pytest.raises(Forbidden):
        approval_decide(approval=approval, decision="approve", actor=people["cid"])
    with pytest.raises(Forbidden):
        approval_decide(approval=approval, decision="approve", actor=people["vic"])
    approval_decide(approval=approval, decision="approve", actor=people["ann"])
    assert results(drive(run)) == [{"wiped": True}]


def test_the_rate_limit_and_the_daily_quota_hold(tenant, converse, drive):
    governed_save(obj=ToolLimit(tenant=tenant, tool="test.noop", calls=2, window_s=3600, per_day=3), actor=None)
    _, run = converse(tenant, spec([["test.noop", {}]] * 3))
    assert [r.get("code") for r in results(drive(run))] == [None, None, "rate_limited"]
    assert "rate limit of 2 calls per 3600 s reached" in results(run)[2]["reason"]
    limit = ToolLimit.objects.get(tenant=tenant)
    limit.calls = None
    governed_save(obj=limit, actor=None)
    _, run = converse(tenant, spec([["test.noop", {}]] * 2), turn_id="t2")
    assert [r.get("code") for r in results(drive(run))] == [None, "quota"]


def test_twenty_concurrent_calls_against_a_limit_of_five_admit_exactly_five(tenant):
    governed_save(obj=ToolLimit(tenant=tenant, tool="test.noop", calls=5, window_s=3600), actor=None)
    contract, start, admitted = contract_of(tenant.id, "test.noop"), threading.Barrier(20), []
    assert tenant_tools(tenant.id).limits  # read here: the threads' connections do not see the test's transaction

    class Ctx:
        tenant_id = tenant.id

    def call():
        start.wait()
        try:
            _Admission(Ctx, contract).admit()
            admitted.append(1)
        except Exception as e:
            assert "rate limit" in str(e)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 5


def test_a_tool_over_the_step_budget_is_refused(tenant, converse, drive):
    _, run = converse(tenant, f"""
entry: work
nodes:
  - id: work
    agent: test_tool_calls
    config: {{calls: {json.dumps([["test.pay", {"amount": 1, "to": "a"}]] * 2)}}}
    tools: [test.pay]
    limits: {{max_cost: 0.015}}
edges:
  - {{from: work, to: FINISH}}
""")
    first, second = results(drive(run))
    assert first == {"paid": 1, "to": "a"} and second["code"] == "over_budget"


def test_personal_data_reaches_neither_events_nor_the_model_but_the_customer_sees_it(tenant, converse, drive):
    _, run = converse(tenant, spec([["test.profile", {"customer": 7}]]))
    run = drive(run)
    profile, = results(run)
    assert profile == {"name": "Ada Lovelace", "email": "<EMAIL_1>", "phone": "<PHONE_1>", "card": "<CARD_1>",
                       "note": "customer 7"}
    stored = json.dumps(list(RunEvent.objects.filter(run=run).values_list("data", flat=True)))
    assert "ada.lovelace" not in stored and "4111" not in stored and "7946" not in stored
    vault = PiiVault.objects.get(run=run)
    assert b"ada.lovelace" not in bytes(vault.ciphertext)


def test_a_reply_is_filled_in_for_the_customer(tenant, converse, drive):
    _, run = converse(tenant, """
entry: work
nodes:
  - {id: work, agent: test_tool_calls, config: {calls: [[test.profile, {customer: 7}]]}, tools: [test.profile]}
  - {id: reply, agent: responder, config: {template: "We wrote to {{ work.results[0].email }}."}}
edges:
  - {from: work, to: reply}
  - {from: reply, to: FINISH}
""")
    run = drive(run)
    assert run.state["reply"]["reply"] == "We wrote to <EMAIL_1>."
    assert Message.objects.get(run=run, role="ai").text == "We wrote to ada.lovelace@example.com."
    assert "ada.lovelace" not in json.dumps(list(RunEvent.objects.filter(run=run).values_list("data", flat=True)))


def test_code_runs_sandboxed_through_the_mediation(tenant, converse, drive):
    escape = ("import os, socket\ntry:\n    socket.create_connection(('127.0.0.1', 5432), timeout=2)\n"
              "    print('reached the database')\nexcept OSError:\n    print('no network')\n"
              "print(os.environ.get('HIL_MASTER_KEY', 'no key'), os.path.exists('/work'))")
    _, run = converse(tenant, spec([["code.python", {"code": escape}]], tools=("code.python",)))
    ran, = results(drive(run))
    assert ran["exit_code"] == 0 and ran["stdout"].split("\n")[:2] == ["no network", "no key False"]


def test_an_approval_node_asks_for_a_role_and_a_quorum_the_same_way(tenant, converse, drive, people):
    _, run = converse(tenant, """
entry: gate
nodes:
  - {id: gate, kind: approval, config: {title: Refund, payload: "{amount: `500`}", approver_role: operator, quorum: 2}}
edges:
  - {from: gate, to: FINISH}
""")
    approval = ApprovalRequest.objects.get(run=drive(run))
    with pytest.raises(Forbidden):
        approval_decide(approval=approval, decision="approve", actor=people["cid"])
    assert approval_decide(approval=approval, decision="approve", actor=people["ann"]).status == "pending"
    assert approval_decide(approval=approval, decision="approve", actor=people["bob"]).status == "approved"
    run = drive(run)
    assert run.sink == "FINISH" and run.state["gate"]["approved"] is True


def test_an_http_tool_gets_its_key_and_secret_and_a_failure_is_retried(tenant, converse, drive):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen, answers = [], [503, 200]

    class Endpoint(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.headers["Idempotency-Key"], self.headers["Authorization"], body))
            status = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"ticket": "T-1", "mail": "bob@example.org"}).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        secret_set(tenant=tenant, name="desk-token", value="desk-secret-value")
        governed_save(obj=Tool(tenant=tenant, name="desk.open", kind="http", risk="write", secret="desk-token",
                               url=f"http://127.0.0.1:{server.server_port}/tickets",
                               input_schema={"type": "object", "required": ["subject"]}), actor=None)
        _, run = converse(tenant, spec([["desk.open", {"subject": "refund"}]], tools=("desk.open",)).replace(
            "agent: test_tool_calls", "agent: test_tool_calls, limits: {max_retries: 1, backoff: 1}"))
        run = drive(run)
    finally:
        server.shutdown()
    assert results(run) == [{"ticket": "T-1", "mail": "<EMAIL_1>"}]
    (key1, auth, body), (key2, _, _) = seen
    assert key1 == key2 == f"{run.id}:work:1" and auth == "Bearer desk-secret-value" and body == {"subject": "refund"}
    assert "503" in run.steps.get(attempt=1).error


def test_the_console_inbox_lists_what_the_members_role_may_decide(tenant, converse, drive, people, client):
    from conftest import verified_login

    policy(tenant, tool="test.wipe", require="approval", approver_role="admin", name="admins only")
    policy(tenant, tool="test.pay", require="approval", name="anyone")
    _, run = converse(tenant, spec([["test.pay", {"amount": 1, "to": "x"}]]))
    drive(run)
    _, run = converse(tenant, spec([["test.wipe", {}]]), turn_id="t2")
    drive(run)

    def inbox(user):
        html = verified_login(client, user).get("/console/").content.decode()
        boot = json.loads(html.split('<script id="boot" type="application/json">')[1].split("</script>")[0])
        return sorted(a["title"] for a in boot["approvals"])

    assert inbox(people["cid"]) == ["test.pay (anyone)"]
    assert inbox(people["vic"]) == ["test.pay (anyone)", "test.wipe (admins only)"]  # read-only


def test_a_policy_can_hold_a_workflow_in_review_stage_only(tenant, converse, drive, publish, people):
    from workflows.services import workflow_stage_set

    policy(tenant, tool="test.pay", stage="review", require="deny", name="not while in review")
    workflow = publish(tenant, spec([["test.pay", {"amount": 1, "to": "x"}]]))
    _, run = converse(tenant, spec([["test.pay", {"amount": 1, "to": "x"}]]))
    assert results(drive(run)) == [{"paid": 1, "to": "x"}]
    workflow_stage_set(workflow=workflow, stage="review", actor=people["ann"])
    _, run = converse(tenant, spec([["test.pay", {"amount": 1, "to": "x"}]]), turn_id="t2")
    assert results(drive(run))[0]["code"] == "denied"
    assert AuditEntry.objects.get(action="workflow.stage").new == {"stage": "review"}


def test_the_admin_audits_a_change_of_stage(admin_client, tenant, publish):
    workflow = publish(tenant, spec([["test.noop", {}]]))
    response = admin_client.post(f"/admin/workflows/workflow/{workflow.id}/change/", {
        "tenant": tenant.id, "slug": workflow.slug, "name": workflow.name, "stage": "shadow",
        "versions-TOTAL_FORMS": 0, "versions-INITIAL_FORMS": 0})
    assert response.status_code == 302, response.content.decode()[:2000]
    workflow.refresh_from_db()
    assert workflow.stage == "shadow" and AuditEntry.objects.get(action="workflow.stage").old == {"stage": "auto"}


def test_a_condition_that_cannot_be_told_holds_on_the_safe_side(tenant, converse, drive):
    policy(tenant, tool="refunds.issue", condition="amount > `100`", require="deny", name="big refunds")
    _, run = converse(tenant, spec([["refunds.issue", {"order_id": 1, "amount": "5.00"}]], tools=("refunds.issue",)))
    refusal, = results(drive(run))  # "5.00" > 100: JMESPath cannot compare text with a number
    assert refusal["code"] == "denied"
    rule = ToolPolicy.objects.get(tenant=tenant, name="big refunds")
    rule.condition = "to_number(amount) > `100`"
    governed_save(obj=rule, actor=None)
    _, run = converse(tenant, spec([["refunds.issue", {"order_id": 1, "amount": "5.00"}]], tools=("refunds.issue",)),
                      turn_id="t2")
    assert results(drive(run))[0]["amount"] == "5.00"
