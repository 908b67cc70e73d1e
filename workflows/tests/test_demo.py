"""The seeded demo, end to end in this process: what someone trying HIL for the first time sees."""

import re
from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import ApiToken, Tenant
from approvals.models import ApprovalRequest, HandoverTicket
from tools import knowledge
from tools.models import Document, ToolCall
from workflows.models import Message, Run, Workflow

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # hil_seed sets three


def seed() -> dict:
    out = StringIO()
    call_command("hil_seed", stdout=out)
    text = out.getvalue()
    return {"operator": re.search(r"Token \(operator\): (\S+)", text)[1],
            "alice": re.search(r"Token \(alice\):\s+(\S+)", text)[1]}


@pytest.fixture
def demo(db, client_for):
    tokens = seed()
    return {name: client_for(raw) for name, raw in tokens.items()}


@pytest.fixture
def say(demo, drive):
    """say(text, workflow="customer_support") -> the run of that message in a new conversation, driven until it
    stops."""
    api = demo["operator"]

    def send(text: str, workflow: str = "customer_support") -> Run:
        conversation = api.post("/api/v1/conversations/", {"workflow": workflow}, format="json").json()
        posted = api.post(f"/api/v1/conversations/{conversation['id']}/messages/", {"text": text, "turn_id": "t1"},
                          format="json")
        assert posted.status_code == 202, posted.json()
        return drive(Run.objects.get(pk=posted.json()["run"]["id"]))

    return send


def reply_of(run: Run) -> str:
    return Message.objects.get(run=run, role="ai").text


def decide(demo, run: Run, body: dict):
    approval = ApprovalRequest.objects.get(run=run)
    return demo["alice"].post(f"/api/v1/approvals/{approval.id}/decision/", body, format="json")


def test_a_small_refund_runs_straight_through(say):
    run = say("Please refund order 1")
    assert (run.status, run.sink) == ("done", "FINISH")
    assert reply_of(run).startswith("Done: we refunded 1.98 for order 1 (reference rf_")
    call = ToolCall.objects.get(run=run)
    assert call.tool == "refunds.issue" and call.args == {"order_id": 1, "amount": "1.98"}
    assert not ApprovalRequest.objects.filter(run=run).exists()


def test_a_refund_over_the_threshold_waits_for_approval(demo, say):
    run = say("I want my money back for order 5")
    assert run.status == "waiting" and run.current_node == "approve_refund"
    pending = demo["operator"].get("/api/v1/approvals/?status=pending").json()["results"]
    assert [(a["run"], a["payload"]) for a in pending] == [
        (str(run.id), {"order_id": 5, "amount": 13.86, "customer": pending[0]["payload"]["customer"]})]
    assert not ToolCall.objects.exists() and not Message.objects.filter(role="ai").exists()


def test_an_approved_refund_is_issued(demo, say, drive):
    run = say("I want my money back for order 5")
    assert decide(demo, run, {"decision": "approve", "comment": "ok"}).status_code == 200
    run = drive(run)
    assert run.sink == "FINISH" and "we refunded 13.86 for order 5" in reply_of(run)
    assert ToolCall.objects.get(run=run).args == {"order_id": 5, "amount": "13.86"}


def test_a_rejected_refund_is_declined_without_a_refund(demo, say, drive):
    run = say("I want my money back for order 5")
    assert decide(demo, run, {"decision": "reject", "comment": "Past the return window."}).status_code == 200
    run = drive(run)
    assert run.sink == "FINISH"
    assert reply_of(run) == "We looked at order 5 and can't refund it this time. Past the return window."
    assert not ToolCall.objects.exists()


def test_an_edited_refund_pays_the_edited_amount(demo, say, drive):
    run = say("I want my money back for order 5")
    response = decide(demo, run, {"decision": "edit", "payload": {"order_id": 5, "amount": 5.0}})
    assert response.status_code == 200 and response.json()["status"] == "edited"
    run = drive(run)
    assert "we refunded 5.00 for order 5" in reply_of(run)
    assert ToolCall.objects.get(run=run).args == {"order_id": 5, "amount": "5.00"}


