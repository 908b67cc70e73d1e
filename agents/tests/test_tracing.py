"""Traces of a turn, read with the SDK's in-memory exporter in this process: the API request, then the engine as a
worker runs it (`drive`: the run's row carries the trace over, as it does to a worker), every step, model call and
tool call in one tree, with the GenAI semantic conventions' names and attributes; the trace id on the run's events
and its log lines; no secret or personal data in any span or log line."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.tests.test_data_agents import ANALYST, CANADA, chinook, reply, sql_answer  # noqa: F401  (fixture)
from hil_project.logs import JsonFormatter
from tools.services import secret_set
from workflows.models import Run, RunEvent
from workflows.tests.conftest import Daphne, start_worker, wait  # noqa: F401  (fixtures)

EXPORTER = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(EXPORTER))
CANARY_EMAIL = "canary.customer@example.org"
CANARY_CARD = "4111 1111 1111 1111"


@pytest.fixture
def spans():
    EXPORTER.clear()
    return EXPORTER.get_finished_spans


@pytest.fixture
def log_lines():
    """Every log line written during the test, formatted as production formats them."""
    lines, formatter = [], JsonFormatter()

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(formatter.format(record))

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.DEBUG
    yield lines
    root.removeHandler(handler)
    root.level = old_level


def a_turn(api, tenant, publish, text: str) -> Run:
    publish(tenant, ANALYST, "analyst")
    conversation = api.post("/api/v1/conversations/", {"workflow": "analyst"}, format="json").json()
    posted = api.post(f"/api/v1/conversations/{conversation['id']}/messages/", {"text": text, "turn_id": "t1"},
                      format="json")
    assert posted.status_code == 202, posted.json()
    return Run.objects.get(id=posted.json()["run"]["id"])


def test_a_turn_is_one_trace_from_the_request_through_every_step_model_and_tool_call(
        api, tenant, publish, chinook, drive, model, spans):  # noqa: F811
    model.script(sql_answer(CANADA), reply("We have 8 customers in Canada."))
    run = drive(a_turn(api, tenant, publish, "How many customers do we have in Canada?"))
    assert run.sink == "FINISH", run.reason

    found = spans()
    by_name = {span.name: span for span in found}
    request = by_name["POST /api/v1/conversations/<uuid:pk>/messages/"]
    assert {span.context.trace_id for span in found if span.name != "POST /api/v1/conversations/"} == {
        request.context.trace_id}
    workflow = by_name["invoke_workflow analyst"]
    assert workflow.parent.span_id == request.context.span_id  # the hop: the run's row carried the trace
    agents = [span for span in found if span.name.startswith("invoke_agent ")]
    assert sorted(span.attributes["hil.node"] for span in agents) == ["answer", "ask"]
    assert {span.parent.span_id for span in agents} == {workflow.context.span_id}
    ask = next(span for span in agents if span.attributes["hil.node"] == "ask")
    chats = [span for span in found if span.name.startswith("chat ")]
    assert chats and {span.parent.span_id for span in chats} <= {a.context.span_id for a in agents}
    chat = next(span for span in chats if span.parent.span_id == ask.context.span_id)
    assert chat.kind == trace.SpanKind.CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == chat.name.removeprefix("chat ")
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0 and chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert chat.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    tool = by_name["execute_tool sql.query"]
    assert tool.parent.span_id == ask.context.span_id
    assert tool.attributes["gen_ai.tool.name"] == "sql.query"

    events = RunEvent.objects.filter(run=run)
    assert events.count() > 3
    assert set(events.values_list("trace_id", flat=True)) == {format(request.context.trace_id, "032x")}


def test_a_failed_step_and_a_refused_tool_call_mark_their_spans(tenant, converse, chinook, drive, model,
                                                               spans):  # noqa: F811
    model.script(sql_answer('DROP TABLE "Customer"'))
    _, run = converse(tenant, ANALYST.replace("tools: [sql.query, sql.write]", "tools: [sql.query]"),
                      text="Remove the customer table")
    run = drive(run)
    assert run.sink == "HANDOVER"
    refused = [span for span in spans() if span.name == "execute_tool sql.write"]
    assert refused and all(span.status.status_code == trace.StatusCode.ERROR for span in refused)
    assert refused[0].attributes["error.type"] == "refused"


def test_no_secret_or_personal_data_reaches_a_span_or_a_log_line(api, tenant, publish, chinook, drive, model,
                                                                 spans, log_lines):  # noqa: F811
    canary_secret = "sk-canary-9f8e7d6c5b4a"
    secret_set(tenant=tenant, name="canary", value=canary_secret, actor=None)
    text = f"My card is {CANARY_CARD} and my email {CANARY_EMAIL}: how many customers are in Canada?"
    model.script(sql_answer(CANADA), reply("We have 8 customers in Canada."))
    logging.getLogger("hil.test").warning("customer wrote: %s", text)  # as a careless log line would
    run = drive(a_turn(api, tenant, publish, text))
    assert run.status == "done"

    dumped = "\n".join(json.dumps({"name": s.name, "attributes": dict(s.attributes or {}),
                                   "status": s.status.description, "events": [e.name for e in s.events]})
                       for s in spans())
    logged = "\n".join(log_lines)
    assert "<email>" in logged and "<card>" in logged  # the careless line, masked
    for canary in (canary_secret, CANARY_EMAIL, CANARY_CARD, CANARY_CARD.replace(" ", "")):
        assert canary not in dumped and canary not in logged
    lines = [json.loads(line) for line in log_lines]
    traced = [line for line in lines if line.get("run") == str(run.id)]
    assert traced and all(line["trace_id"] == RunEvent.objects.filter(run=run).first().trace_id for line in traced)


class OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on a free port of 127.0.0.1: what a collector would get from our processes."""

    def __init__(self):
        self.spans: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans += [{"name": s.name, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                                            "parent": s.parent_span_id.hex()} for s in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.django_db(transaction=True)
def test_spans_of_the_api_server_and_the_worker_form_one_tree_over_otlp(tenant, member, publish, chinook, model,
                                                                       monkeypatch, start_worker, tmp_path,
                                                                       wait):  # noqa: F811
    receiver = OtlpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{receiver.server_port}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    server = Daphne(tmp_path / "daphne.log")
    try:
        start_worker()
        publish(tenant, ANALYST, "analyst")
        model.script(sql_answer(CANADA), reply("We have 8 customers in Canada."))
        headers = {"Authorization": f"Bearer {member(tenant)[1]}", "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
        conversation = httpx.post(f"{server.url}/api/v1/conversations/", json={"workflow": "analyst"},
                                  headers=headers).json()
        posted = httpx.post(f"{server.url}/api/v1/conversations/{conversation['id']}/messages/",
                            json={"text": "How many customers do we have in Canada?", "turn_id": "t1"},
                            headers=headers)
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["run"]["id"]
        wait(lambda: Run.objects.get(id=run_id).status == "done", what="the run")
        names = {"invoke_workflow analyst", "invoke_agent sql", "invoke_agent responder", "execute_tool sql.query"}
        wait(lambda: names <= {s["name"] for s in receiver.spans} and any(
            s["name"].startswith("chat ") for s in receiver.spans), what="the worker's spans")
    finally:
        server.stop()
        receiver.shutdown()

    turn = [s for s in receiver.spans if s["trace"] == "ab" * 16]  # the caller's trace, continued
    ids = {s["id"] for s in turn}
    request = next(s for s in turn if s["name"] == "POST /api/v1/conversations/<uuid:pk>/messages/")
    roots = [s for s in turn if s["parent"] not in ids]  # the caller's two requests; below them, one tree each
    assert sorted(s["name"] for s in roots) == ["POST /api/v1/conversations/", request["name"]]
    assert {s["parent"] for s in roots} == {"cd" * 8}
    workflow = next(s for s in turn if s["name"] == "invoke_workflow analyst")
    # This process exports nothing over OTLP (its exporter was chosen before the test set the endpoint): the request
    # span came from Daphne, the workflow's from the worker, its child across the Celery hop.
    assert workflow["parent"] == request["id"]
    assert {s["name"] for s in turn} >= names | {request["name"]}
    assert set(RunEvent.objects.filter(run_id=run_id).values_list("trace_id", flat=True)) == {"ab" * 16}
