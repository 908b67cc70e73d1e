from django import forms
from django.contrib import admin, messages
from django.db import models
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.views.decorators.debug import sensitive_post_parameters

from accounts.admin import TenantScopedAdmin

from core.errors import ServiceError

from .datasources import data_source_refresh, data_source_schema, sql_example_add
from .knowledge import document_upload, knowledge_source_create
from .models import (DataSource, Document, KnowledgeSource, McpServer, RedactionSettings, Secret, SqlExample, Tool,
                     ToolCall, ToolGrant, ToolLimit, ToolPolicy)
from .services import governed_delete, governed_save, mcp_server_sync, secret_delete, secret_set


@admin.register(ToolCall)
class ToolCallAdmin(TenantScopedAdmin):
    list_display = ["tool", "run", "node_id", "idempotency_key", "created_at"]
    list_filter = ["tenant", "tool"]
    readonly_fields = [f.name for f in ToolCall._meta.fields]


class SecretForm(forms.ModelForm):
    value = forms.CharField(
        widget=forms.PasswordInput(render_value=False), strip=False, required=False,
        help_text="Write-only: it is never shown again. To keep the current value, leave it empty.")

    class Meta:
        model = Secret
        fields = ["tenant", "name"]

    def clean_value(self):
        value = self.cleaned_data["value"]
        if not value and self.instance.pk is None:
            raise forms.ValidationError("A new secret needs a value.")
        if len(value.encode()) > Secret.MAX_VALUE_BYTES:
            raise forms.ValidationError(f"At most {Secret.MAX_VALUE_BYTES} bytes (UTF-8).")
        return value


@admin.register(Secret)
class SecretAdmin(TenantScopedAdmin):
    """Secrets are set here or with the API, and shown only as •••• and their last 4 characters. A secret is
    not renamed: its ciphertext is bound to its name (delete it and set it under the new one)."""

    form = SecretForm
    list_display = ["name", "tenant", "shown_value", "updated_at"]
    list_filter = ["tenant"]
    search_fields = ["name"]

    @admin.display(description="value")
    def shown_value(self, obj):
        return obj.masked

    def get_fields(self, request, obj=None):
        return ["tenant", "name", "shown_value", "updated_at", "value"] if obj else ["tenant", "name", "value"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "name", "shown_value", "updated_at"] if obj else []

    @method_decorator(sensitive_post_parameters("value"))
    def changeform_view(self, request, *args, **kwargs):
        return super().changeform_view(request, *args, **kwargs)

    def save_model(self, request, obj, form, change):
        if form.cleaned_data["value"]:
            obj.pk = secret_set(tenant=obj.tenant, name=obj.name, value=form.cleaned_data["value"],
                                actor=request.user).pk
            obj.refresh_from_db()

    def delete_model(self, request, obj):
        secret_delete(tenant=obj.tenant, name=obj.name, actor=request.user)

    def delete_queryset(self, request, queryset):
        for secret in queryset.select_related("tenant"):
            secret_delete(tenant=secret.tenant, name=secret.name, actor=request.user)


