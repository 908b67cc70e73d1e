from collections import defaultdict
from datetime import timedelta
from typing import NamedTuple

from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from accounts.admin import TenantScopedAdmin
from agents.models import LLMCall
from core import charts
from core.errors import ServiceError

from . import services
from .models import Conversation, Message, Run, RunEvent, Step, Workflow, WorkflowVersion


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class VersionInline(ReadOnlyInline):
    model = WorkflowVersion
    fields = readonly_fields = ["number", "created_at", "published_at", "errors"]  # read-only on a POST too
    show_change_link = True


@admin.register(Workflow)
class WorkflowAdmin(TenantScopedAdmin):
    list_display = ["slug", "name", "tenant", "live_version", "stage"]
    list_filter = ["tenant", "stage"]
    search_fields = ["slug", "name"]
    readonly_fields = ["live_version"]
    inlines = [VersionInline]

    def save_model(self, request, obj, form, change):
        stage = obj.stage
        if change:  # a new stage goes through its service, audited: tool policies can match on it
            obj.stage = form.initial["stage"]
        super().save_model(request, obj, form, change)
        if change and stage != obj.stage:
            services.workflow_stage_set(workflow=obj, stage=stage, actor=request.user)


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(TenantScopedAdmin):
    """Versions are immutable: add a new one to change a workflow. A version with errors
    shows them and cannot be published."""

    list_display = ["__str__", "workflow", "valid", "published_at", "created_at"]
    list_filter = ["workflow__tenant", "workflow"]
    actions = ["publish"]
    fields = ["workflow", "spec_yaml", "validation"]
    readonly_fields = ["validation"]

    @admin.display(boolean=True)
    def valid(self, obj):
        return obj.is_valid()

    @admin.display(description="Validation")
    def validation(self, obj):
        if obj is None or obj.pk is None:
            return "Checked when you save."
        if obj.is_valid():
            return "Valid."
        return format_html("<ul class='errorlist'>{}</ul>", format_html_join("", "<li>{}</li>", ((e,) for e in obj.errors)))

    def get_readonly_fields(self, request, obj=None):
        return ["workflow", "spec_yaml", "validation"] if obj else ["validation"]

    def save_model(self, request, obj, form, change):
        if change:
            return
        version = services.workflow_version_create(workflow=obj.workflow, spec_yaml=obj.spec_yaml, actor=request.user)
        obj.pk, obj.number = version.pk, version.number
        if version.errors:
            messages.warning(request, f"Saved {version} as a draft with {len(version.errors)} error(s); it cannot be published.")

    @admin.action(description="Publish the selected version (make it live)")
    def publish(self, request, queryset):
        for version in queryset:
            try:
                services.workflow_version_publish(version=version, actor=request.user)
                messages.success(request, f"{version} is live.")
            except ServiceError as e:
                messages.error(request, str(e))


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ["created_at", "role", "text", "turn_id", "run", "author"]


@admin.register(Conversation)
class ConversationAdmin(TenantScopedAdmin):
    list_display = ["id", "workflow", "status", "created_at"]
    list_filter = ["tenant", "status"]
    inlines = [MessageInline]
    readonly_fields = ["tenant", "workflow", "status", "created_at"]


@admin.register(Message)
class MessageAdmin(TenantScopedAdmin):
    list_display = ["created_at", "conversation", "role", "text"]
    list_filter = ["tenant", "role"]
    readonly_fields = [f.name for f in Message._meta.fields]


class StepInline(ReadOnlyInline):
    model = Step
    fields = ["node_id", "agent", "attempt", "status", "output", "error", "cost", "duration", "idempotency_key"]
    readonly_fields = ["duration"]
    ordering = ["id"]

    @admin.display(description="ms")
    def duration(self, obj):
        return obj.duration_ms()


class EventInline(ReadOnlyInline):
    model = RunEvent
    fields = ["seq", "type", "data", "ts"]
    ordering = ["seq"]


