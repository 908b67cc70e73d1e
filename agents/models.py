"""Where a tenant's model calls go: OpenAI-compatible endpoints and the models they serve, with prices;
profiles, ordered lists of those models that agents name; each call made, with its cost; the
tenant's settings for them; and the answers the router keeps in its caches. Written by agents/services.py
and, for the caches, agents/cache.py."""

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from pgvector.django import HnswIndex, VectorField

from core.embeddings import DIMENSIONS

PRICE = {"max_digits": 12, "decimal_places": 6, "validators": [MinValueValidator(0)],
         "help_text": "USD per 1M tokens."}
COST = {"max_digits": 16, "decimal_places": 10}  # a call of 10 tokens at $0.05 per 1M costs $0.0000005


class ModelEndpoint(models.Model):
    """An OpenAI-compatible API (`base_url`, as the `openai` client takes it) and the secret holding its key.
    Only the secret's name is stored here: the key is read with `tools.services.secret_value` when used."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=100, db_index=False,
                            help_text="Letters, digits, '-' and '_'; unique in the tenant. Profiles refer to it.")
    base_url = models.CharField(max_length=500, help_text="An http(s) URL, e.g. https://api.openai.com/v1.")
    api_key_secret = models.SlugField(
        max_length=100, db_index=False, help_text="The name of the tenant's secret (Secrets) that holds the API key.")
    enabled = models.BooleanField(default=True, help_text="Saving an enabled endpoint first tests its connection.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="model_endpoint_name_unique")]

    def __str__(self):
        return self.name


class EndpointModel(models.Model):
    """A model that an endpoint serves, with what it costs and what it can do."""

    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.CASCADE, related_name="models")
    model = models.CharField(max_length=200, help_text="The provider's model id, e.g. gpt-4o-mini.")
    context_window = models.PositiveIntegerField(validators=[MinValueValidator(1)], help_text="In tokens.")
    input_price = models.DecimalField(**PRICE)
    output_price = models.DecimalField(**PRICE)
    cached_input_price = models.DecimalField(**{**PRICE, "help_text": "USD per 1M cached input tokens; "
                                                "empty when the provider has no cache price."}, null=True, blank=True)
    supports_json_schema = models.BooleanField(
        default=False, help_text="Whether `response_format: json_schema` may be sent to it.")

    class Meta:
        ordering = ["endpoint", "model"]
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "model"], name="endpoint_model_unique"),
            models.CheckConstraint(
                condition=models.Q(input_price__gte=0, output_price__gte=0, context_window__gte=1)
                & (models.Q(cached_input_price__isnull=True) | models.Q(cached_input_price__gte=0)),
                name="endpoint_model_prices_not_negative"),
        ]

    def __str__(self):
        return f"{self.endpoint.name}: {self.model}"


# Profile names every tenant has: one it has not defined (or with no enabled model) gets the offline model
# (agents/llm.py), as with no endpoint at all. A node may name another profile only once the tenant has it.
STANDARD_PROFILES = ("fast", "balanced", "powerful")


class ModelProfile(models.Model):
    """A name agents ask for ("fast", "balanced"): the tenant's models to try, in order."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=100, db_index=False,
                            help_text="Letters, digits, '-' and '_'; unique in the tenant.")
    endpoint_models = models.ManyToManyField(EndpointModel, through="ProfileEntry", related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="model_profile_name_unique")]

    def __str__(self):
        return self.name


class ProfileEntry(models.Model):
    """One model of a profile, at its place in the order (0 first). The model's endpoint belongs to the
    profile's tenant (checked by agents.services.profile_save); a model in a profile cannot be deleted."""

    profile = models.ForeignKey(ModelProfile, on_delete=models.CASCADE, related_name="entries")
    endpoint_model = models.ForeignKey(EndpointModel, on_delete=models.RESTRICT, related_name="profile_entries")
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ["profile", "position"]
        verbose_name_plural = "profile entries"
        constraints = [
            models.UniqueConstraint(fields=["profile", "position"], name="profile_entry_position_unique"),
            models.UniqueConstraint(fields=["profile", "endpoint_model"], name="profile_entry_model_unique"),
        ]

    def __str__(self):
        return f"{self.position}. {self.endpoint_model}"


