from rest_framework import serializers

from hil_project.api import StrictCharField

from .models import Conversation, Message, Run, Step


class ConversationCreateSerializer(serializers.Serializer):
    workflow = serializers.SlugField(help_text="Slug of the workflow to run on each message.")


class ConversationSerializer(serializers.ModelSerializer):
    workflow = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "workflow", "status", "created_at"]


class MessageCreateSerializer(serializers.Serializer):
    text = StrictCharField(max_length=20_000, trim_whitespace=False)
    turn_id = StrictCharField(max_length=100, help_text="Your id for this turn; a retry with the same id is safe.")

    def validate_text(self, value):
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value


class MessageSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = Message
        fields = ["id", "conversation", "role", "text", "turn_id", "run", "author", "created_at"]


class RunBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Run
        fields = ["id", "status", "sink", "current_node", "created_at"]


class MessagePostedSerializer(serializers.Serializer):
    message = MessageSerializer()
    run = RunBriefSerializer(allow_null=True)


class StepSerializer(serializers.ModelSerializer):
    duration_ms = serializers.IntegerField()

    class Meta:
        model = Step
        fields = ["node_id", "agent", "attempt", "status", "output", "error", "cost", "idempotency_key",
                  "started_at", "finished_at", "duration_ms"]


class RunSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="workflow_version.workflow.slug")
    version = serializers.IntegerField(source="workflow_version.number")
    steps = StepSerializer(many=True)

    class Meta:
        model = Run
        fields = ["id", "conversation", "workflow", "version", "status", "sink", "reason", "current_node", "cost",
                  "state", "last_seq", "created_at", "started_at", "finished_at", "steps"]


class RunEventSerializer(serializers.Serializer):
    """The event envelope, version 1."""

    v = serializers.IntegerField()
    seq = serializers.IntegerField()
    type = serializers.CharField()
    run = serializers.UUIDField()
    ts = serializers.DateTimeField()
    trace_id = serializers.CharField(allow_blank=True, help_text="The OpenTelemetry trace the event was made in "
                                                                 "(32 hex digits; empty for events made before).")
    data = serializers.JSONField()


class RunCancelSerializer(serializers.Serializer):
    reason = StrictCharField(required=False, allow_blank=True, default="", max_length=2000,
                             help_text="Why; kept on the run and in the audit log.")


class EventsQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, default=0, help_text="Return events with seq greater than this.")
