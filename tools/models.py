from pathlib import Path
from urllib.parse import urlsplit

import jmespath
import jsonschema
from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import GeneratedField
from pgvector.django import HnswIndex, VectorField

from core.embeddings import DIMENSIONS
from core.expressions import compile_expression
from core.rollout import Stage


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


class Risk(models.TextChoices):
    """What a tool can do, from least to most: the policies and the defaults key on it."""

    READ = "read", "read: changes nothing"
    WRITE = "write", "write: changes data, can be undone"
    DESTRUCTIVE = "destructive", "destructive: deletes or cannot be undone"
    EXTERNAL = "external", "external: reaches outside (sends, pays, runs code)"


APPROVER_ROLES = [("agent", "agent"), ("operator", "operator"), ("admin", "admin")]  # each may what the one before may
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*$"
name_validator = RegexValidator(NAME_PATTERN, "lower-case letters, digits, '_' and '-', in parts joined by '.'")


class Tool(models.Model):
    """A tenant's tool other than the built-ins (which declare their contract in code, tools/contracts.py):
    one of an MCP server's, turned into a tool when the server is synced, or an HTTP endpoint."""

    class Kind(models.TextChoices):
        MCP = "mcp", "MCP server"
        HTTP = "http", "HTTP endpoint"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100, validators=[name_validator],
                            help_text="How workflows and grants name it, e.g. crm.issue_refund.")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict, help_text="JSON Schema its arguments must meet.")
    output_schema = models.JSONField(null=True, blank=True,
                                     help_text="JSON Schema its result must meet (none: any object).")
    risk = models.CharField(max_length=12, choices=Risk.choices, default=Risk.WRITE)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0,
                                   help_text="What one call costs (USD), reserved against the step's, run's and "
                                             "month's budgets.")
    enabled = models.BooleanField(default=True)
    mcp_server = models.ForeignKey("McpServer", null=True, blank=True, on_delete=models.CASCADE, related_name="tools")
    remote_name = models.CharField(max_length=200, blank=True, help_text="Its name on its MCP server.")
    url = models.URLField(blank=True, help_text="HTTP: the arguments are POSTed here as JSON.")
    secret = models.SlugField(max_length=100, blank=True, help_text="HTTP: a secret sent as a Bearer token.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="tool_name_unique")]

    def __str__(self):
        return self.name

    def clean(self):
        if self.mcp_server_id and self.mcp_server.tenant_id != self.tenant_id:
            raise ValidationError({"mcp_server": "That MCP server belongs to another tenant."})
        if self.kind == self.Kind.HTTP and not self.url:
            raise ValidationError({"url": "An HTTP tool needs the URL its arguments are POSTed to."})
        for field in ("input_schema", "output_schema"):
            _check_schema(field, getattr(self, field))


def _check_schema(field: str, schema) -> None:
    if schema is None:
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ValidationError({field: f"Not a JSON Schema: {e.message}"}) from None
    if schema.get("type", "object") != "object":
        raise ValidationError({field: "A tool takes and gives JSON objects: the schema's type must be object."})


class McpServer(models.Model):
    """A tenant's MCP server: a command run over stdio, or a streamable HTTP URL."""

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio (a command)"
        HTTP = "http", "streamable HTTP (a URL)"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=50, help_text="Its tools are named <name>.<tool>.")
    transport = models.CharField(max_length=5, choices=Transport.choices)
    command = models.JSONField(default=list, blank=True,
                               help_text='stdio: the command, as a list: ["python", "-m", "srv"].')
    url = models.URLField(blank=True, help_text="http: the server's endpoint.")
    headers = models.JSONField(default=dict, blank=True,
                               help_text='Header name -> the name of the secret whose value is sent as it: '
                                         '{"Authorization": "crm-token"} (the secret holding "Bearer ...").')
    env = models.JSONField(default=dict, blank=True,
                           help_text="stdio: environment variable -> the name of the secret it is set to.")
    timeout_s = models.PositiveIntegerField(default=30)
    enabled = models.BooleanField(default=True)
    synced_at = models.DateTimeField(null=True, blank=True, editable=False)
    sync_error = models.TextField(blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="mcp_server_name_unique")]
        verbose_name = "MCP server"

    def __str__(self):
        return self.name

    def clean(self):
        command = self.command
        if self.transport == self.Transport.STDIO and not (
                isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)):
            raise ValidationError({"command": 'A stdio server needs its command, a list of strings: '
                                              '["python", "srv.py"].'})
        if self.transport == self.Transport.HTTP and not self.url:
            raise ValidationError({"url": "A streamable HTTP server needs its URL."})
        for field in ("headers", "env"):
            refs = getattr(self, field)
            if not isinstance(refs, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                     for k, v in refs.items()):
                raise ValidationError({field: "A mapping of names to secret names, all strings."})


