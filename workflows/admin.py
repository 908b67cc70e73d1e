from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from accounts.admin import TenantScopedAdmin
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
    readonly_fields = [f.name for f in Run._meta.fields] + ["results"]
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
