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
    quorum = models.PositiveSmallIntegerField(default=1, help_text="How many distinct people must approve.")
    approver_role = models.CharField(max_length=16, blank=True,
                                     help_text="The lowest role that may decide (empty: any member who may act).")
    policy = models.CharField(max_length=100, blank=True, help_text="The tool policy that asked for it.")
    args_hash = models.CharField(max_length=64, blank=True,
                                 help_text="SHA-256 of the tool and arguments it approves: it runs those or nothing.")
    preview = models.JSONField(null=True, blank=True,
                               help_text="What the call would do (a dry run), when the tool says.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["run", "node_id", "call_key"], name="approval_once_per_request")]
        indexes = [models.Index(fields=["status", "expires_at"], name="approval_expiry_idx")]

    def __str__(self):
        return f"{self.title} ({self.status})"


class ApprovalVote(models.Model):
    """One person's approval of a request that needs several (a quorum): each person counts once."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    approval = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="votes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [models.UniqueConstraint(fields=["approval", "user"], name="approval_vote_once")]


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
    lease_expires_at = models.DateTimeField(
        null=True, blank=True,
        help_text="A console's claim: back to the queue after this unless the console renews it.")
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"], condition=~Q(status="closed"), name="one_live_ticket_per_conversation"
            )
        ]


class DeskEvent(models.Model):
    """A change of what the console's queue and inbox show (a ticket opened, claimed, released, closed; an
    approval requested, decided), numbered per tenant without gaps in commit order, as a run's events are:
    a console that reconnects asks for what came after the last one it saw."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveBigIntegerField()
    type = models.CharField(max_length=40)
    data = models.JSONField(default=dict)
    ts = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "seq"], name="desk_event_seq_unique")]

    def envelope(self) -> dict:
        return {"seq": self.seq, "type": self.type, "ts": self.ts.isoformat(), "data": self.data}


class DeskSeq(models.Model):
    """A tenant's last desk event number. Taking the next one locks this row until commit, so that events
    commit in number order: a reader never sees 7 before 6 has committed."""

    tenant = models.OneToOneField("accounts.Tenant", on_delete=models.CASCADE, primary_key=True, related_name="+")
    last_seq = models.PositiveBigIntegerField(default=0)


class CannedReply(models.Model):
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    title = models.CharField(max_length=100)
    text = models.TextField()

    class Meta:
        ordering = ["title"]
        verbose_name_plural = "canned replies"
        constraints = [models.UniqueConstraint(fields=["tenant", "title"], name="canned_reply_title_unique")]

    def __str__(self):
        return self.title


class TicketNote(models.Model):
    """A private note on a handover ticket: for the team, never sent to the customer."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    ticket = models.ForeignKey(HandoverTicket, on_delete=models.CASCADE, related_name="notes")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