class ToolGrant(models.Model):
    """A workflow node may call a tool: nothing is granted by default (a node's `tools:` in its spec grants too)."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey("workflows.Workflow", on_delete=models.CASCADE, related_name="+")
    node_id = models.CharField(max_length=64)
    tool = models.CharField(max_length=100, validators=[name_validator])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["workflow", "node_id", "tool"]
        constraints = [models.UniqueConstraint(fields=["workflow", "node_id", "tool"], name="tool_grant_unique")]

    def __str__(self):
        return f"{self.workflow}.{self.node_id} → {self.tool}"

    def clean(self):
        from .contracts import builtins

        if self.workflow_id and self.workflow.tenant_id != self.tenant_id:
            raise ValidationError({"workflow": "That workflow belongs to another tenant."})
        spec = self.workflow.live_version.spec if self.workflow_id and self.workflow.live_version_id else None
        if spec is not None and self.node_id not in {n["id"] for n in spec["nodes"]}:
            raise ValidationError({"node_id": f"The live version of {self.workflow} has no node '{self.node_id}'."})
        if self.tool not in builtins() and not Tool.objects.filter(tenant_id=self.tenant_id, name=self.tool).exists():
            raise ValidationError({"tool": f"There is no tool {self.tool} (built-in, or the tenant's)."})


class ToolPolicy(models.Model):
    """A rule on tool calls, checked in code before each call. Of the enabled policies that match a call,
    the strictest applies: deny, then the most approvers, then the highest role. A call no policy matches
    needs an operator's approval if its tool is destructive, and nothing otherwise."""

    class Require(models.TextChoices):
        NOTHING = "nothing"
        APPROVAL = "approval"
        DENY = "deny"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    tool = models.CharField(max_length=100, blank=True,
                            help_text="The tool's name, or a pattern such as crm.* (empty: any tool).")
    risk = models.CharField(max_length=12, choices=Risk.choices, blank=True, help_text="Empty: any risk.")
    workflow = models.ForeignKey("workflows.Workflow", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="+", help_text="Empty: any workflow.")
    stage = models.CharField(max_length=8, choices=Stage.choices, blank=True,
                             help_text="The workflow's rollout stage (empty: any).")
    condition = models.CharField(max_length=500, blank=True,
                                 help_text="A JMESPath expression over the arguments, e.g. amount > `100` "
                                           "(empty: always).")
    require = models.CharField(max_length=8, choices=Require.choices, default=Require.APPROVAL)
    approver_role = models.CharField(max_length=16, choices=APPROVER_ROLES, default="agent",
                                     help_text="The lowest role that may approve.")
    quorum = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(10)],
                                              help_text="How many distinct people must approve.")
    timeout_s = models.PositiveIntegerField(null=True, blank=True,
                                            help_text="How long the approval waits (empty: the tenant's default).")
    on_expiry = models.CharField(max_length=8, default="reject", choices=[
        ("reject", "reject the call"), ("HANDOVER", "hand the conversation over to a human")])
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "tool policies"
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="tool_policy_name_unique")]

    def __str__(self):
        return self.name

    def clean(self):
        if self.workflow_id and self.workflow.tenant_id != self.tenant_id:
            raise ValidationError({"workflow": "That workflow belongs to another tenant."})
        if self.condition:
            try:
                compile_expression(self.condition)
            except jmespath.exceptions.JMESPathError as e:
                raise ValidationError({"condition": f"Not a JMESPath expression: {e}"}) from None


