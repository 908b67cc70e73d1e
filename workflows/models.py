import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from core.rollout import Stage

from . import spec as workflow_spec


class Workflow(models.Model):
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="workflows")
    slug = models.SlugField()
    name = models.CharField(max_length=200)
    live_version = models.ForeignKey(
        "WorkflowVersion", null=True, blank=True, on_delete=models.RESTRICT, related_name="+"
    )
    stage = models.CharField(max_length=8, choices=Stage.choices, default=Stage.AUTO,
                             help_text="Its rollout stage; tool policies can match on it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "slug"], name="workflow_slug_unique")]

    def __str__(self):
        return self.slug


class WorkflowVersion(models.Model):
    """An immutable, numbered spec. Runs are pinned to the version they started on."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    spec_yaml = models.TextField()
    spec = models.JSONField(null=True, blank=True, editable=False, help_text="The parsed spec; empty when invalid.")
    errors = models.JSONField(default=list, blank=True, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow", "number"], name="version_number_unique")]
        ordering = ["workflow", "-number"]

    def __str__(self):
        return f"{self.workflow.slug} v{self.number}"

    def is_valid(self) -> bool:
        return self.spec is not None and not self.errors

    def entry(self) -> str:
        return self.spec["entry"]


class Conversation(models.Model):
    class Status(models.TextChoices):
        AI = "ai", "AI owns it"
        AWAITING_HUMAN = "awaiting_human", "handed over, waiting for a human"
        HUMAN = "human", "a human owns it"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey(Workflow, on_delete=models.RESTRICT, related_name="conversations")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.AI)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        AI = "ai"
        HUMAN = "human"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=8, choices=Role.choices)
    text = models.TextField()
    turn_id = models.CharField(max_length=100, null=True, blank=True)
    # For a user message, the run it started; for an AI reply, the run that wrote it.
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "turn_id"], condition=Q(turn_id__isnull=False), name="message_turn_unique"
            ),
            models.UniqueConstraint(fields=["run"], condition=Q(role="ai"), name="message_one_reply_per_run"),
        ]


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        HELD = "held", "held behind the conversation's previous turn"
        RUNNING = "running"
        WAITING = "waiting", "waiting for a human"
        DONE = "done"
        FAILED = "failed", "failed, even on its failure path"
        CANCELLED = "cancelled"

    ACTIVE = (Status.QUEUED, Status.HELD, Status.RUNNING, Status.WAITING)

    class Sink(models.TextChoices):
        FINISH = workflow_spec.FINISH
        HANDOVER = workflow_spec.HANDOVER

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="runs")
    workflow_version = models.ForeignKey(WorkflowVersion, on_delete=models.RESTRICT, related_name="runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    sink = models.CharField(max_length=8, choices=Sink.choices, blank=True)
    reason = models.TextField(blank=True, help_text="Why the run handed over, failed or was cancelled.")
    current_node = models.CharField(max_length=64, help_text="The next node to run, or the sink reached.")
    attempt = models.PositiveIntegerField(default=1, help_text="Attempt number of the current node.")
    claims = models.PositiveIntegerField(default=0, help_text="Workers that took the run on since it last made progress.")
    state = models.JSONField(default=dict, blank=True)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    revenue = models.DecimalField(max_digits=16, decimal_places=6, null=True, blank=True, help_text=(
        "What the run earned, USD, where its workflow's spec says it records it (`kpis: {revenue: ...}`)."))
    last_seq = models.PositiveIntegerField(default=0, help_text="Sequence number of the last event.")
    lease_owner = models.CharField(max_length=32, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    wake_at = models.DateTimeField(null=True, blank=True, help_text="When a queued run becomes due.")
    resend_at = models.DateTimeField(null=True, blank=True, help_text="When the sweeper may send its task again.")
    resends = models.PositiveIntegerField(default=0, help_text="Tasks the sweeper sent since the run was last queued.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    trace_parent = models.CharField(max_length=55, blank=True, help_text=(
        "The W3C traceparent the turn's trace continues from: every task that runs a step of it joins that trace."))

    class Meta:
        # The sweeper only looks at active runs, few at any time. Indexing nothing a step changes
        # (lease_expires_at, state) keeps each step's update of the run a cheap HOT update.
        indexes = [models.Index(fields=["status"], condition=Q(status__in=["queued", "running"]), name="run_active_idx"),
                   models.Index(fields=["finished_at"], name="run_finished_idx")]  # analytics reads runs as they end

    def __str__(self):
        return str(self.id)


class Step(models.Model):
    """One attempt of one node. Committed with its output before the next node starts."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    node_id = models.CharField(max_length=64)
    agent = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    idempotency_key = models.CharField(max_length=140)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["run", "node_id", "attempt"], name="step_attempt_unique")]

    def __str__(self):
        return f"{self.node_id} (attempt {self.attempt})"

    def duration_ms(self) -> int:
        return round((self.finished_at - self.started_at).total_seconds() * 1000)


class RunEvent(models.Model):
    ENVELOPE_VERSION = 1

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=40)
    data = models.JSONField(default=dict)
    ts = models.DateTimeField()
    trace_id = models.CharField(max_length=32, blank=True, help_text="The OpenTelemetry trace the event was made in.")

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="event_seq_unique")]

    def __str__(self):
        return f"#{self.seq} {self.type}"

    def envelope(self) -> dict:
        return {
            "v": self.ENVELOPE_VERSION,
            "seq": self.seq,
            "type": self.type,
            "run": str(self.run_id),
            "ts": self.ts.isoformat(),
            "trace_id": self.trace_id,
            "data": self.data,
        }
