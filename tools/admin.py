from django.contrib import admin

from .models import ToolCall


@admin.register(ToolCall)
class ToolCallAdmin(admin.ModelAdmin):
    list_display = ["tool", "run", "node_id", "idempotency_key", "created_at"]
    list_filter = ["tenant", "tool"]
    readonly_fields = [f.name for f in ToolCall._meta.fields]