class ToolLimit(models.Model):
    """How often a tenant's workflows may call a tool, counted across every worker (Redis)."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    tool = models.CharField(max_length=100, validators=[name_validator])
    calls = models.PositiveIntegerField(null=True, blank=True, help_text="At most this many calls per window.")
    window_s = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1)])
    per_day = models.PositiveIntegerField(null=True, blank=True, help_text="Quota per day (UTC).")
    per_month = models.PositiveIntegerField(null=True, blank=True, help_text="Quota per calendar month (UTC).")

    class Meta:
        ordering = ["tool"]
        constraints = [models.UniqueConstraint(fields=["tenant", "tool"], name="tool_limit_unique")]

    def __str__(self):
        return self.tool


class RedactionSettings(models.Model):
    """Which kinds of personal data are replaced by tokens (<EMAIL_1>) before a model, an event or a log sees
    them. A tenant without a row redacts them all."""

    tenant = models.OneToOneField("accounts.Tenant", on_delete=models.CASCADE, primary_key=True, related_name="+")
    email = models.BooleanField(default=True)
    phone = models.BooleanField(default=True)
    card = models.BooleanField(default=True, help_text="Payment card numbers (Luhn-checked).")
    iban = models.BooleanField(default=True)
    national_id = models.BooleanField(default=True, help_text="National identity numbers.")

    class Meta:
        verbose_name_plural = "redaction settings"

    def entities(self) -> tuple[str, ...]:
        return tuple(name for name in ("email", "phone", "card", "iban", "national_id") if getattr(self, name))


class PiiVault(models.Model):
    """The values behind one run's PII tokens, encrypted as a secret is: to fill a reply in for the customer."""

    run = models.OneToOneField("workflows.Run", on_delete=models.CASCADE, primary_key=True, related_name="+")
    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    ciphertext = models.BinaryField()
    updated_at = models.DateTimeField(auto_now=True)


# --- data sources (the SQL agent) and knowledge sources (RAG) -------------------------------


class DataSource(models.Model):
    """A tenant's database that the SQL agent reads, and writes only through an approval (tools/sql.py guards
    every statement in code and in the database)."""

    class Engine(models.TextChoices):
        DUCKDB = "duckdb", "DuckDB file"
        SQLITE = "sqlite", "SQLite file"
        POSTGRES = "postgres", "PostgreSQL"

    class Tag(models.TextChoices):
        PII = "pii", "personal data: redacted before a model sees it"
        HIDDEN = "hidden", "hidden: never in a prompt or a result"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=100, db_index=False, help_text="Letters, digits, '-' and '_'; unique in the "
                                                                      "tenant. Workflows name the source by it.")
    engine = models.CharField(max_length=8, choices=Engine.choices)
    location = models.CharField(max_length=1000, help_text="The file's path (DuckDB, SQLite), or a PostgreSQL URL "
                                                           "without its password: postgresql://reader@host:5432/db")
    password_secret = models.SlugField(max_length=100, blank=True,
                                       help_text="The name of the secret holding the PostgreSQL password.")
    description = models.TextField(blank=True, help_text="What the data is, for the model.")
    row_cap = models.PositiveIntegerField(default=200, validators=[MinValueValidator(1), MaxValueValidator(10_000)],
                                          help_text="At most this many rows come back from a query.")
    timeout_ms = models.PositiveIntegerField(default=5_000,
                                             validators=[MinValueValidator(100), MaxValueValidator(120_000)])
    schema = models.JSONField(default=dict, blank=True, editable=False,
                              help_text="What introspection found: tables, columns, keys, examples, row counts.")
    schema_at = models.DateTimeField(null=True, blank=True, editable=False)
    column_tags = models.JSONField(default=dict, blank=True,
                                   help_text='{"Table.column": "pii" or "hidden"}')
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="data_source_name_unique")]

    def __str__(self):
        return self.name

    def clean(self):
        tags = self.column_tags
        if not isinstance(tags, dict) or not all(
                isinstance(k, str) and k.count(".") >= 1 and v in self.Tag.values for k, v in tags.items()):
            raise ValidationError({"column_tags": 'A mapping of "Table.column" to "pii" or "hidden".'})
        if self.engine == self.Engine.POSTGRES:
            self._clean_url()
        elif self.tenant_id and not self.file_path().is_relative_to(self.folder().resolve()):
            raise ValidationError({"location": f"A file in the tenant's data folder, {self.folder()}."})

    def folder(self) -> Path:
        """Where the tenant's data files are: one tenant cannot name another's, nor any other file."""
        return Path(settings.HIL_DATA_DIR) / self.tenant.slug

    def file_path(self) -> Path:
        """The file of a DuckDB or SQLite source: its location, relative to the tenant's folder unless absolute."""
        return (self.folder() / self.location).resolve()

    def _clean_url(self):
        url = urlsplit(self.location)
        if url.scheme not in ("postgres", "postgresql") or not url.hostname or not url.username:
            raise ValidationError({"location": "A PostgreSQL URL with a user and a host: "
                                               "postgresql://reader@db.example.com:5432/shop"})
        if url.password is not None:
            raise ValidationError({"location": "Keep the password out of the URL: put it in a secret and name the "
                                               "secret in 'password secret'."})
        own = settings.DATABASES["default"]
        own_host, local = own.get("HOST") or "localhost", {"localhost", "127.0.0.1", "::1"}
        own_local = own_host in local or own_host.startswith(("/", "%2F"))  # a socket is on this machine
        same_host = url.hostname == own_host or url.hostname in local and own_local
        if same_host and str(url.port or 5432) == str(own.get("PORT") or 5432) \
                and not settings.HIL_DATA_SOURCES_ON_OWN_SERVER:
            raise ValidationError({"location": "That is the server HIL keeps its own data on: a data source must be "
                                               "another server."})


