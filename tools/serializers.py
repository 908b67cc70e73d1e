from rest_framework import serializers

from hil_project.api import StrictCharField

from . import knowledge
from .datasources import data_source_save, sql_example_add
from .knowledge import knowledge_source_create
from .models import (DataSource, Document, KnowledgeSource, McpServer, RedactionSettings, Secret, SqlExample, Tool,
                     ToolGrant, ToolLimit, ToolPolicy)
from .services import governed_save


class SecretSerializer(serializers.ModelSerializer):
    """A secret as the API shows it: never its value."""

    class Meta:
        model = Secret
        fields = ["name", "last4", "updated_at"]


class SecretNameSerializer(serializers.Serializer):
    name = serializers.SlugField(max_length=100)


class SecretValueSerializer(serializers.Serializer):
    value = StrictCharField(write_only=True, trim_whitespace=False, max_length=Secret.MAX_VALUE_BYTES,
                            help_text=f"The secret, at most {Secret.MAX_VALUE_BYTES} bytes in UTF-8; write-only.")


class GovernedSerializer(serializers.ModelSerializer):
    """A tenant's tool configuration: the tenant comes from the caller, related rows can only be the tenant's, and
    every change goes through tools.services.governed_save (validated, audited)."""

    def get_fields(self):
        fields = super().get_fields()
        tenant_id = getattr(getattr(self.context.get("request"), "auth", None), "tenant_id", None)
        for field in fields.values():
            if tenant_id and isinstance(field, serializers.PrimaryKeyRelatedField) and field.queryset is not None:
                field.queryset = field.queryset.filter(tenant_id=tenant_id)
        return fields

    def create(self, validated_data):
        return self.save_governed(self.Meta.model(tenant_id=self.context["request"].auth.tenant_id), validated_data)

    def update(self, instance, validated_data):
        return self.save_governed(instance, validated_data)

    def save_governed(self, obj, validated_data):
        for name, value in validated_data.items():
            setattr(obj, name, value)
        return self.persist(obj, actor=self.context["request"].user)

    def persist(self, obj, actor):
        governed_save(obj=obj, actor=actor)
        return obj


class ToolSerializer(GovernedSerializer):
    class Meta:
        model = Tool
        fields = ["id", "name", "kind", "description", "input_schema", "output_schema", "risk", "cost_usd", "enabled",
                  "mcp_server", "remote_name", "url", "secret", "updated_at"]
        read_only_fields = ["mcp_server", "remote_name"]

    def validate(self, attrs):
        kind = attrs.get("kind", self.instance.kind if self.instance else None)
        if self.instance is None and kind == Tool.Kind.MCP:
            raise serializers.ValidationError("An MCP server's tools come from the server: add the server instead.")
        if self.instance is not None and self.instance.kind == Tool.Kind.MCP:
            fixed = {"name", "kind", "input_schema", "output_schema", "url", "secret"} & set(attrs)
            if fixed:
                raise serializers.ValidationError(f"The server says what its tool is: {', '.join(sorted(fixed))} "
                                                  "cannot be changed (its risk, cost, description and switch can).")
        return attrs


class McpServerSerializer(GovernedSerializer):
    class Meta:
        model = McpServer
        fields = ["id", "name", "transport", "command", "url", "headers", "env", "timeout_s", "enabled", "synced_at",
                  "sync_error"]


class ToolGrantSerializer(GovernedSerializer):
    class Meta:
        model = ToolGrant
        fields = ["id", "workflow", "node_id", "tool", "created_at"]


class ToolPolicySerializer(GovernedSerializer):
    class Meta:
        model = ToolPolicy
        fields = ["id", "name", "enabled", "tool", "risk", "workflow", "stage", "condition", "require",
                  "approver_role", "quorum", "timeout_s", "on_expiry", "updated_at"]


class ToolLimitSerializer(GovernedSerializer):
    class Meta:
        model = ToolLimit
        fields = ["id", "tool", "calls", "window_s", "per_day", "per_month"]


class RedactionSettingsSerializer(GovernedSerializer):
    class Meta:
        model = RedactionSettings
        fields = ["email", "phone", "card", "iban", "national_id"]


class DataSourceSerializer(GovernedSerializer):
    """A data source is saved once its connection works and its schema is read (tools.datasources)."""

    class Meta:
        model = DataSource
        fields = ["id", "name", "engine", "location", "password_secret", "description", "row_cap", "timeout_ms",
                  "column_tags", "schema", "schema_at", "updated_at"]
        read_only_fields = ["schema", "schema_at"]

    def persist(self, obj, actor):
        return data_source_save(source=obj, actor=actor)

    def to_representation(self, instance):
        shown = super().to_representation(instance)
        for table in (shown.get("schema") or {}).get("tables", []):
            table.pop("embedding", None)  # for choosing tables, not for reading
        return shown


class SqlExampleSerializer(GovernedSerializer):
    class Meta:
        model = SqlExample
        fields = ["id", "source", "question", "sql", "origin", "created_by", "created_at"]
        read_only_fields = ["origin", "created_by"]

    def create(self, validated_data):
        return sql_example_add(source=validated_data["source"], question=validated_data["question"],
                               sql_text=validated_data["sql"], origin=SqlExample.Origin.MARKED_GOOD,
                               actor=self.context["request"].user)


class KnowledgeSourceSerializer(serializers.ModelSerializer):
    class Meta:
        model = KnowledgeSource
        fields = ["id", "name", "description", "created_at"]

    def create(self, validated_data):
        request = self.context["request"]
        return knowledge_source_create(tenant=request.auth.tenant, actor=request.user, **validated_data)


class DocumentSerializer(serializers.ModelSerializer):
    """A document and how far its ingestion is: status, percent done, chunks done of the total, its error."""

    class Meta:
        model = Document
        fields = ["id", "source", "title", "media_type", "sha256", "status", "progress", "chunks_done",
                  "chunks_total", "error", "created_at", "updated_at"]
        read_only_fields = fields

    progress = serializers.IntegerField(read_only=True, help_text="Percent done.")


class DocumentUploadSerializer(serializers.Serializer):
    """A file (multipart), or text in JSON; the same bytes uploaded twice are one document."""

    file = serializers.FileField(required=False, help_text=".txt, .md, .html or .pdf, at most 20 MB.")
    text = StrictCharField(required=False, trim_whitespace=False, max_length=20 * 2**20)
    title = StrictCharField(required=False, max_length=300, help_text="Default: the file's name.")
    media_type = serializers.ChoiceField(required=False, choices=sorted(knowledge.MEDIA_TYPES),
                                         help_text="Default: from the file's type or name.")

    def validate(self, attrs):
        if ("file" in attrs) == ("text" in attrs):
            raise serializers.ValidationError("Send either a file or a text.")
        if "text" in attrs and not attrs.get("title"):
            raise serializers.ValidationError({"title": "A text needs a title."})
        return attrs
