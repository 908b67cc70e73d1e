from decimal import Decimal

import pytest
from django.db import connection

from tools.models import ToolCall
from workflows.models import Message, Run, Step

pytestmark = pytest.mark.django_db


def test_a_linear_run_finishes_with_the_reply(tenant, converse, drive):
    conversation, run = converse(tenant)
    run = drive(run)
    assert (run.status, run.sink) == (Run.Status.DONE, "FINISH")
    assert [s.node_id for s in run.steps.all()] == ["a", "b"]
    reply = Message.objects.get(conversation=conversation, role="ai")
    assert reply.text == "x is 1" and reply.run_id == run.id
    types = [e.type for e in run.events.order_by("seq")]
    assert types == ["run.queued", "run.started", "step.succeeded", "step.succeeded", "run.finished"]
    assert [e.seq for e in run.events.order_by("seq")] == [1, 2, 3, 4, 5]


def test_a_duplicate_delivery_of_a_finished_run_does_nothing(tenant, converse, drive):
    _, run = converse(tenant)
    run = drive(run)
    from workflows import engine

    engine.run_execute(run_id=run.id)
    assert run.steps.count() == 2 and run.events.count() == 5
    assert Message.objects.filter(run=run, role="ai").count() == 1


FLAKY = """
entry: f
nodes:
  - {id: f, agent: test_flaky, config: {failures: %d}, limits: {max_retries: 2, backoff: 10}}
edges:
  - {from: f, to: FINISH}
"""


def test_a_failing_step_is_retried_with_backoff_then_succeeds(tenant, converse, drive):
    _, run = converse(tenant, FLAKY % 2)
    run = drive(run)
    assert run.sink == "FINISH"
    assert list(run.steps.values_list("attempt", "status")) == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    retries = [e.data for e in run.events.filter(type="step.retry_scheduled").order_by("seq")]
    assert [r["delay_ms"] for r in retries] == [10, 20]


def test_retries_exhausted_hand_over_with_the_reason(tenant, converse, drive):
    conversation, run = converse(tenant, FLAKY % 5)
    run = drive(run)
    assert run.sink == "HANDOVER"
    assert run.steps.filter(status="failed").count() == 3
    assert "node 'f' failed after 3 attempts: RuntimeError: flaky failure on attempt 3" == run.reason
    ticket = conversation.handovers.get()
    assert ticket.status == "open" and ticket.reason == run.reason
    conversation.refresh_from_db()
    assert conversation.status == "awaiting_human"


SLOW_QUERY = """
entry: q
nodes:
  - {id: q, agent: test_pg_sleep, config: {ms: 60000}, limits: {timeout_ms: 300, max_retries: 0}, on_failure: fallback}
  - {id: fallback, agent: responder, config: {template: "sorry"}}
edges:
  - {from: q, to: FINISH}
  - {from: fallback, to: FINISH}
"""


@pytest.mark.django_db(transaction=True)  # as on a worker: a cancelled query aborts no outer transaction
def test_a_slow_query_is_cut_off_at_the_deadline_and_the_failure_path_taken(tenant, converse, drive):
    _, run = converse(tenant, SLOW_QUERY)
    run = drive(run)
    step = run.steps.get(node_id="q")
    assert step.status == "failed" and step.error == "timed out after 300 ms"
    assert step.duration_ms() < 5000
    assert run.sink == "FINISH" and Message.objects.get(run=run, role="ai").text == "sorry"
    with connection.cursor() as cursor:  # the connection is usable, with no timeout left behind
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


@pytest.fixture
def slow_server():
    """A local HTTP server that answers after 30 s: its URL."""
    import http.server
    import threading

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            stop.wait(30)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    stop = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    stop.set()
    server.shutdown()


def test_an_http_call_given_the_time_left_is_cut_off_at_the_deadline(tenant, converse, drive, slow_server):
    _, run = converse(tenant, f"""
entry: h
nodes:
  - {{id: h, agent: test_http, config: {{url: "{slow_server}"}}, limits: {{timeout_ms: 300, max_retries: 0}}}}
edges:
  - {{from: h, to: FINISH}}
""")
    run = drive(run)
    step = run.steps.get()
    assert (step.status, step.error) == ("failed", "timed out after 300 ms") and step.duration_ms() < 5000
    assert run.sink == "HANDOVER"


COSTLY = """
entry: c
nodes:
  - {id: c, agent: test_costly, config: {cost: 0.5}, limits: {max_cost: 0.1, max_retries: 3}}
edges:
  - {from: c, to: FINISH}
"""


def test_a_step_over_its_cost_budget_fails_without_retry(tenant, converse, drive):
    _, run = converse(tenant, COSTLY)
    run = drive(run)
    assert run.sink == "HANDOVER"
    assert run.steps.count() == 1
    assert "over the node's budget" in run.steps.get().error


def test_step_costs_add_up_on_the_run(tenant, converse, drive):
    _, run = converse(tenant, COSTLY.replace("max_cost: 0.1", "max_cost: 1"))
    run = drive(run)
    assert run.cost == Decimal("0.5")


def test_a_side_effect_carries_the_step_idempotency_key(tenant, converse, drive):
    spec = """
    entry: s
    nodes:
      - {id: s, agent: test_side_effect}
    edges:
      - {from: s, to: FINISH}
    """
    _, run = converse(tenant, spec)
    run = drive(run)
    call = ToolCall.objects.get(run=run)
    assert call.idempotency_key == f"{run.id}:s:1" == Step.objects.get(run=run).idempotency_key
