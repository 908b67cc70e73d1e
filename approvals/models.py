import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class ApprovalRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        EDITED = "edited", "approved with edits"
        EXPIRED = "expired"
        WITHDRAWN = "withdrawn", "withdrawn: the run was cancelled"

    class OnExpiry(models.TextChoices):
        REJECT = "reject", "decide 'reject'"
        HANDOVER = "HANDOVER", "hand the conversation over to a human"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey("workflows.Run", on_delete=models.CASCADE, related_name="approvals")
    node_id = models.CharField(max_length=64)
    call_key = models.CharField(max_length=160, blank=True,
                                help_text="For a tool call that waits inside a node: the call's idempotency key.")
    title = models.CharField(max_length=200)
    payload = models.JSONField(default=dict, blank=True)
    payload_schema = models.JSONField(null=True, blank=True, help_text="JSON Schema an edited payload must meet.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_payload = models.JSONField(null=True, blank=True)
    comment = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    on_expiry = models.CharField(max_length=8, choices=OnExpiry.choices, default=OnExpiry.REJECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["run", "node_id", "call_key"], name="approval_once_per_request")]
        indexes = [models.Index(fields=["status", "expires_at"], name="approval_expiry_idx")]

    def __str__(self):
        return f"{self.title} ({self.status})"


class HandoverTicket(models.Model):
    class Status(models.TextChoices):
        OPEN = "open"
        CLAIMED = "claimed"
        CLOSED = "closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey("workflows.Conversation", on_delete=models.CASCADE, related_name="handovers")
    run = models.ForeignKey("workflows.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    reason = models.TextField()
    case_file = models.JSONField(default=dict, blank=True)
    assignee = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"], condition=~Q(status="closed"), name="one_live_ticket_per_conversation"
            )
        ]
