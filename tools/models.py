from django.db import models


class ToolCall(models.Model):
    """One call of a tool by a run's node. Its idempotency key, `<run>:<node>:<n>` for the node's
    n-th call, is the same in every attempt of the node: the row is written as pending before the
    effect and completed after it, so a later attempt replays a success instead of acting again."""

    class Status(models.TextChoices):
        AWAITING = "awaiting", "waiting for a human's decision"
        PENDING = "pending", "started; outcome unknown until completed"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        REJECTED = "rejected", "refused by a human"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey("workflows.Run", on_delete=models.CASCADE, related_name="tool_calls")
    node_id = models.CharField(max_length=64)
    seq = models.PositiveIntegerField(help_text="The call's number within its node.")
    idempotency_key = models.CharField(max_length=160)
    tool = models.CharField(max_length=100)
    args = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=Status.choices)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    decision = models.JSONField(null=True, blank=True, help_text="The human's decision, when the call needed one.")
    executions = models.PositiveIntegerField(default=0, help_text="How many times the effect was started.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["run", "node_id", "seq"], name="tool_call_once")]

    def __str__(self):
        return f"{self.tool} ({self.idempotency_key})"


class Secret(models.Model):
    """A tenant's secret (an API key, a password), referred to by name. Only its ciphertext is stored
    (tools/crypto.py); the value is read with `tools.services.secret_value` and never shown."""

    MAX_VALUE_BYTES = 64 * 1024

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=100, db_index=False,
                            help_text="Letters, digits, '-' and '_'; unique in the tenant.")
    ciphertext = models.BinaryField(help_text="The random nonce, then the AES-256-GCM ciphertext and tag.")
    last4 = models.CharField(max_length=4, blank=True, editable=False,
                             help_text="The value's last 4 characters, to recognise it; empty under 8 characters.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="secret_name_unique")]

    def __str__(self):
        return self.name

    @property
    def masked(self) -> str:
        return "••••" + self.last4
