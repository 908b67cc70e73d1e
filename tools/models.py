from django.db import models


class ToolCall(models.Model):
    """A side effect an agent caused, recorded under its idempotency key (run, node, attempt):
    a redelivered step finds it here and does not act twice."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey("workflows.Run", on_delete=models.CASCADE, related_name="tool_calls")
    node_id = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=140)
    tool = models.CharField(max_length=100)
    args = models.JSONField(default=dict)
    result = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "idempotency_key", "tool"], name="tool_call_once"),
        ]
