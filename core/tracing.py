"""Tracing with OpenTelemetry: one trace per turn, from the API request through the Celery hop into every step, model
call and tool call, named as the GenAI semantic conventions name them (`invoke_workflow`, `invoke_agent {agent}`,
`chat {model}`, `execute_tool {tool}`).

The hop is the run's row, not the task's message: a run keeps the traceparent of the request that made it
(`Run.trace_parent`), and every task that walks it, first or after a retry, a takeover by the sweeper or an
approval, continues that trace. Run events and log lines carry the trace id.

Spans are exported only when the standard environment asks: `OTEL_TRACES_EXPORTER=otlp` or `console`, or an
`OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` (OTLP over HTTP, the other `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables
as the SDK reads them). Until something exports them, a trace's first span is made with its ids and nothing else
(the trace id goes in events and logs), and no span inside it is made: recording a model call's span would cost
28 µs, making it unrecorded 13 (bench/README.md), for ids that lead nowhere. `OTEL_SDK_DISABLED=true` makes none.
"""

import os
import secrets
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, Status, StatusCode

__all__ = ["SpanKind", "continued", "failed", "ids", "logged_as", "setup", "span", "trace_id", "traceparent", "tracer"]

tracer = trace.get_tracer("hil")
# What a log line says about where it was written (hil_project/logs.py): the tenant, run and node a worker is on.
log_context: ContextVar[dict] = ContextVar("hil_log_context", default={})


def setup() -> None:
    """The process's tracer provider, once (before a Celery fork: the batch processor restarts its thread in
    each child)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or isinstance(trace.get_tracer_provider(),
                                                                                TracerProvider):
        return
    provider = _Provider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "hil")}))
    exporter = _exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


class _Provider(TracerProvider):
    """Records spans once a span processor is added (an exporter, or a test's in-memory one), as the sampler
    that the environment names (OTEL_TRACES_SAMPLER; by default a parent's decision, else sampled) decides;
    before, every span is dropped: made with its ids only."""

    def __init__(self, **kwargs):
        self.exporting = False
        super().__init__(**kwargs)
        self.sampler = _WhenExported(self, self.sampler)

    def add_span_processor(self, span_processor) -> None:
        super().add_span_processor(span_processor)
        self.exporting = True


class _WhenExported(Sampler):
    def __init__(self, provider: _Provider, exported: Sampler):
        self.provider, self.exported = provider, exported

    def should_sample(self, *args, **kwargs) -> SamplingResult:
        if self.provider.exporting:
            return self.exported.should_sample(*args, **kwargs)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return f"WhenExported{{{self.exported.get_description()}}}"


def _exporter():
    chosen = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if chosen == "console":
        return ConsoleSpanExporter()
    if chosen == "otlp" or (endpoint and chosen != "none"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


def ids() -> dict[str, str]:
    """The current span's {"trace_id", "span_id"} in hex, or {} outside any span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": format(span_context.trace_id, "032x"), "span_id": format(span_context.span_id, "016x")}


def trace_id() -> str:
    """The current trace's id (32 hex digits), or "" outside any span."""
    return ids().get("trace_id", "")


def traceparent() -> str:
    """The current span as a W3C traceparent, for a run to continue; outside any span, a new trace's."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent") or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


@contextmanager
def continued(parent: str):
    """Spans made inside continue the trace of `parent` (a traceparent; empty: a new trace)."""
    token = context.attach(propagate.extract({"traceparent": parent} if parent else {}))
    try:
        yield
    finally:
        context.detach(token)


def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes):
    """A span made current for the block. An exception leaving it marks it failed with the exception's type only:
    its message may hold what a customer wrote, and spans leave the platform. Until something records spans, the
    block inside a span gets that span, not one of its own."""
    around = trace.get_current_span()
    if not _recording() and around.get_span_context().is_valid:
        return nullcontext(around)
    return _span(name, kind, attributes)


def _recording() -> bool:
    """Whether spans are recorded: something exports them."""
    return getattr(trace.get_tracer_provider(), "exporting", False)


@contextmanager
def _span(name: str, kind: SpanKind, attributes: dict):
    with tracer.start_as_current_span(name, kind=kind, attributes=_clean(attributes), record_exception=False,
                                      set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as e:
            failed(type(e).__name__, type(e).__name__)
            raise


def failed(error: str, error_type: str = "") -> None:
    """Mark the current span as failed (a step that failed, a tool call refused). `error` is shown as the span's
    status: no personal data in it (tools.pii.masked)."""
    current = trace.get_current_span()
    current.set_status(Status(StatusCode.ERROR, error[:200]))
    current.set_attribute("error.type", error_type or "error")


def _clean(attributes: dict) -> dict:
    return {key: value for key, value in attributes.items() if value is not None}


@contextmanager
def logged_as(**fields):
    """Log lines written inside say these fields (tenant, run, node), on top of the ones around."""
    token = log_context.set({**log_context.get(), **fields})
    try:
        yield
    finally:
        log_context.reset(token)


class TraceMiddleware:
    """A server span per HTTP request, `{METHOD} {route}`, continuing a caller's `traceparent` header."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with continued(request.headers.get("traceparent", "")), span(
                f"{request.method}", kind=SpanKind.SERVER, **{"http.request.method": request.method,
                                                               "url.path": request.path}) as current:
            response = self.get_response(request)
            route = getattr(getattr(request, "resolver_match", None), "route", None)
            if route:
                current.update_name(f"{request.method} /{route}")
                current.set_attribute("http.route", "/" + route)
            current.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                failed(f"HTTP {response.status_code}", str(response.status_code))
            return response
