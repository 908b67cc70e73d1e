"""The trace of a run on its admin page: every step attempt, model call and tool call of the turn, drawn from
HIL's own rows, nested and in time order."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import Role
from accounts.services import membership_set, user_ensure
from agents import local_llm
from agents.services import endpoint_save, profile_save
from agents.tests.conftest import LLM_TEST_KEY
from conftest import verified_login
from tools.services import secret_set
from workflows.admin import trace_rows
from workflows.tests.specs import HANDS

pytestmark = pytest.mark.django_db

# A model call that fails then one that answers, a tool call, and a step that fails once and is retried.
TURN = """
entry: classify
nodes:
  - id: classify
    agent: intent
    config: {profile: fast, intents: {refund: money back for an order, other: anything else}, fallback: unknown}
    limits: {timeout_ms: 20000, max_retries: 0}
  - {id: refund, agent: test_tool_calls, config: {calls: [[test.noop, {}]]}, tools: [test.noop]}
  - {id: check, agent: test_flaky, config: {failures: 1}, limits: {max_retries: 1, backoff: 0}}
edges:
  - {from: classify, to: refund, when: "classify.intent == 'refund'"}
  - {from: classify, to: HANDOVER}
  - {from: refund, to: check}
  - {from: check, to: FINISH}
"""
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def operator(tenant):
    """A staff operator of `tenant` who may view runs, signed in past the second factor."""
    user = user_ensure(username="ops", is_staff=True)
    membership_set(tenant=tenant, user=user, role=Role.OPERATOR)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="workflows"))
    return verified_login(Client(), user)


@pytest.fixture
def turn(tenant, converse, drive, llm_server):
    """A finished run of TURN: the primary model answers with an error holding a script, the spare answers."""
    secret_set(tenant=tenant, name="llm-key", value=LLM_TEST_KEY)
    for name, model in (("main", "primary"), ("backup", "spare")):
        endpoint_save(tenant=tenant, name=name, base_url=llm_server.base_url, api_key_secret="llm-key", models=[
            {"model": model, "context_window": 8000, "input_price": "1.0", "output_price": "2.0",
             "supports_json_schema": True}])
    profile_save(tenant=tenant, name="fast", entries=[("main", "primary"), ("backup", "spare")])
    llm_server.script(local_llm.Behaviour("error", status=500, error={"message": SCRIPT, "type": "server_error"}),
                      model="primary")
    llm_server.script(local_llm.json_answer({"intent": "refund", "confidence": 0.9, "entities": {}}), model="spare")
    _, run = converse(tenant, TURN, text="my money back for order 42")
    run = drive(run)
    assert run.sink == "FINISH"
    return run


def trace_of(page: str) -> list[tuple[str, str, str]]:
    """(indent, name, status) of each row of the page's trace, in order."""
    trace = page[page.index("Trace id"):]
    return re.findall(r'<tr><td style="padding-left:([\d.]+)em[^"]*"><code>([^<]+)</code>.*?'
                      r'<td style="color:[^"]+">([^<]+)</td>', trace, re.S)


def test_the_trace_of_a_turn_shows_every_step_model_call_and_tool_call_in_order(operator, turn):
    page = operator.get(f"/admin/workflows/run/{turn.id}/change/").content.decode()

    assert trace_of(page) == [
        ("0.0", "invoke_workflow wf", "done"),
        ("1.5", "invoke_agent intent", "succeeded"),
        ("3.0", "chat primary", "✗ error"),
        ("3.0", "chat spare", "ok"),
        ("1.5", "invoke_agent test_tool_calls", "succeeded"),
        ("3.0", "execute_tool test.noop", "succeeded"),
        ("1.5", "invoke_agent test_flaky", "✗ failed"),
        ("1.5", "invoke_agent test_flaky", "succeeded"),
    ]
    assert turn.trace_parent.split("-")[1] in page  # to paste into Jaeger or Tempo
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and SCRIPT not in page


def test_the_trace_is_read_in_a_few_queries_whatever_the_length_of_the_run(turn, django_assert_max_num_queries):
    with django_assert_max_num_queries(6):  # steps, model calls, tool calls, events, the workflow: not one per row
        assert len(trace_rows(turn)) == 8


def test_a_handover_still_open_shows_as_a_wait(operator, tenant, converse, drive):
    _, run = converse(tenant, HANDS)
    page = operator.get(f"/admin/workflows/run/{drive(run).id}/change/").content.decode()
    assert trace_of(page) == [("0.0", "invoke_workflow wf", "done"), ("1.5", "invoke_agent test_echo", "succeeded"),
                              ("1.5", "handover", "waiting")]


def test_another_tenants_staff_cannot_open_the_trace(turn, other_tenant):
    outsider = user_ensure(username="globex-ops", is_staff=True)
    membership_set(tenant=other_tenant, user=outsider, role=Role.OPERATOR)
    outsider.user_permissions.set(Permission.objects.filter(content_type__app_label="workflows"))
    response = verified_login(Client(), outsider).get(f"/admin/workflows/run/{turn.id}/change/")
    assert response.status_code == 302 and response.url == "/admin/"  # "does not exist", as for a wrong id
