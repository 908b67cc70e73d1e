"""The process's tracer provider: spans carry ids (for run events and log lines) from the start, and are
recorded only once something exports them; until then only a trace's first span is made."""

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan

from core import tracing


def test_spans_are_recorded_once_something_exports_them_and_have_ids_before():
    provider, exported = tracing._Provider(), InMemorySpanExporter()
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("before") as before:
        assert isinstance(before, NonRecordingSpan) and before.get_span_context().is_valid
        assert tracing.ids()["span_id"] == format(before.get_span_context().span_id, "016x")
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child") as child:
        assert child.is_recording()
    assert [span.name for span in exported.get_finished_spans()] == ["child", "parent"]


def test_the_environments_sampler_decides_once_spans_are_exported(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider, exported = tracing._Provider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    with provider.get_tracer("test").start_as_current_span("dropped") as span:
        assert not span.is_recording()
    assert exported.get_finished_spans() == ()


def test_until_spans_are_recorded_a_span_inside_another_is_that_one(monkeypatch):
    monkeypatch.setattr(trace.get_tracer_provider(), "exporting", False)
    with tracing.span("invoke_workflow") as workflow, tracing.span("invoke_agent") as agent:
        assert workflow.get_span_context().is_valid and agent is workflow
        assert tracing.ids()["span_id"] == format(workflow.get_span_context().span_id, "016x")
    monkeypatch.setattr(trace.get_tracer_provider(), "exporting", True)
    with tracing.span("invoke_workflow") as workflow, tracing.span("invoke_agent") as agent:
        assert agent.get_span_context().span_id != workflow.get_span_context().span_id
