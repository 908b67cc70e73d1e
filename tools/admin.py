from django.contrib import admin

from accounts.admin import TenantScopedAdmin

from .models import ToolCall


@admin.register(ToolCall)
class ToolCallAdmin(TenantScopedAdmin):
    list_display = ["tool", "run", "node_id", "idempotency_key", "created_at"]
    list_filter = ["tenant", "tool"]
    readonly_fields = [f.name for f in ToolCall._meta.fields]
