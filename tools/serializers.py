from rest_framework import serializers

from hil_project.api import StrictCharField

from .models import McpServer, RedactionSettings, Secret, Tool, ToolGrant, ToolLimit, ToolPolicy
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
        governed_save(obj=obj, actor=self.context["request"].user)
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
