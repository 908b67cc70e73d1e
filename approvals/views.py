"""The human agents' console: one page for the handover queue, the conversations and the approvals inbox.
It reads and acts through the API (as the signed-in member, CSRF-checked) and hears changes on its
WebSocket (approvals/consumers.py); this view only hands it the first state and the desk seq it reflects."""

from django.shortcuts import render

from accounts.models import Membership, Role
from accounts.views import member_required
from tools.mediation import RANK
from tools.models import KnowledgeSource
from workflows.models import Workflow

from . import services
from .models import ApprovalRequest, CannedReply, HandoverTicket


@member_required
def console(request):
    member = request.member
    seq = services.desk_seq(tenant_id=member.tenant_id)  # first: events after it are applied on top, idempotently
    tickets = HandoverTicket.objects.filter(tenant_id=member.tenant_id).exclude(
        status=HandoverTicket.Status.CLOSED).select_related("assignee", "conversation__workflow").order_by("created_at")
    approvals = ApprovalRequest.objects.filter(tenant_id=member.tenant_id, status=ApprovalRequest.Status.PENDING)
    governs = member.role in (Role.ADMIN, Role.OPERATOR)
    decides = [role for role, rank in RANK.items() if rank <= RANK.get(member.role, 0)]  # the roles it stands for
    return render(request, "console/console.html", {
        "member": member,
        "tenants": Membership.objects.filter(user=request.user).select_related("tenant").order_by("tenant__slug"),
        "boot": {
            "seq": seq, "me": request.user.get_username(), "may_act": member.role != Role.VIEWER,
            "tickets": [services.ticket_card(t) for t in tickets],
            "decides": decides,  # the inbox lists what the member may decide (a viewer sees it all, read-only)
            "approvals": [services.approval_card(a) for a in approvals
                          if member.role == Role.VIEWER or not a.approver_role or a.approver_role in decides],
            "canned": list(CannedReply.objects.filter(tenant_id=member.tenant_id).values("title", "text")),
            "workflows": [{"id": slug, "name": name} for slug, name in Workflow.objects.filter(
                tenant_id=member.tenant_id, live_version__isnull=False).order_by("slug").values_list("slug", "name")],
            # Operators and admins upload documents to the knowledge sources (the API lets only them).
            "sources": list(KnowledgeSource.objects.filter(tenant_id=member.tenant_id).order_by("name")
                            .values("id", "name", "description")) if governs else None,
        },
    })