class AgentSettings(models.Model):
    """A tenant's settings for its model calls; a tenant without a row has the defaults."""

    tenant = models.OneToOneField("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    store_prompts = models.BooleanField(
        default=False, help_text="Keep each model call's prompt and completion with its record (LLM calls).")
    monthly_budget_usd = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(0)],
        help_text="The most the tenant's model calls may cost in a calendar month (UTC); empty for no limit.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "agent settings"
        constraints = [models.CheckConstraint(condition=models.Q(monthly_budget_usd__gte=0)
                                              | models.Q(monthly_budget_usd__isnull=True),
                                              name="agent_settings_budget_not_negative")]

    def __str__(self):
        return f"agent settings of {self.tenant}"


class LLMCall(models.Model):
    """One attempt at a model call, whatever its outcome: what it cost, how long it took, and why it failed.
    `endpoint` is null for the offline model (and once the endpoint is deleted; `model` still says which)."""

    class Cache(models.TextChoices):
        NONE = "", "not cached"
        EXACT = "exact"
        SEMANTIC = "semantic"

    class Outcome(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        TIMEOUT = "timeout"
        RATE_LIMITED = "rate_limited", "rate limited"
        REFUSED_BUDGET = "refused_budget", "refused: over budget"
        BREAKER_OPEN = "breaker_open", "refused: circuit breaker open"
        INVALID_OUTPUT = "invalid_output", "invalid output"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False)
    run = models.ForeignKey("workflows.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
                            db_index=False,
                            help_text="Kept (as null) when the run is deleted: the cost was still spent.")
    node_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=200)
    profile = models.CharField(max_length=100, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_cached = models.PositiveIntegerField(default=0, help_text="Of tokens_in, those the provider had cached.")
    tokens_out = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(**COST, default=0, help_text="USD.")
    latency_ms = models.PositiveIntegerField(default=0)
    cache = models.CharField(max_length=8, choices=Cache.choices, blank=True, default=Cache.NONE,
                             help_text="Answered from our cache instead of the model, and how.")
    saved_cost = models.DecimalField(**COST, default=0, help_text="USD the cache saved.")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error = models.TextField(blank=True, help_text="What went wrong; never holds a secret.")
    prompt = models.JSONField(null=True, blank=True, help_text="Kept only when the tenant's settings say so.")
    completion = models.TextField(null=True, blank=True, help_text="Kept only when the tenant's settings say so.")
    created_at = models.DateTimeField(default=timezone.now, help_text="When the call was made.")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "LLM call"
        indexes = [models.Index(fields=["tenant", "created_at"], name="llm_call_tenant_time"),
                   models.Index(fields=["run"], name="llm_call_run")]

    def __str__(self):
        return f"{self.model} ({self.outcome})"


class CachedAnswer(models.Model):
    """A model's answer, kept to answer the same request again without calling a model (agents/cache.py).

    `scope` is the hash of what must match before anything else is compared: tenant, workflow version,
    system prompt, profile and output schema. An exact hit has the same `request_hash` (the scope and the
    whole request); a semantic hit has the same `context_hash` (the request but for its last user message)
    and a last user message whose `embedding` is close enough. Rows past `expires_at` are never served."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False)
    scope = models.CharField(max_length=64)
    request_hash = models.CharField(max_length=64)
    context_hash = models.CharField(max_length=64, help_text="The request without its last user message's text.")
    answer = models.TextField()
    data = models.JSONField(null=True, blank=True, help_text="The answer parsed, when a schema was asked for.")
    model = models.CharField(max_length=200)
    cost = models.DecimalField(**COST, help_text="USD the model call cost: what each hit saves.")
    embedding = VectorField(dimensions=DIMENSIONS, null=True, blank=True,
                            help_text="The last user message's, when the answer may be served semantically.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["tenant", "request_hash"], name="cached_answer_request_unique")]
        indexes = [
            # A small scope is searched exactly through this one; a big one through the HNSW index.
            models.Index(fields=["tenant", "scope", "context_hash"], name="cached_answer_scope"),
            HnswIndex(fields=["embedding"], name="cached_answer_embedding", m=16, ef_construction=64,
                      opclasses=["vector_cosine_ops"]),
            models.Index(fields=["expires_at"], name="cached_answer_expiry"),
        ]

    def __str__(self):
        return f"{self.model} answer ({self.request_hash[:12]})"
