from django.contrib import admin

from .models import ApprovalRequest, HandoverTicket


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(admin.ModelAdmin):
    list_display = ["title", "run", "node_id", "status", "decided_by", "expires_at", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in ApprovalRequest._meta.fields]


@admin.register(HandoverTicket)
class HandoverTicketAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "status", "assignee", "reason", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in HandoverTicket._meta.fields]
