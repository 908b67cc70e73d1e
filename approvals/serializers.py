from rest_framework import serializers

from hil_project.api import StrictCharField

from .models import ApprovalRequest, CannedReply, HandoverTicket, TicketNote


class ApprovalSerializer(serializers.ModelSerializer):
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = ApprovalRequest
        fields = ["id", "run", "node_id", "title", "payload", "payload_schema", "preview", "approver_role", "quorum",
                  "status", "decided_payload", "comment", "decided_by", "decided_at", "expires_at", "created_at"]


class DecisionSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["approve", "reject", "edit"])
    payload = serializers.DictField(required=False, help_text="The edited payload; only with decision 'edit'.")
    comment = StrictCharField(required=False, allow_blank=True, default="", max_length=5000)


class StatusQuerySerializer(serializers.Serializer):
    def __init__(self, *args, choices, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["status"] = serializers.ChoiceField(choices=choices, required=False)


class HandoverTicketSerializer(serializers.ModelSerializer):
    assignee = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)

    class Meta:
        model = HandoverTicket
        fields = ["id", "conversation", "run", "status", "reason", "case_file", "assignee", "created_at",
                  "claimed_at", "lease_expires_at", "closed_at"]


class ReplySerializer(serializers.Serializer):
    text = StrictCharField(max_length=20_000)


class ClaimSerializer(serializers.Serializer):
    lease = serializers.BooleanField(required=False, default=False, help_text=(
        "Hold the ticket only while a console renews the claim: it goes back to the queue when the console closes."))


class NoteSerializer(serializers.ModelSerializer):
    author = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    text = StrictCharField(max_length=20_000)

    class Meta:
        model = TicketNote
        fields = ["id", "author", "text", "created_at"]
        read_only_fields = ["id", "author", "created_at"]


class CannedReplySerializer(serializers.ModelSerializer):
    class Meta:
        model = CannedReply
        fields = ["id", "title", "text"]
