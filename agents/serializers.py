from rest_framework import serializers

from hil_project.api import StrictCharField

from .models import EndpointModel, LLMCall, ModelEndpoint, ModelProfile, ProfileEntry
from .services import MAX_ENTRIES, MAX_MODELS


class EndpointModelSerializer(serializers.ModelSerializer):
    """A model an endpoint serves; prices in USD per 1M tokens, as decimal strings."""

    model = StrictCharField(max_length=200, help_text="The provider's model id, e.g. gpt-4o-mini.")

    class Meta:
        model = EndpointModel
        fields = ["model", "context_window", "input_price", "output_price", "cached_input_price",
                  "supports_json_schema"]


class ModelEndpointSerializer(serializers.ModelSerializer):
    """An endpoint as the API shows it: the name of the secret holding its key, never a key."""

    models = EndpointModelSerializer(many=True, read_only=True)

    class Meta:
        model = ModelEndpoint
        fields = ["name", "base_url", "api_key_secret", "enabled", "models", "created_at", "updated_at"]


class ModelEndpointBodySerializer(serializers.Serializer):
    base_url = StrictCharField(max_length=500, help_text="An http(s) URL, e.g. https://api.openai.com/v1.")
    api_key_secret = serializers.SlugField(
        max_length=100, help_text="The name of the tenant's secret (PUT /api/v1/secrets/{name}/) holding the API key.")
    enabled = serializers.BooleanField(
        default=True, help_text="An enabled endpoint is saved only once a request to it with the key succeeded.")
    models = EndpointModelSerializer(many=True, allow_empty=False, max_length=MAX_MODELS)


class ModelEndpointCreateSerializer(ModelEndpointBodySerializer):
    name = serializers.SlugField(max_length=100, help_text="Letters, digits, '-' and '_'; unique in the tenant.")


class ProfileEntrySerializer(serializers.ModelSerializer):
    endpoint = serializers.CharField(source="endpoint_model.endpoint.name")
    model = serializers.CharField(source="endpoint_model.model")

    class Meta:
        model = ProfileEntry
        fields = ["endpoint", "model"]


class ModelProfileSerializer(serializers.ModelSerializer):
    """A profile: its models, in the order they are tried."""

    entries = ProfileEntrySerializer(many=True, read_only=True)

    class Meta:
        model = ModelProfile
        fields = ["name", "entries", "created_at", "updated_at"]


class ProfileEntryInputSerializer(serializers.Serializer):
    endpoint = serializers.SlugField(max_length=100, help_text="The name of one of the tenant's model endpoints.")
    model = StrictCharField(max_length=200, help_text="One of that endpoint's models.")


class ModelProfileBodySerializer(serializers.Serializer):
    entries = ProfileEntryInputSerializer(many=True, allow_empty=False, max_length=MAX_ENTRIES,
                                          help_text="The models to try, first to last.")


class ModelProfileCreateSerializer(ModelProfileBodySerializer):
    name = serializers.SlugField(max_length=100, help_text="Letters, digits, '-' and '_'; unique in the tenant.")


class LLMCallSerializer(serializers.ModelSerializer):
    endpoint = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True,
                                            help_text="Null for the offline model, or once the endpoint is deleted.")

    class Meta:
        model = LLMCall
        fields = ["id", "run", "node_id", "attempt", "endpoint", "model", "profile", "tokens_in", "tokens_cached",
                  "tokens_out", "cost", "latency_ms", "cache", "saved_cost", "outcome", "error", "prompt",
                  "completion", "created_at"]


class LLMCallQuerySerializer(serializers.Serializer):
    run = serializers.UUIDField(required=False)
