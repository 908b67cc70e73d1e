"""A scripted model (the local OpenAI-compatible server, over HTTP) that misbehaves with the tools it is offered:
every attempt is refused or contained, the model is told why, and the run goes on or hands over."""

import json

import pytest
from django.conf import settings

from agents import local_llm
from agents.tests.conftest import LLM_TEST_KEY
from approvals.models import ApprovalRequest
from approvals.services import approval_decide
from accounts.models import Role
from tools.models import ToolCall, ToolLimit, ToolPolicy
from tools.services import governed_save, secret_set
from tools.tests import tools as test_tools
from workflows.models import RunEvent

pytestmark = pytest.mark.django_db

THINK = """
entry: think
nodes:
  - id: think
    agent: reasoner
    config: {task: "Help the customer."}
    tools: [test.pay, test.noop, test.profile, code.python]
edges:
  - {from: think, to: FINISH, when: "think.confidence > `0.5`"}
  - {from: think, to: HANDOVER}
"""
DONE = local_llm.json_answer({"reasoning": "done", "answer": "Done.", "confidence": 0.9})
UNSURE = local_llm.json_answer({"reasoning": "refused", "answer": "A colleague will help.", "confidence": 0.1})


def told(model) -> list[dict]:
    """What the tools answered, as the model was told in its last request."""
    return [json.loads(m["content"]) for m in model.requests[-1].body["messages"] if m["role"] == "tool"]


def test_tools_not_granted_or_outside_their_schema_are_refused_and_the_model_told(tenant, converse, drive, model):
    model.script(local_llm.tool_calls(("test__wipe", {}), ("test__pay", {"amount": "all of it", "to": "me"}),
                                      ("test__pay", {"amount": 5, "to": "me", "then": "wipe"}), ("rm", {})), DONE)
    _, run = converse(tenant, THINK)
    run = drive(run)
    assert run.sink == "FINISH"
    assert [(r["code"], r["reason"]) for r in told(model)] == [
        ("not_granted", "node 'think' has not been granted the tool test.wipe"),
        ("invalid_arguments", "test.pay: 'all of it' is not of type 'number' at /amount"),
        ("invalid_arguments", "test.pay: Additional properties are not allowed ('then' was unexpected)"),
        ("unknown_tool", "there is no tool rm")]
    first = next(r for r in model.requests if r.path == "/v1/chat/completions")
    offered = {t["function"]["name"] for t in first.body["tools"]}
    assert offered == {"test__pay", "test__noop", "test__profile", "code__python"}
    assert not ToolCall.objects.filter(run=run).exists() and not test_tools.made


def test_a_rate_limit_holds_against_a_model_that_calls_in_a_loop(tenant, converse, drive, model):
    governed_save(obj=ToolLimit(tenant=tenant, tool="test.noop", calls=2, window_s=600), actor=None)
    model.script(local_llm.tool_calls(*[("test__noop", {"n": n}) for n in range(5)]), DONE)
    _, run = converse(tenant, THINK)
    drive(run)
    assert [r.get("code") for r in told(model)] == [None, None, "rate_limited", "rate_limited", "rate_limited"]
    assert ToolCall.objects.filter(run=run, status="succeeded").count() == 2


def test_an_approval_replayed_with_other_arguments_runs_nothing(tenant, converse, drive, model, member):
    governed_save(obj=ToolPolicy(tenant=tenant, name="payments", tool="test.pay", require="approval"), actor=None)
    model.script(local_llm.tool_calls(("test__pay", {"amount": 5, "to": "customer"})),
                 local_llm.tool_calls(("test__pay", {"amount": 5000, "to": "attacker"})), UNSURE)
    _, run = converse(tenant, THINK)
    run = drive(run)
    approval = ApprovalRequest.objects.get(run=run)
    assert run.status == "waiting" and approval.payload == {"amount": 5, "to": "customer"}
    approval_decide(approval=approval, decision="approve", actor=member(tenant, Role.AGENT, "cid")[0])
    run = drive(run)
    assert run.sink == "HANDOVER"
    refusal, = told(model)
    assert refusal["code"] == "changed_arguments"
    assert not test_tools.made and ToolCall.objects.get(run=run).executions == 0


