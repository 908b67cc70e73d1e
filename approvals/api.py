from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from hil_project.api import TenantScopedMixin
from workflows.models import Conversation
from workflows.serializers import MessageSerializer

from . import services
from .models import ApprovalRequest, CannedReply, HandoverTicket
from .serializers import (
    ApprovalSerializer,
    CannedReplySerializer,
    ClaimSerializer,
    DecisionSerializer,
    HandoverTicketSerializer,
    NoteSerializer,
    ReplySerializer,
    StatusQuerySerializer,
)


class StatusFilteredListApi(TenantScopedMixin, generics.ListAPIView):
    model = None

    def get_queryset(self):
        query = StatusQuerySerializer(data=self.request.query_params, choices=self.model.Status.values)
        query.is_valid(raise_exception=True)
        queryset = self.tenant_queryset(self.model.objects.all())
        if "status" in query.validated_data:
            queryset = queryset.filter(status=query.validated_data["status"])
        return queryset.order_by("created_at")


@extend_schema(parameters=[OpenApiParameter("status", str, enum=ApprovalRequest.Status.values)])
class ApprovalListApi(StatusFilteredListApi):
    model = ApprovalRequest
    serializer_class = ApprovalSerializer


class ApprovalDetailApi(TenantScopedMixin, generics.RetrieveAPIView):
    serializer_class = ApprovalSerializer

    def get_queryset(self):
        return self.tenant_queryset(ApprovalRequest.objects.all())


class ApprovalDecisionApi(TenantScopedMixin, APIView):
    @extend_schema(request=DecisionSerializer, responses={200: ApprovalSerializer})
    def post(self, request, pk):
        approval = get_object_or_404(self.tenant_queryset(ApprovalRequest.objects), pk=pk)
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        approval = services.approval_decide(approval=approval, actor=request.user, **body.validated_data)
        return Response(ApprovalSerializer(approval).data)


@extend_schema(parameters=[OpenApiParameter("status", str, enum=HandoverTicket.Status.values)])
class HandoverListApi(StatusFilteredListApi):
    model = HandoverTicket
    serializer_class = HandoverTicketSerializer


class HandoverDetailApi(TenantScopedMixin, generics.RetrieveAPIView):
    serializer_class = HandoverTicketSerializer

    def get_queryset(self):
        return self.tenant_queryset(HandoverTicket.objects.all())


class HandoverActionApi(TenantScopedMixin, APIView):
    def ticket(self, pk):
        return get_object_or_404(self.tenant_queryset(HandoverTicket.objects), pk=pk)


class HandoverClaimApi(HandoverActionApi):
    @extend_schema(request=ClaimSerializer, responses={200: HandoverTicketSerializer})
    def post(self, request, pk):
        ticket = self.ticket(pk)
        body = ClaimSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        ticket = services.ticket_claim(ticket=ticket, actor=request.user, lease=body.validated_data["lease"])
        return Response(HandoverTicketSerializer(ticket).data)


class HandoverReplyApi(HandoverActionApi):
    @extend_schema(request=ReplySerializer, responses={201: MessageSerializer})
    def post(self, request, pk):
        ticket = self.ticket(pk)
        body = ReplySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        message = services.ticket_reply(ticket=ticket, actor=request.user, text=body.validated_data["text"])
        return Response(MessageSerializer(message).data, status=status.HTTP_201_CREATED)


class HandoverReturnApi(HandoverActionApi):
    @extend_schema(request=None, responses={200: HandoverTicketSerializer})
    def post(self, request, pk):
        ticket = services.ticket_return_to_ai(ticket=self.ticket(pk), actor=request.user)
        return Response(HandoverTicketSerializer(ticket).data)


class ConversationTakeOverApi(TenantScopedMixin, APIView):
    """A human takes the conversation over, even from the AI in the middle of a turn."""

    @extend_schema(request=None, responses={200: HandoverTicketSerializer})
    def post(self, request, pk):
        conversation = get_object_or_404(self.tenant_queryset(Conversation.objects), pk=pk)
        return Response(HandoverTicketSerializer(services.conversation_take_over(
            conversation=conversation, actor=request.user)).data)


class HandoverNoteListApi(HandoverActionApi, generics.ListAPIView):
    """The ticket's private notes, for the team only: never sent to the customer."""

    serializer_class = NoteSerializer

    def get_queryset(self):
        return self.ticket(self.kwargs["pk"]).notes.select_related("author")

    @extend_schema(request=NoteSerializer, responses={201: NoteSerializer})
    def post(self, request, pk):
        ticket = self.ticket(pk)
        body = NoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        note = services.ticket_note_add(ticket=ticket, actor=request.user, text=body.validated_data["text"])
        return Response(NoteSerializer(note).data, status=status.HTTP_201_CREATED)


class CannedReplyListApi(TenantScopedMixin, generics.ListAPIView):
    """The tenant's canned replies (kept in the admin)."""

    serializer_class = CannedReplySerializer

    def get_queryset(self):
        return self.tenant_queryset(CannedReply.objects.all())
