"""A run can fail, but never loop: whatever breaks between claiming a node and committing it is that
node's failure, taken down its failure path with the reason on the step."""

import pytest

from approvals.models import ApprovalRequest, HandoverTicket
from workflows import engine, humans
from workflows.models import Message, Run, Step

pytestmark = pytest.mark.django_db


def one_node(agent_config: str, *, on_failure: str = "", then: str = "FINISH", when: str = "") -> str:
    edges = f"  - {{from: a, to: {then}, when: \"{when}\"}}\n  - {{from: a, to: FINISH}}" if when else \
        f"  - {{from: a, to: {then}}}"
    fallback = "  - {id: fallback, agent: responder, config: {template: sorry}}\n" if on_failure else ""
    return f"""
entry: a
nodes:
  - {{id: a, {agent_config}, limits: {{max_retries: 2, backoff: 1}}{", on_failure: fallback" if on_failure else ""}}}
{fallback}edges:
{edges}
{"  - {from: fallback, to: FINISH}" if on_failure else ""}
"""


def failed_once(run: Run, node: str = "a") -> Step:
    """The node's one failed step: no retry of what a retry cannot fix, no loop."""
    [step] = Step.objects.filter(run=run, node_id=node)
    assert step.status == "failed"
    return step


def test_a_routing_expression_that_fails_on_the_output_takes_the_failure_path(tenant, converse, drive):
    spec = one_node("agent: test_echo, config: {output: {x: text}}", on_failure="fallback",
                    when="abs(a.x) > `1`")
    _, run = converse(tenant, spec)
    run = drive(run)
    step = failed_once(run)
    assert step.error.startswith("routing after node 'a' failed: JMESPathTypeError")
    assert run.sink == "FINISH" and Message.objects.get(run=run, role="ai").text == "sorry"


@pytest.mark.parametrize("output,reason", [
    ("[1, 2]", "the agent returned list, not a JSON object"),
    ("text", "the agent returned str, not a JSON object"),
])
def test_an_output_that_is_not_an_object_fails_the_node(tenant, converse, drive, output, reason):
    _, run = converse(tenant, one_node(f"agent: test_output, config: {{output: {output}}}"))
    run = drive(run)
    assert failed_once(run).error == reason
    assert run.sink == "HANDOVER" and run.reason == f"node 'a' failed: {reason}"


@pytest.mark.parametrize("bad,reason", [
    ("nul", "the output contains a NUL character (\\u0000), which cannot be stored"),
    ("surrogate", "the output is not storable JSON: 'utf-8' codec can't encode character '\\ud800'"),
    ("nan", "the output is not storable JSON: Out of range float values are not JSON compliant"),
    ("big", "the output is 2097164 bytes, over the limit of 1048576"),
    ("object", "the output is not storable JSON: Object of type object is not JSON serializable"),
])
def test_an_output_the_database_cannot_store_fails_the_node_with_the_reason(tenant, converse, drive, bad, reason):
    _, run = converse(tenant, one_node(f"agent: test_output, config: {{bad: {bad}}}"))
    run = drive(run)
    assert failed_once(run).error.startswith(reason)
    assert run.status == "done" and run.sink == "HANDOVER"


def test_an_approval_payload_that_fails_to_evaluate_takes_the_failure_path(tenant, converse, drive):
    spec = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {amount: lots}}}
  - {id: gate, kind: approval, config: {title: Pay, payload: "{amount: abs(a.amount)}"}}
edges:
  - {from: a, to: gate}
  - {from: gate, to: FINISH}
"""
    _, run = converse(tenant, spec)
    run = drive(run)
    step = failed_once(run, "gate")
    assert step.error.startswith("the approval request failed: JMESPathTypeError")
    assert run.sink == "HANDOVER" and not ApprovalRequest.objects.exists()


def test_a_node_whose_workers_keep_dying_goes_down_its_failure_path(tenant, converse, drive, settings):
    """Each claim that ends without progress (a worker killed mid-step) is counted; past the limit the
    next claim does not run the agent again, it takes the failure path."""
    _, run = converse(tenant, one_node("agent: test_echo, config: {output: {}}", on_failure="fallback"))
    Run.objects.filter(id=run.id).update(claims=settings.HIL_MAX_CLAIMS)  # as after that many deaths
    run = drive(run)
    step = failed_once(run)
    assert step.error == (f"did not finish in {settings.HIL_MAX_CLAIMS} tries: its worker died or was stopped each "
                          "time (killed, out of memory, or past its hard time limit)")
    assert run.sink == "FINISH" and run.claims == 0


class BrokenDesk:
    def __init__(self, desk):
        self.desk = desk

    def __getattr__(self, name):
        return getattr(self.desk, name)

    def handover_open(self, **kwargs):
        raise RuntimeError("the ticket system is down")


def test_a_handover_that_fails_ends_the_run_as_failed_without_looping(tenant, converse, drive, monkeypatch):
    monkeypatch.setattr(humans, "desk", BrokenDesk(humans.desk))
    conversation, run = converse(tenant, one_node("agent: test_echo, config: {output: {}}", then="HANDOVER"))
    run = drive(run)
    assert (run.status, run.sink) == ("failed", "")
    assert run.reason == "the handover failed: RuntimeError: the ticket system is down"
    assert run.events.filter(type="run.failed").count() == 1
    conversation.refresh_from_db()
    assert conversation.status == "ai" and not HandoverTicket.objects.exists()
    engine.run_execute(run_id=run.id)  # a redelivery finds nothing to do
    assert run.events.count() == Run.objects.get(id=run.id).last_seq


def test_a_reply_that_cannot_be_posted_hands_over_instead(tenant, converse, drive):
    conversation, run = converse(tenant, one_node("agent: responder, config: {template: hello}"))
    # Someone already answered for this run (one reply per run is a database constraint).
    Message.objects.create(tenant=tenant, conversation=conversation, role="ai", text="earlier", run=run)
    run = drive(run)
    assert (run.status, run.sink) == ("done", "HANDOVER")
    assert run.reason.startswith("the reply could not be posted: IntegrityError")
    assert run.steps.get().status == "succeeded"  # the step was fine and is kept
    assert HandoverTicket.objects.get(conversation=conversation).reason == run.reason
