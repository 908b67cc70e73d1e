from django.contrib import admin

from accounts.admin import TenantScopedAdmin

from .models import ApprovalRequest, CannedReply, HandoverTicket, TicketNote


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(TenantScopedAdmin):
    list_display = ["title", "run", "node_id", "status", "decided_by", "expires_at", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in ApprovalRequest._meta.fields]


class TicketNoteInline(admin.TabularInline):
    model = TicketNote
    fields = readonly_fields = ["author", "text", "created_at"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj):
        return False


@admin.register(HandoverTicket)
class HandoverTicketAdmin(TenantScopedAdmin):
    list_display = ["id", "conversation", "status", "assignee", "reason", "created_at"]
    list_filter = ["tenant", "status"]
    readonly_fields = [f.name for f in HandoverTicket._meta.fields]
    inlines = [TicketNoteInline]


@admin.register(CannedReply)
class CannedReplyAdmin(TenantScopedAdmin):
    """Replies an agent inserts in the console with a keystroke."""

    list_display = ["title", "tenant", "text"]
    list_filter = ["tenant"]
    search_fields = ["title", "text"]