@admin.register(Run)
class RunAdmin(TenantScopedAdmin):
    list_display = ["id", "workflow_version", "status", "sink", "current_node", "cost", "created_at"]
    list_filter = ["tenant", "status", "sink"]
    readonly_fields = [f.name for f in Run._meta.fields] + ["results", "trace"]
    fieldsets = [(None, {"fields": [f.name for f in Run._meta.fields] + ["results"]}),
                 ("Trace", {"fields": ["trace"]})]
    inlines = [StepInline, EventInline]
    actions = ["cancel", "retry"]

    @admin.display(description="results")
    def results(self, run):
        """What the run found: each SQL result as a table (and a chart where one fits), each passage it searched,
        with what the reply cited marked."""
        artifacts = [e.data for e in run.events.filter(type="artifact").order_by("seq")]
        quotes = [c["quote"] for a in artifacts if a.get("kind") == "citations" for c in a["citations"]]
        shown = []
        for artifact in artifacts:
            if artifact.get("kind") == "sql_result":
                shown.append(_sql_result(artifact))
            elif artifact.get("kind") == "snippets":
                shown.append(format_html_join("", '<blockquote><b>{} › {}</b><br>{}</blockquote>', (
                    (s["title"], s["heading"], _marked(s["text"], quotes)) for s in artifact["snippets"])))
        return format_html_join("", "{}", ((part,) for part in shown)) or "—"

    @admin.display(description="trace")
    def trace(self, run):
        """The turn's trace as a waterfall drawn from HIL's own rows (spans leave only when OTLP is set up)."""
        rows = trace_rows(run)
        total = max(row.start_ms + row.duration_ms for row in rows) or 1
        trace_id = run.trace_parent.split("-")[1] if run.trace_parent.count("-") == 3 else ""
        body = format_html_join("", (
            '<tr><td style="padding-left:{}em;white-space:nowrap"><code>{}</code></td><td>{}</td><td>{}</td>'
            '<td style="width:35%"><div style="margin-left:{}%;width:{}%;min-width:2px;height:1em;background:{}">'
            '</div></td><td style="color:{}">{}</td><td>{}</td></tr>'), (
            (row.depth * 1.5, row.name, row.start_ms, row.duration_ms, _percent(row.start_ms, total),
             _percent(row.duration_ms, total), "var(--error-fg)" if row.failed else BAR[row.name.split()[0]],
             "var(--error-fg)" if row.failed else "inherit", f"✗ {row.status}" if row.failed else row.status,
             " · ".join(row.attributes)) for row in rows))
        return format_html(
            '<p>Trace id <code>{}</code>: look it up in Jaeger or Tempo when spans are exported over OTLP.</p>'
            '<table style="width:100%"><thead><tr><th>span</th><th>start ms</th><th>ms</th><th>{} ms</th>'
            '<th>status</th><th>attributes</th></tr></thead><tbody>{}</tbody></table>', trace_id or "—", total, body)

    def has_add_permission(self, request):
        return False

    @admin.action(description="Cancel the selected runs")
    def cancel(self, request, queryset):
        self._each(request, queryset, "cancelled", lambda run: services.run_cancel(run=run, actor=request.user))

    @admin.action(description="Retry the selected runs (failed or cancelled)")
    def retry(self, request, queryset):
        self._each(request, queryset, "queued again", lambda run: services.run_retry(run=run, actor=request.user))

    def _each(self, request, queryset, done: str, action) -> None:
        for run in queryset:
            try:
                action(run)
                messages.success(request, f"Run {run} {done}.")
            except ServiceError as e:
                messages.error(request, f"Run {run}: {e}")


@admin.register(RunEvent)
class RunEventAdmin(TenantScopedAdmin):
    list_display = ["run", "seq", "type", "ts"]
    list_filter = ["tenant", "type"]
    readonly_fields = [f.name for f in RunEvent._meta.fields]


class TraceRow(NamedTuple):
    name: str  # as core/tracing.py names the span: `invoke_agent classify`, `chat gpt-4o-mini`, ...
    depth: int
    start_ms: int  # from the run's creation
    duration_ms: int
    status: str
    failed: bool
    attributes: list[str]


BAR = {"invoke_workflow": "var(--body-quiet-color)", "invoke_agent": "var(--secondary)", "chat": "var(--primary)",
       "execute_tool": "var(--accent)", "approval": "var(--border-color)", "handover": "var(--border-color)"}