class GovernedAdmin(TenantScopedAdmin):
    """Changes go through tools.services.governed_save/delete: validated, audited, and read by every worker at once."""

    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def save_model(self, request, obj, form, change):
        governed_save(obj=obj, actor=request.user)  # the form ran the model's checks already

    def delete_model(self, request, obj):
        governed_delete(obj=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            governed_delete(obj=obj, actor=request.user)


class ToolInline(admin.TabularInline):
    model = Tool
    fields = ["name", "risk", "cost_usd", "enabled", "description"]
    readonly_fields = ["name", "risk", "cost_usd", "enabled", "description"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(McpServer)
class McpServerAdmin(GovernedAdmin):
    """An MCP server's tools are listed when it is saved (and with the action): each becomes a tool named
    <server>.<tool>, which no workflow may call until it is granted; set each one's risk on the tool."""

    list_display = ["name", "tenant", "transport", "enabled", "synced_at", "sync_error"]
    list_filter = ["tenant", "transport"]
    readonly_fields = ["synced_at", "sync_error"]
    inlines = [ToolInline]
    actions = ["sync"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self.sync(request, [obj])

    @admin.action(description="List the selected servers' tools again")
    def sync(self, request, queryset):
        for server in queryset:
            try:
                tools = mcp_server_sync(server=server, actor=request.user)
            except ServiceError as e:
                self.message_user(request, str(e), messages.ERROR)
            else:
                self.message_user(request, f"{server.name}: {len(tools)} tools: {', '.join(t.name for t in tools)}")


@admin.register(Tool)
class ToolAdmin(GovernedAdmin):
    list_display = ["name", "tenant", "kind", "risk", "cost_usd", "enabled"]
    list_filter = ["tenant", "kind", "risk", "enabled"]
    search_fields = ["name", "description"]

    def get_readonly_fields(self, request, obj=None):
        if obj and obj.kind == Tool.Kind.MCP:  # what the server says it takes and gives
            return ["kind", "mcp_server", "remote_name", "input_schema", "output_schema", "url", "secret"]
        return ["mcp_server", "remote_name"]


@admin.register(ToolGrant)
class ToolGrantAdmin(GovernedAdmin):
    list_display = ["workflow", "node_id", "tool", "tenant", "created_at"]
    list_filter = ["tenant", "workflow"]
    search_fields = ["tool", "node_id"]


@admin.register(ToolPolicy)
class ToolPolicyAdmin(GovernedAdmin):
    list_display = ["name", "tenant", "enabled", "tool", "risk", "workflow", "stage", "condition", "require",
                    "approver_role", "quorum"]
    list_filter = ["tenant", "enabled", "require", "risk"]
    search_fields = ["name", "tool", "condition"]
    fieldsets = [(None, {"fields": ["tenant", "name", "enabled"]}),
                 ("Which calls", {"fields": ["tool", "risk", "workflow", "stage", "condition"]}),
                 ("What they need", {"fields": ["require", "approver_role", "quorum", "timeout_s", "on_expiry"]})]


@admin.register(ToolLimit)
class ToolLimitAdmin(GovernedAdmin):
    list_display = ["tool", "tenant", "calls", "window_s", "per_day", "per_month"]
    list_filter = ["tenant"]


@admin.register(RedactionSettings)
class RedactionSettingsAdmin(GovernedAdmin):
    list_display = ["tenant", "email", "phone", "card", "iban", "national_id"]


class DataSourceForm(forms.ModelForm):
    class Meta:
        model = DataSource
        fields = ["tenant", "name", "engine", "location", "password_secret", "description", "row_cap", "timeout_ms",
                  "column_tags"]

    def _post_clean(self):
        super()._post_clean()
        if not self.errors:  # the connection is tried, and the schema read, before anything is saved
            try:
                self.instance.schema, self.instance.schema_at = data_source_schema(self.instance), timezone.now()
            except ServiceError as e:
                self.add_error(None, str(e))


@admin.register(DataSource)
class DataSourceAdmin(GovernedAdmin):
    """Saved once its connection works and its schema is read; the schema shows below, and the action reads it
    again. Tag columns in `column_tags`: hidden ones never reach a prompt or a result."""

    form = DataSourceForm
    list_display = ["name", "tenant", "engine", "location", "row_cap", "schema_at"]
    list_filter = ["tenant", "engine"]
    readonly_fields = ["schema_at", "tables"]
    actions = ["refresh"]

    @admin.display(description="schema")
    def tables(self, obj):
        return format_html_join("", "<p><b>{}</b> ({} rows): {}</p>", (
            (t["name"], t.get("row_count", "?"), ", ".join(
                f"{c['name']} {c['type']}" + (" (hidden)" if c.get("hidden") else "") for c in t["columns"]))
            for t in obj.schema.get("tables", [])))

    @admin.action(description="Read the selected sources' schemas again")
    def refresh(self, request, queryset):
        for source in queryset:
            try:
                data_source_refresh(source=source)
            except ServiceError as e:
                self.message_user(request, str(e), messages.ERROR)
            else:
                self.message_user(request, f"{source.name}: {len(source.schema['tables'])} tables")


class SqlExampleForm(forms.ModelForm):
    class Meta:
        model = SqlExample
        fields = ["tenant", "source", "question", "sql"]


@admin.register(SqlExample)
class SqlExampleAdmin(TenantScopedAdmin):
    """Questions with the SQL that answers them, that a person approved or wrote: the SQL agent's examples."""

    form = SqlExampleForm
    list_display = ["question", "source", "origin", "created_by", "created_at"]
    list_filter = ["tenant", "source", "origin"]
    search_fields = ["question", "sql"]

    def get_readonly_fields(self, request, obj=None):
        return ["tenant", "source", "question", "sql", "origin", "created_by"] if obj else []

    def save_model(self, request, obj, form, change):
        if not change:
            added = sql_example_add(source=obj.source, question=obj.question, sql_text=obj.sql,
                                    origin=SqlExample.Origin.CURATED, actor=request.user)
            obj.pk = added.pk


class DocumentInline(admin.TabularInline):
    model = Document
    fields = ["title", "media_type", "status", "progress_bar", "chunks_done", "chunks_total", "error"]
    readonly_fields = fields
    extra = 0
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="progress")
    def progress_bar(self, obj):
        return format_html('<progress max="100" value="{}"></progress> {}%', obj.progress, obj.progress)


class KnowledgeSourceForm(forms.ModelForm):
    upload = forms.FileField(required=False, help_text="Add a document (.txt, .md, .html, .pdf): it is ingested "
                                                       "in the background; its progress shows below.")

    class Meta:
        model = KnowledgeSource
        fields = ["tenant", "name", "description"]


@admin.register(KnowledgeSource)
class KnowledgeSourceAdmin(TenantScopedAdmin):
    form = KnowledgeSourceForm
    list_display = ["name", "tenant", "description", "created_at"]
    list_filter = ["tenant"]
    inlines = [DocumentInline]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.pk = knowledge_source_create(tenant=obj.tenant, name=obj.name, description=obj.description,
                                             actor=request.user).pk
        else:
            obj.save()
        if upload := form.cleaned_data.get("upload"):
            try:
                document, created = document_upload(source=obj, title=upload.name, media_type=upload.content_type,
                                                    data=upload.read(), actor=request.user)
            except ServiceError as e:
                self.message_user(request, str(e), messages.ERROR)
            else:
                self.message_user(request, f"{document.title}: {'queued' if created else 'already there'}")


@admin.register(Document)
class DocumentAdmin(TenantScopedAdmin):
    list_display = ["title", "source", "status", "progress", "chunks_done", "chunks_total", "error", "updated_at"]
    list_filter = ["tenant", "source", "status"]
    fields = ["tenant", "source", "title", "media_type", "sha256", "status", "chunks_done", "chunks_total", "error"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False
