"""The tool-call ledger: each side effect once, across retries, crashes and takeovers."""

import json
import threading

import pytest
from django.db import connection

from agents.registry import LeaseLost, StepContext
from tools.models import ToolCall
from tools.services import tool_call_once
from workflows.models import Run
from workflows.tests.agents import external_effect

pytestmark = pytest.mark.django_db


@pytest.fixture
def effect_log(tmp_path):
    """The external system's record: the path agents append keys to, and a reader of the keys."""
    path = tmp_path / "effects.log"
    path.touch()
    return str(path), lambda: path.read_text().split()


def effects_spec(log: str, calls: list[dict], failures: int = 0, max_retries: int = 2) -> str:
    config = json.dumps({"log": log, "calls": calls, "failures": failures})
    return f"""
entry: e
nodes:
  - {{id: e, agent: test_effects, config: {config}, limits: {{max_retries: {max_retries}, backoff: 1}}}}
edges:
  - {{from: e, to: FINISH}}
"""


def test_a_retry_after_a_side_effect_replays_it_instead_of_acting_again(tenant, converse, drive, effect_log):
    log, keys = effect_log
    _, run = converse(tenant, effects_spec(log, [{"amount": 5}], failures=2))
    run = drive(run)
    assert run.sink == "FINISH"
    assert list(run.steps.values_list("attempt", "status")) == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    assert keys() == [f"{run.id}:e:1"]  # acted once, though the node ran three times
    call = ToolCall.objects.get(run=run)
    assert (call.status, call.executions, call.result) == ("succeeded", 1, {"done": True, "amount": 5})
    assert run.state["e"]["results"] == [{"done": True, "amount": 5}]


def test_two_calls_of_one_tool_in_one_step_are_two_entries(tenant, converse, drive, effect_log):
    log, keys = effect_log
    _, run = converse(tenant, effects_spec(log, [{"n": 1}, {"n": 1}]))
    run = drive(run)
    assert keys() == [f"{run.id}:e:1", f"{run.id}:e:2"]
    assert list(ToolCall.objects.filter(run=run).values_list("seq", "args", "status")) == [
        (1, {"n": 1}, "succeeded"), (2, {"n": 1}, "succeeded")]


def test_the_same_key_with_other_arguments_is_refused_and_does_not_act(tenant, converse, drive, effect_log):
    log, keys = effect_log
    spec = f"""
entry: a
nodes:
  - {{id: a, agent: test_attempt_args, config: {{log: "{log}"}}, limits: {{max_retries: 1, backoff: 1}}}}
edges:
  - {{from: a, to: FINISH}}
"""
    _, run = converse(tenant, spec)
    run = drive(run)
    assert keys() == [f"{run.id}:a:1"]
    second = run.steps.get(attempt=2)
    assert second.error.startswith("ToolCallConflict: call 1 of node 'a' was test.effect {\"attempt\": 1}")
    assert run.sink == "HANDOVER"


def ctx_for(run: Run, holding=None) -> StepContext:
    from functools import partial

    from workflows.engine import _holding

    return StepContext(tenant_id=run.tenant_id, run_id=str(run.id), node_id="e", attempt=1, config={}, state={},
                       holding=holding or partial(_holding, run.id, run.lease_owner))


@pytest.fixture
def running(tenant, converse):
    """A run that this test holds under a lease, as a worker would."""
    _, run = converse(tenant)
    Run.objects.filter(id=run.id).update(status=Run.Status.RUNNING, lease_owner="mine")
    run.refresh_from_db()
    return run


def test_a_call_whose_outcome_is_unknown_is_made_again_with_the_same_key(running, effect_log):
    """A worker died between the effect and its record: the row is pending; the next attempt repeats
    the call under the same key, for the system acted upon to deduplicate."""
    log, keys = effect_log
    ToolCall.objects.create(tenant_id=running.tenant_id, run=running, node_id="e", seq=1, tool="test.effect",
                            idempotency_key=f"{running.id}:e:1", args={"n": 1}, status="pending", executions=1)
    result = tool_call_once(ctx=ctx_for(running), tool="test.effect", args={"n": 1}, call=external_effect(log))
    assert result == {"done": True, "n": 1}
    assert keys() == [f"{running.id}:e:1"]
    call = ToolCall.objects.get(run=running)
    assert (call.status, call.executions) == ("succeeded", 2)


def test_a_failed_call_is_tried_again_and_its_error_kept_until_then(running, effect_log):
    log, keys = effect_log

    def broken(args, key):
        raise ConnectionError("the payment provider is down")

    with pytest.raises(ConnectionError):
        tool_call_once(ctx=ctx_for(running), tool="test.effect", args={}, call=broken)
    call = ToolCall.objects.get(run=running)
    assert (call.status, call.error) == ("failed", "ConnectionError: the payment provider is down")
    tool_call_once(ctx=ctx_for(running), tool="test.effect", args={}, call=external_effect(log))
    call.refresh_from_db()
    assert (call.status, call.error, call.executions) == ("succeeded", "", 2)


@pytest.mark.django_db(transaction=True)
def test_the_pending_record_is_committed_before_the_effect_starts(running):
    seen = []

    def look(args, key):  # from another connection, as a worker taking the run over would see it
        def read():
            seen.append(ToolCall.objects.filter(idempotency_key=key).values_list("status", flat=True).first())
            connection.close()

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        return {}

    tool_call_once(ctx=ctx_for(running), tool="test.effect", args={}, call=look)
    assert seen == ["pending"]


def test_a_worker_that_lost_its_lease_does_not_act(running, effect_log):
    log, keys = effect_log
    Run.objects.filter(id=running.id).update(lease_owner="another worker")
    with pytest.raises(LeaseLost):
        tool_call_once(ctx=ctx_for(running), tool="test.effect", args={}, call=external_effect(log))
    assert keys() == [] and not ToolCall.objects.exists()


def test_a_worker_that_lost_its_lease_mid_effect_cannot_record_it(running, effect_log):
    log, keys = effect_log

    def taken_over_meanwhile(args, key):
        Run.objects.filter(id=running.id).update(lease_owner="another worker")
        return external_effect(log)(args, key)

    with pytest.raises(LeaseLost):
        tool_call_once(ctx=ctx_for(running), tool="test.effect", args={}, call=taken_over_meanwhile)
    assert ToolCall.objects.get(run=running).status == "pending"  # the new holder repeats it, same key


def test_a_started_call_of_a_tool_that_cannot_tell_a_repeated_key_is_not_made_again(running, effect_log):
    """Its outcome unknown (the worker died after starting it), the call is refused for a human to settle; a call
    approved and never started is made."""
    log, keys = effect_log
    ToolCall.objects.create(tenant_id=running.tenant_id, run=running, node_id="e", seq=1, tool="test.effect",
                            idempotency_key=f"{running.id}:e:1", args={"n": 1}, status="pending", executions=1)
    result = tool_call_once(ctx=ctx_for(running), tool="test.effect", args={"n": 1}, call=external_effect(log),
                            repeatable=False)
    assert (result["refused"], result["code"]) == (True, "outcome_unknown")
    assert keys() == []
    assert ToolCall.objects.get(run=running).status == "pending"

    ToolCall.objects.filter(run=running).update(executions=0)  # approved and never started: nothing to doubt
    result = tool_call_once(ctx=ctx_for(running), tool="test.effect", args={"n": 1}, call=external_effect(log),
                            repeatable=False)
    assert result == {"done": True, "n": 1} and keys() == [f"{running.id}:e:1"]