def trace_rows(run: Run) -> list[TraceRow]:
    """The run's trace, from its rows: `invoke_workflow`, then in time order each step attempt (`invoke_agent`) with
    its model calls (`chat`, matched by node and attempt) and tool calls (`execute_tool`, by node and the attempt
    running when the call was made) under it, and the waits for humans (approvals, the handover). One query per
    table however long the run; times in ms from the run's creation."""
    now = timezone.now()

    def ms(at) -> int:
        return round((at - run.created_at).total_seconds() * 1000)

    def row(name, depth, start, end, status, failed, *attributes) -> TraceRow:
        return TraceRow(name, depth, max(ms(start), 0), max(ms(end) - ms(start), 0), status, failed,
                        [a for a in attributes if a])

    steps = list(run.steps.order_by("started_at", "id"))
    by_attempt, by_node, under = {}, defaultdict(list), defaultdict(list)
    for step in steps:
        by_attempt[step.node_id, step.attempt] = step
        by_node[step.node_id].append(step)
    for call in LLMCall.objects.filter(run=run).select_related("endpoint").order_by("created_at", "id"):
        start = call.created_at - timedelta(milliseconds=call.latency_ms)  # the row is made as the call ends
        under[by_attempt.get((call.node_id, call.attempt))].append(row(
            f"chat {call.model}", 2, start, call.created_at, call.outcome, call.outcome != "ok",
            (call.tokens_in or call.tokens_out) and f"tokens {call.tokens_in} in, {call.tokens_out} out",
            _usd(call.cost), call.cache and f"cache hit ({call.cache})",
            call.endpoint and f"endpoint {call.endpoint.name}", _short(call.error)))
    for call in run.tool_calls.all():
        # A tool call's row is kept across attempts: it belongs to the last attempt of its node started before it
        # (or to the first, when the attempt that made it waited for a human and left no step). A call without an
        # effect is written with its step, so it shows as an instant at the step's end.
        tried = by_node.get(call.node_id, [])
        step = next((s for s in reversed(tried) if s.started_at <= call.created_at), tried[0] if tried else None)
        under[step].append(row(f"execute_tool {call.tool}", 2, call.created_at, call.updated_at, call.status,
                               call.status in ("failed", "rejected"), _short(call.error)))
    top = [(row(f"invoke_agent {s.agent}", 1, s.started_at, s.finished_at, s.status, s.status == "failed",
                f"node {s.node_id}", f"attempt {s.attempt}", _usd(s.cost), _short(s.error)), s) for s in steps]
    top += [(row(name, 1, start, end or now, status or "waiting", False, end is None and "still open"), None)
            for name, start, end, status in _waits(run)]
    top += [(call, None) for call in under.pop(None, [])]  # calls of an attempt that left no step
    rows = [row(f"invoke_workflow {run.workflow_version.workflow.slug}", 0, run.started_at or run.created_at,
                run.finished_at or now, run.status, run.status == "failed", _short(run.reason))]
    for parent, step in sorted(top, key=lambda pair: pair[0].start_ms):
        rows += [parent, *sorted(under.get(step, []), key=lambda r: r.start_ms)]
    return rows


def _waits(run: Run) -> list[tuple]:
    """(name, start, end or None, outcome) of each wait for a human: an approval from its request to its decision,
    the handover from its ticket's opening to its return."""
    waits = {}
    for event in run.events.filter(type__in=["approval.requested", "approval.decided", "handover.opened",
                                             "handover.returned"]).order_by("seq"):
        key = event.data.get("approval") or event.data.get("ticket")
        if event.type in ("approval.requested", "handover.opened"):
            name = f"approval {event.data.get('node', '')}" if event.type == "approval.requested" else "handover"
            waits[key] = (name, event.ts, None, "")
        elif key in waits:
            waits[key] = (*waits[key][:2], event.ts, event.data.get("decision") or "returned")
    return list(waits.values())


def _short(text: str) -> str:
    return Truncator(text).chars(160) if text else ""


def _usd(cost) -> str:
    return f"${cost.normalize():f}" if cost else ""


def _percent(part: int, total: int) -> str:
    return f"{100 * part / total:.2f}"


def _sql_result(result: dict):
    head = format_html_join("", "<th>{}</th>", ((c,) for c in result["columns"]))
    body = format_html_join("", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((v,) for v in row)),)
                                               for row in result["rows"][:50]))
    more = f"{result['row_count']} rows" + (", more not fetched" if result["truncated"] else "")
    chart = charts.svg(result["chart"], result["columns"], result["rows"]) if result.get("chart") else ""
    return format_html('<p><code>{}</code> ({}, {} ms)</p><table><tr>{}</tr>{}</table>{}', result["sql"], more,
                       result["ms"], head, body, chart)


def _marked(text: str, quotes: list[str]):
    """The text, each cited quote in it marked (escaped as any text)."""
    spans = sorted((text.find(q), text.find(q) + len(q)) for q in quotes if q and q in text)
    parts, at = [], 0
    for start, end in spans:
        if start >= at:
            parts.append(format_html("{}<mark>{}</mark>", text[at:start], text[start:end]))
            at = end
    parts.append(format_html("{}", text[at:]))
    return format_html_join("", "{}", ((p,) for p in parts))
