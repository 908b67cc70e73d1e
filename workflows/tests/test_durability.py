"""Nothing lost, nothing twice: real worker processes, killed, duplicated, raced."""

import threading
from datetime import timedelta

import pytest
from kombu import pools as kombu_pools

from approvals.models import ApprovalRequest
from hil_project.celery import app as celery_app
from tools.models import ToolCall
from workflows.models import Message, Run, RunEvent, Step
from workflows.tasks import run_execute_task

pytestmark = pytest.mark.django_db(transaction=True)

SLOW_SIDE_EFFECT = """
entry: before
nodes:
  - {id: before, agent: test_echo, config: {output: {ok: true}}}
  - {id: effect, agent: test_side_effect, config: {ms: 2500}, limits: {timeout_ms: 4000}}
  - {id: reply, agent: responder, config: {template: "done"}}
edges:
  - {from: before, to: effect}
  - {from: effect, to: reply}
  - {from: reply, to: FINISH}
"""


def assert_each_step_once(run):
    steps = list(Step.objects.filter(run=run).values_list("node_id", "status"))
    assert sorted(steps) == sorted({(node, "succeeded") for node, _ in steps}), steps
    seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_worker_killed_mid_step_is_replaced_and_the_run_resumes_without_repeating_the_side_effect(
        tenant, converse, start_worker, wait):
    worker = start_worker()
    _, run = converse(tenant, SLOW_SIDE_EFFECT)
    # The side effect is done and the step still running: the worst moment to die.
    wait(lambda: ToolCall.objects.filter(run=run).exists(), what="the side effect")
    worker.kill()
    run.refresh_from_db()
    assert (run.status, run.current_node) == (Run.Status.RUNNING, "effect")

    start_worker()  # its sweeper finds the expired lease and re-enqueues the run
    run = wait(lambda: Run.objects.filter(id=run.id, status=Run.Status.DONE).first(), timeout=60, what="the run")
    assert run.sink == "FINISH"
    assert ToolCall.objects.filter(run=run).count() == 1
    assert list(Step.objects.filter(run=run).values_list("node_id", "attempt")) == [
        ("before", 1), ("effect", 1), ("reply", 1)]
    assert_each_step_once(run)
    resumed = RunEvent.objects.filter(run=run, type="run.started").order_by("seq").values_list("data", flat=True)
    assert [d["resumed"] for d in resumed] == [False, True], list(run.events.values_list("seq", "type", "data", "ts"))
    assert Message.objects.filter(run=run, role="ai").count() == 1


def test_the_same_task_delivered_many_times_runs_each_step_once(tenant, converse, start_worker, wait):
    start_worker(concurrency=2)
    start_worker(concurrency=2)
    _, run = converse(tenant, SLOW_SIDE_EFFECT.replace("ms: 2500", "ms: 300"))
    for _ in range(5):
        run_execute_task.delay(str(run.id))
    run = wait(lambda: Run.objects.filter(id=run.id, status=Run.Status.DONE).first(), what="the run")
    assert run.sink == "FINISH"
    assert Step.objects.filter(run=run).count() == 3
    assert_each_step_once(run)
    assert ToolCall.objects.filter(run=run).count() == 1
    assert RunEvent.objects.filter(run=run, type="run.started").count() == 1
    assert Message.objects.filter(run=run, role="ai").count() == 1


def race(n, fn):
    """Call fn() from n threads at once; returns their results (or exceptions)."""
    from django.db import connection

    barrier, results = threading.Barrier(n), []

    def go():
        barrier.wait()
        try:
            results.append(fn())
        finally:
            connection.close()

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_the_same_turn_posted_concurrently_makes_one_message_and_one_run(tenant, api, publish):
    publish(tenant)
    conversation_id = api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").json()["id"]
    url = f"/api/v1/conversations/{conversation_id}/messages/"
    responses = race(6, lambda: api.post(url, {"text": "hello", "turn_id": "turn-1"}, format="json"))
    assert {r.status_code for r in responses} == {202}
    assert len({(r.json()["message"]["id"], r.json()["run"]["id"]) for r in responses}) == 1
    assert Message.objects.filter(conversation_id=conversation_id).count() == 1
    assert Run.objects.filter(conversation_id=conversation_id).count() == 1


APPROVAL = """
entry: gate
nodes:
  - {id: gate, kind: approval, config: {title: "Go?", payload: "{x: `1`}"}}
  - {id: approved, agent: responder, config: {template: "approved"}}
  - {id: rejected, agent: responder, config: {template: "rejected"}}
edges:
  - {from: gate, to: approved, when: gate.approved}
  - {from: gate, to: rejected}
  - {from: approved, to: FINISH}
  - {from: rejected, to: FINISH}
"""


def test_an_approval_decided_concurrently_resumes_the_run_once(tenant, converse, member, client_for, start_worker, wait):
    start_worker()
    _, run = converse(tenant, APPROVAL)
    approval = wait(lambda: ApprovalRequest.objects.filter(run=run).first(), what="the approval")
    run.refresh_from_db()
    assert run.status == Run.Status.WAITING

    clients = [client_for(member(tenant, "agent", f"agent{i}")[1]) for i in range(4)]
    decisions = iter(["approve", "reject", "approve", "reject"])
    url = f"/api/v1/approvals/{approval.id}/decision/"
    responses = race(4, lambda: clients.pop().post(url, {"decision": next(decisions)}, format="json"))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    winner = next(r.json() for r in responses if r.status_code == 200)

    run = wait(lambda: Run.objects.filter(id=run.id, status=Run.Status.DONE).first(), what="the run")
    expected = "approved" if winner["status"] == "approved" else "rejected"
    assert list(Message.objects.filter(run=run, role="ai").values_list("text", flat=True)) == [expected]
    assert RunEvent.objects.filter(run=run, type="run.resumed").count() == 1
    assert RunEvent.objects.filter(run=run, type="approval.decided").count() == 1
    assert_each_step_once(run)


def broker_to(url):
    """Send this process's tasks to `url` from now on (Celery and kombu cache their connections)."""
    kombu_pools.reset()
    celery_app._pool = celery_app.amqp._producer_pool = None
    celery_app.conf.broker_url = url


def test_a_message_posted_while_the_broker_is_down_is_kept_and_its_run_swept_later(
        tenant, api, publish, start_worker, wait):
    publish(tenant)
    conversation_id = api.post("/api/v1/conversations/", {"workflow": "wf"}, format="json").json()["id"]
    broker_url = celery_app.conf.broker_url
    broker_to("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        response = api.post(f"/api/v1/conversations/{conversation_id}/messages/", {"text": "hi", "turn_id": "t"},
                            format="json")
    finally:
        broker_to(broker_url)
    assert response.status_code == 202
    run = Run.objects.get(id=response.json()["run"]["id"])
    assert run.status == Run.Status.QUEUED
    Run.objects.filter(id=run.id).update(wake_at=run.wake_at - timedelta(minutes=5))  # long since due

    start_worker()  # its sweeper finds the run that no message announced
    run = wait(lambda: Run.objects.filter(id=run.id, status=Run.Status.DONE).first(), what="the run")
    assert Message.objects.get(run=run, role="ai").text == "x is 1"