def test_an_edit_that_breaks_the_payload_schema_is_400_and_stays_pending(demo, say):
    run = say("I want my money back for order 5")
    response = decide(demo, run, {"decision": "edit", "payload": {"order_id": 5, "amount": "x"}})
    assert response.status_code == 400
    assert response.json() == {"detail": "edited payload: 'x' is not of type 'number'"}
    assert ApprovalRequest.objects.get(run=run).status == "pending"
    run.refresh_from_db()
    assert run.status == "waiting"


def test_asking_for_a_person_hands_over_with_a_case_file(say):
    run = say("Can I speak to a person?")
    assert run.sink == "HANDOVER"
    ticket = HandoverTicket.objects.get(run=run)
    assert ticket.status == "open"
    case = ticket.case_file
    assert case["goal"] == "Can I speak to a person?"
    assert case["facts"]["classify"]["intent"] == "human"
    assert case["reason"] == ticket.reason == "node 'classify' routed the conversation to a human"
    assert case["tool_calls"] == [] and case["promises"] == []
    assert run.conversation.status == "awaiting_human"


def test_an_unknown_order_hands_over(say):
    run = say("refund order 999999")
    assert run.sink == "HANDOVER"
    ticket = HandoverTicket.objects.get(run=run)
    assert ticket.case_file["facts"]["lookup"] == {"found": False, "order_id": 999999}
    assert ticket.reason == "node 'lookup' routed the conversation to a human"
    assert not ToolCall.objects.exists()


def test_seeding_twice_changes_nothing_but_adds_tokens(client_for):
    first = seed()
    second = seed()
    assert Tenant.objects.filter(slug="demo").count() == 1
    workflow = Workflow.objects.get(slug="customer_support")
    assert workflow.versions.count() == 1 and workflow.live_version.is_valid()
    assert ApiToken.objects.filter(name="demo", revoked_at__isnull=True).count() == 2
    # The tokens a newcomer copied from the last `make run` keep working.
    assert client_for(first["operator"]).get("/api/v1/conversations/").status_code == 200
    assert client_for(first["alice"]).get("/api/v1/conversations/").status_code == 200
    assert client_for(second["operator"]).get("/api/v1/conversations/").status_code == 200
    assert client_for(second["alice"]).get("/api/v1/conversations/").status_code == 200


@pytest.fixture
def analyst(say):
    """say() to the store_analyst, its documents ingested (by the worker, in `make run`)."""
    for document in Document.objects.filter(status="queued"):
        knowledge.document_ingest(document_id=document.id)
    return lambda text: say(text, "store_analyst")


@pytest.mark.parametrize("question, answer", [
    ("How many customers do we have in Canada?", "Customers: 8"),
    ("What is the average invoice total?", "Average invoice: 5.65"),
    ("Which 5 artists have the most tracks?", "| Iron Maiden | 213 |"),
])
def test_the_store_analyst_answers_data_questions_with_sql(analyst, question, answer):
    run = analyst(question)
    assert run.sink == "FINISH", run.reason
    assert answer in reply_of(run)
    result = run.steps.get(node_id="ask_data").output
    assert result["sql"].startswith("SELECT") and result["columns"] and result["truncated"] is False


def test_the_store_analyst_answers_a_policy_question_citing_the_policy(analyst):
    run = analyst("What does your returns policy say about opened items?")
    assert run.sink == "FINISH", run.reason
    assert "Opened items that are not faulty cannot be returned" in reply_of(run)
    assert "Sources: returns-policy.md › Chinook Returns and Refunds Policy > Physical items > Opened items" \
        in reply_of(run)


def test_deleting_customers_waits_for_an_approval_showing_the_rows(demo, analyst, drive):
    run = analyst("Delete the customers from Brazil")
    assert run.status == "waiting"
    approval = ApprovalRequest.objects.get(run=run)
    rows = approval.preview["dry_run"]["rows"]
    assert approval.preview["dry_run"]["rows_affected"] == 5 and len(rows) == 5
    assert approval.approver_role == "operator"
    assert demo["operator"].post(f"/api/v1/approvals/{approval.id}/decision/", {"decision": "approve"},
                                 format="json").status_code == 200
    run = drive(run)
    assert run.sink == "FINISH" and reply_of(run) == "Done: 5 row(s) changed."
