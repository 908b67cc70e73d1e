from django.contrib import admin

from accounts.admin import TenantScopedAdmin

from .models import ApprovalRequest, HandoverTicket


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(TenantScopedAdmin):
    list_display = ["title", "run", "node_id", "status", "decided_by", "expires_at", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in ApprovalRequest._meta.fields]


@admin.register(HandoverTicket)
class HandoverTicketAdmin(TenantScopedAdmin):
    list_display = ["id", "conversation", "status", "assignee", "reason", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in HandoverTicket._meta.fields]