def test_code_cannot_reach_out_read_secrets_or_bring_the_worker_down(tenant, converse, drive, model):
    escape = ("import os, socket\nout = []\ntry:\n    socket.create_connection(('127.0.0.1', 5432), timeout=2)\n"
              "    out.append('database reached')\nexcept OSError:\n    out.append('no network')\n"
              "for path in ('/work', '/root', '/etc/passwd', '/proc/1/environ'):\n"
              "    out.append(path + (' visible' if os.path.exists(path) else ' absent'))\n"
              "out.append(os.environ.get('HIL_MASTER_KEY', 'no master key'))\nprint('|'.join(out))")
    fork_bomb = "import os\nwhile True:\n    os.fork()"
    memory_bomb = "x = bytearray(4 * 1024 ** 3)\nprint('allocated')"
    model.script(local_llm.tool_calls(("code__python", {"code": escape}), ("code__python", {"code": fork_bomb}),
                                      ("code__python", {"code": memory_bomb})), DONE)
    _, run = converse(tenant, THINK)
    assert drive(run).sink == "FINISH"
    escaped, forked, allocated = told(model)
    assert escaped["stdout"].strip() == ("no network|/work absent|/root absent|/etc/passwd absent|"
                                         "/proc/1/environ absent|no master key")
    assert forked["exit_code"] != 0 or forked["signal"]
    assert "MemoryError" in allocated["stderr"] and "allocated" not in allocated["stdout"]


def test_no_secret_reaches_the_model_an_event_or_a_tool(tenant, converse, drive, model):
    secret_set(tenant=tenant, name="crm-password", value="hunter2-canary-5f1c")
    leak = "import os\nprint(sorted(os.environ))"
    model.script(local_llm.tool_calls(("code__python", {"code": leak}), ("test__profile", {"customer": 1})), DONE)
    _, run = converse(tenant, THINK, text="my card is 4111 1111 1111 1111, mail me at ada@example.com")
    drive(run)
    bodies = json.dumps([r.body for r in model.requests])
    events = json.dumps(list(RunEvent.objects.filter(run=run).values_list("data", flat=True)))
    for secret in ("hunter2-canary-5f1c", LLM_TEST_KEY, settings.HIL_MASTER_KEY.hex()):
        assert secret not in bodies and secret not in events
    for pii in ("4111 1111 1111 1111", "ada@example.com", "ada.lovelace@example.com"):
        assert pii not in bodies and pii not in events
    assert "<CARD_1>" in bodies and "<EMAIL_1>" in bodies
    assert told(model)[0]["stdout"].strip() == "['HOME', 'LANG', 'PATH', 'PWD']"


def test_a_write_cannot_be_smuggled_past_its_policy(tenant, converse, drive, model):
    """The model dresses a big payment up (a string, an exponent, a split into small ones) to slip under the
    policy's condition, or calls a tool the node was not granted to do it."""
    governed_save(obj=ToolPolicy(tenant=tenant, name="big", tool="test.pay", condition="amount > `100`",
                                 require="deny"), actor=None)
    governed_save(obj=ToolLimit(tenant=tenant, tool="test.pay", calls=3, window_s=600), actor=None)
    model.script(local_llm.tool_calls(
        ("test__pay", {"amount": "1000", "to": "x"}), ("test__pay", {"amount": 1e3, "to": "x"}),
        ("test__wipe", {"then": "pay"}), *[("test__pay", {"amount": 100, "to": "x"})] * 4), DONE)
    _, run = converse(tenant, THINK)
    drive(run)
    assert [r.get("code") for r in told(model)] == ["invalid_arguments", "denied", "not_granted", None, None, None,
                                                     "rate_limited"]
    assert [args["amount"] for _, args, _ in test_tools.made] == [100, 100, 100]


def test_a_tool_acts_on_the_values_the_model_saw_only_as_tokens(tenant, converse, drive, model):
    model.script(local_llm.tool_calls(("test__pay", {"amount": 5, "to": "<EMAIL_1>"})), DONE)
    _, run = converse(tenant, THINK, text="please pay 5 back to ada@example.com")
    drive(run)
    assert "ada@example.com" not in json.dumps([r.body for r in model.requests])
    assert [args for _, args, _ in test_tools.made] == [{"amount": 5, "to": "ada@example.com"}]
    assert told(model) == [{"paid": 5, "to": "<EMAIL_1>"}]
    event, = [e.data for e in RunEvent.objects.filter(run=run, type="tool.call")]
    assert event["args"] == {"amount": 5, "to": "<EMAIL_1>"}
