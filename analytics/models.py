from django.conf import settings
from django.db import models
from django.db.models import Q

COST = {"max_digits": 16, "decimal_places": 6}


class Period(models.TextChoices):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


class Rollup(models.Model):
    """What one workflow version did in one bucket of time (UTC), so that charts and SLOs never read raw runs.

    Runs count in the bucket of their `finished_at`, with their steps and tool calls (final once the run
    ended); model calls in the bucket of their `created_at`; tool refusals in that of their audit row;
    satisfaction ratings in that of their `created_at`, under the workflow version of the run they rate.
    Minute rows are computed from those rows, hour rows from minute rows, day rows from hour rows
    (analytics/rollups.py). Histograms and per-node maps are JSON objects summed key by key when rows
    are merged: `latency_hist` maps a slot of `rollups.LATENCY_BOUNDS_MS` to its number of runs."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False)
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, related_name="+", db_index=False)
    workflow_version = models.ForeignKey("workflows.WorkflowVersion", on_delete=models.CASCADE, related_name="+",
                                         db_index=False)
    period = models.CharField(max_length=6, choices=Period.choices)
    bucket = models.DateTimeField(help_text="Start of the bucket, UTC.")
    runs = models.PositiveIntegerField(default=0, help_text="Runs that ended in the bucket, whatever the outcome.")
    finished = models.PositiveIntegerField(default=0, help_text="Resolved by the AI (sink FINISH).")
    handover = models.PositiveIntegerField(default=0, help_text="Handed over to a human (sink HANDOVER).")
    failed = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**COST, default=0, help_text="USD the runs cost.")
    latency_hist = models.JSONField(default=dict, help_text="Run durations (created to finished) of runs not "
                                                              "cancelled, by slot of LATENCY_BOUNDS_MS.")
    llm_calls = models.PositiveIntegerField(default=0)
    llm_failures = models.PositiveIntegerField(default=0, help_text="Model calls whose outcome was not ok.")
    llm_tokens_in = models.BigIntegerField(default=0)
    llm_tokens_out = models.BigIntegerField(default=0)
    llm_cost = models.DecimalField(**COST, default=0)
    llm_cache_hits = models.PositiveIntegerField(default=0)
    llm_saved_cost = models.DecimalField(**COST, default=0)
    tool_calls = models.PositiveIntegerField(default=0, help_text="Tool calls made or waiting for a human.")
    tool_failures = models.PositiveIntegerField(default=0)
    tool_refusals = models.PositiveIntegerField(default=0, help_text="Tool calls refused, by code or by a human.")
    revenue = models.DecimalField(**COST, default=0, help_text="USD the runs recorded as revenue (spec `kpis:`).")
    csat_responses = models.PositiveIntegerField(default=0, help_text="Satisfaction ratings received.")
    csat_score_sum = models.PositiveIntegerField(default=0, help_text="Their scores (1-5) added up.")
    csat_satisfied = models.PositiveIntegerField(default=0, help_text="Ratings of 4 or 5.")
    node_steps = models.JSONField(default=dict, help_text="Steps (attempts) per node.")
    node_failures = models.JSONField(default=dict, help_text="Failed steps per node.")
    node_ms = models.JSONField(default=dict, help_text="Total step duration per node, ms.")
    failure_reasons = models.JSONField(default=dict, help_text="Failed steps per 'node: error', the most frequent.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["period", "bucket", "workflow_version"], name="rollup_key")]
        indexes = [models.Index(fields=["tenant", "period", "bucket"], name="rollup_tenant_time"),
                   models.Index(fields=["workflow", "period", "bucket"], name="rollup_workflow_time")]

    def __str__(self):
        return f"{self.workflow_version_id} {self.period} {self.bucket:%Y-%m-%d %H:%M}"


class Watermark(models.Model):
    """How far the rollup got: every minute bucket before `until` was computed once at least, so that a
    worker that was down catches up on every minute since."""

    name = models.CharField(max_length=40, primary_key=True)
    until = models.DateTimeField()

    def __str__(self):
        return f"{self.name} until {self.until:%Y-%m-%d %H:%M}"


class Slo(models.Model):
    """A service level objective of a workflow (all its versions). Those of a live version's spec (`slos:`)
    are kept in step with it (`source` spec); operators add their own in the admin."""

    class Metric(models.TextChoices):
        SUCCESS_RATE = "success_rate", "success rate (at least)"
        HANDOVER_RATE = "handover_rate", "handover rate (at most)"
        P95_LATENCY_MS = "p95_latency_ms", "p95 latency, ms (at most)"
        COST_PER_REQUEST_USD = "cost_per_request_usd", "cost per request, USD (at most)"

    class Source(models.TextChoices):
        SPEC = "spec", "the workflow's live spec"
        ADMIN = "admin"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, related_name="+")
    metric = models.CharField(max_length=24, choices=Metric.choices)
    objective = models.FloatField(help_text="A share (0-1) for the rates, ms for latency, USD for cost.")
    source = models.CharField(max_length=5, choices=Source.choices, default=Source.ADMIN, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "SLO"
        constraints = [models.UniqueConstraint(fields=["workflow", "metric", "source"], name="slo_unique")]

    def __str__(self):
        return f"{self.workflow} {self.metric} {self.objective:g}"


class Alert(models.Model):
    """An SLO burning its error budget too fast. At most one firing alert per SLO and severity."""

    class Severity(models.TextChoices):
        PAGE = "page", "page (1h and 5m windows)"
        TICKET = "ticket", "ticket (6h and 30m windows)"

    class State(models.TextChoices):
        FIRING = "firing"
        RESOLVED = "resolved"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    slo = models.ForeignKey(Slo, on_delete=models.CASCADE, related_name="alerts")
    severity = models.CharField(max_length=6, choices=Severity.choices)
    state = models.CharField(max_length=8, choices=State.choices, default=State.FIRING)
    opened_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    burn_rates = models.JSONField(default=dict, help_text="The highest burn rate seen per window while firing.")
    acknowledged_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [models.UniqueConstraint(fields=["slo", "severity"], condition=Q(state="firing"),
                                               name="alert_one_firing")]

    def __str__(self):
        return f"{self.slo} {self.severity} {self.state}"


class WorkflowKpi(models.Model):
    """What a conversation of this workflow costs when a human handles it, to value those the AI resolves."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    workflow = models.OneToOneField("workflows.Workflow", on_delete=models.CASCADE, related_name="+")
    human_handling_minutes = models.FloatField(help_text="Minutes a human takes to handle one such request.")
    human_hourly_cost_usd = models.DecimalField(max_digits=10, decimal_places=2,
                                                help_text="What an hour of a human agent costs, USD.")

    class Meta:
        verbose_name = "workflow KPI setting"

    def __str__(self):
        return f"{self.workflow}: {self.human_handling_minutes:g} min"


class Satisfaction(models.Model):
    """A customer's rating of a conversation (CSAT, 1 to 5), posted by an integration; one per conversation.
    It rates the conversation's last run that had ended when it was posted."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    conversation = models.OneToOneField("workflows.Conversation", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey("workflows.Run", on_delete=models.CASCADE, related_name="+")
    score = models.PositiveSmallIntegerField()
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(score__gte=1, score__lte=5), name="satisfaction_score")]
        indexes = [models.Index(fields=["created_at"], name="satisfaction_time")]

    def __str__(self):
        return f"{self.conversation_id}: {self.score}"