class SqlExample(models.Model):
    """A question and the SQL that answered it, that a human approved or marked good: the SQL agent's few-shot
    examples, found by the question's meaning."""

    class Origin(models.TextChoices):
        APPROVED = "approved", "a human approved it"
        MARKED_GOOD = "marked_good", "a human marked the answer good"
        CURATED = "curated", "written by an operator"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    source = models.ForeignKey(DataSource, on_delete=models.CASCADE, related_name="examples")
    question = models.TextField()
    sql = models.TextField()
    origin = models.CharField(max_length=12, choices=Origin.choices)
    embedding = VectorField(dimensions=DIMENSIONS, editable=False)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [HnswIndex(fields=["embedding"], name="sql_example_embedding", m=16, ef_construction=64,
                             opclasses=["vector_cosine_ops"])]

    def __str__(self):
        return self.question[:80]


class KnowledgeSource(models.Model):
    """A tenant's collection of documents that the RAG agent searches and cites."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    name = models.SlugField(max_length=100, db_index=False, help_text="Unique in the tenant; workflows name it.")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="knowledge_source_name_unique")]

    def __str__(self):
        return self.name


class Document(models.Model):
    """An uploaded document. Ingestion (a Celery task) extracts its text, splits it into chunks under their
    headings and embeds them; chunks' character offsets refer to `text`."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        INGESTING = "ingesting"
        READY = "ready"
        FAILED = "failed"

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    source = models.ForeignKey(KnowledgeSource, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    media_type = models.CharField(max_length=100, help_text="text/plain, text/markdown, text/html or application/pdf")
    data = models.BinaryField(editable=False, help_text="The file as uploaded.")
    sha256 = models.CharField(max_length=64, editable=False)
    text = models.TextField(blank=True, editable=False, help_text="The text extracted from the file.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["source", "title"]
        # The same file uploaded twice to a source is one document.
        constraints = [models.UniqueConstraint(fields=["source", "sha256"], name="document_once_per_source")]

    def __str__(self):
        return self.title

    @property
    def progress(self) -> int:
        """Percent done."""
        if self.status == self.Status.READY:
            return 100
        return int(100 * self.chunks_done / self.chunks_total) if self.chunks_total else 0


class Chunk(models.Model):
    """A passage of a document: its text, the headings above it, its span in the document's text, its
    embedding, and its full-text vector (Postgres computes it)."""

    tenant = models.ForeignKey("accounts.Tenant", on_delete=models.CASCADE, related_name="+")
    source = models.ForeignKey(KnowledgeSource, on_delete=models.CASCADE, related_name="+")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    heading = models.CharField(max_length=1000, blank=True, help_text="The headings above it, joined by ' > '.")
    text = models.TextField()
    start = models.PositiveIntegerField(help_text="Where it starts in the document's text (characters).")
    end = models.PositiveIntegerField()
    embedding = VectorField(dimensions=DIMENSIONS)
    search = GeneratedField(expression=SearchVector("heading", "text", config="english"),
                            output_field=SearchVectorField(), db_persist=True)

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_once")]
        indexes = [HnswIndex(fields=["embedding"], name="chunk_embedding", m=16, ef_construction=64,
                             opclasses=["vector_cosine_ops"]),
                   GinIndex(fields=["search"], name="chunk_search"),
                   models.Index(fields=["tenant", "source"], name="chunk_scope")]

    def __str__(self):
        return f"{self.document_id}#{self.ordinal}"
