from django.contrib import admin

from .models import ApprovalRequest, AuditEntry, HandoverTicket


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin):
    list_display = ["title", "run", "node_id", "status", "decided_by", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in ApprovalRequest._meta.fields]


@admin.register(HandoverTicket)
class HandoverTicketAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "status", "assignee", "reason", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in HandoverTicket._meta.fields]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id"]
    list_filter = ["tenant", "action"]
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
