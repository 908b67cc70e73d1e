from rest_framework import serializers

from hil_project.api import StrictCharField

from .models import Secret


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
