from rest_framework import serializers

from hil_project.api import StrictCharField, StrictIntegerField

from .dashboard import DEFAULT_RANGE, RANGES
from .models import Satisfaction


class SatisfactionSerializer(serializers.ModelSerializer):
    score = StrictIntegerField(min_value=1, max_value=5, help_text="1 (very unhappy) to 5 (very happy).")
    comment = StrictCharField(max_length=2000, required=False, allow_blank=True, default="")

    class Meta:
        model = Satisfaction
        fields = ["conversation", "run", "score", "comment", "created_at"]
        read_only_fields = ["conversation", "run", "created_at"]


class AnalyticsQuerySerializer(serializers.Serializer):
    range = serializers.ChoiceField(choices=list(RANGES), default=DEFAULT_RANGE)
    workflow = serializers.SlugField(required=False, help_text="A workflow's slug; all of them if not given.")
    version = serializers.IntegerField(required=False, min_value=1, max_value=2**31 - 1,
                                       help_text="A version number of `workflow`.")
    format = serializers.ChoiceField(choices=["json", "csv"], required=False, help_text="csv: one row per bucket.")

    def validate(self, data):
        if "version" in data and "workflow" not in data:
            raise serializers.ValidationError({"version": "a version needs its workflow"})
        return data
