"""The planner and the reasoner through real runs against the local OpenAI-compatible server."""

import pytest

from agents import local_llm
from agents.models import LLMCall
from agents.services import endpoint_save, profile_save
from agents.tests.conftest import LLM_TEST_KEY
from tools.services import secret_set
from workflows.models import Message, RunEvent

pytestmark = pytest.mark.django_db

PLAN = """
entry: plan
nodes:
  - id: plan
    agent: planner
    config: {capabilities: {order_lookup: find an order, issue_refund: refund an order}}
  - {id: work, agent: rules, config: {rules: {steps: "length(plan.plan)"}}}
edges:
  - {from: plan, to: FINISH, when: "plan.question"}
  - {from: plan, to: work}
  - {from: work, to: HANDOVER}
"""
REASON = """
entry: think
nodes:
  - {id: think, agent: reasoner, config: {task: "Is the order refundable?"}}
edges:
  - {from: think, to: FINISH, when: "think.confidence > `0.5`"}
  - {from: think, to: HANDOVER}
"""


@pytest.fixture
def model(tenant, llm_server):
    secret_set(tenant=tenant, name="llm-key", value=LLM_TEST_KEY)
    endpoint_save(tenant=tenant, name="local", base_url=llm_server.base_url, api_key_secret="llm-key", models=[
        {"model": "hil-local-chat", "context_window": 16000, "input_price": "1", "output_price": "2"}])
    for profile in ("balanced", "powerful"):
        profile_save(tenant=tenant, name=profile, entries=[("local", "hil-local-chat")])
    return llm_server


def test_a_plan_is_kept_as_an_artifact_of_the_run(tenant, converse, drive, model):
    steps = [{"step": "find order 3", "use": "order_lookup", "why": "to see what was paid"},
             {"step": "refund it", "use": "issue_refund", "why": "the customer asked"}]
    model.script(local_llm.json_answer({"plan": steps, "question": None}))
    _, run = converse(tenant, PLAN, text="refund order 3")
    run = drive(run)

    assert run.state["plan"] == {"plan": steps, "question": None} and run.state["work"] == {"steps": 2}
    assert RunEvent.objects.get(run=run, type="artifact").data == {"node": "plan", "kind": "plan", "plan": steps}
    assert "- issue_refund: refund an order" in model.requests[-1].body["messages"][0]["content"]


def test_a_plan_naming_something_it_cannot_use_is_asked_for_again(tenant, converse, drive, model):
    model.script(local_llm.json_answer({"plan": [{"step": "x", "use": "rm -rf", "why": "y"}], "question": None}),
                 local_llm.json_answer({"plan": [], "question": None}))
    _, run = converse(tenant, PLAN)
    assert drive(run).state["plan"]["plan"] == []
    assert list(LLMCall.objects.filter(run=run).values_list("outcome", flat=True)) == ["ok", "invalid_output"]


def test_an_unclear_request_gets_a_clarifying_question_as_the_reply(tenant, converse, drive, model):
    model.script(local_llm.json_answer({"plan": [], "question": "Which order do you mean?"}))
    _, run = converse(tenant, PLAN, text="it is broken")
    run = drive(run)
    assert run.sink == "FINISH" and Message.objects.get(run=run, role="ai").text == "Which order do you mean?"
    assert not RunEvent.objects.filter(run=run, type="artifact").exists()


def test_the_reasoner_answers_from_the_facts_and_low_confidence_goes_to_a_human(tenant, converse, drive, model):
    model.script(local_llm.json_answer({"reasoning": "paid 1.98, within 30 days", "answer": "Yes", "confidence": 0.9}),
                 local_llm.json_answer({"reasoning": "no order given", "answer": "Unknown order", "confidence": 0.2}))
    _, sure = converse(tenant, REASON, slug="a")
    _, unsure = converse(tenant, REASON, slug="b")
    assert drive(sure).sink == "FINISH" and sure.state["think"]["answer"] == "Yes"
    assert drive(unsure).sink == "HANDOVER"
    first = next(r for r in model.requests if r.path == "/v1/chat/completions")
    assert "Is the order refundable?" in first.body["messages"][0]["content"]


def test_offline_the_reasoner_hands_over_saying_it_needs_a_model(tenant, converse, drive):
    _, run = converse(tenant, REASON)
    run = drive(run)
    assert run.sink == "HANDOVER" and "needs a model" in run.reason
