import json

from django.db import connection
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import OperatorPermission
from hil_project.api import TenantScopedMixin

from . import doorbells, services
from .events import events_after
from .models import Conversation, Run
from .serializers import (
    ConversationCreateSerializer,
    ConversationSerializer,
    EventsQuerySerializer,
    MessageCreateSerializer,
    MessagePostedSerializer,
    MessageSerializer,
    RunCancelSerializer,
    RunEventSerializer,
    RunSerializer,
)

AFTER = OpenApiParameter("after", int, description="Only events with a greater seq.")


class ConversationListApi(TenantScopedMixin, generics.ListAPIView):
    serializer_class = ConversationSerializer

    def get_queryset(self):
        return self.tenant_queryset(Conversation.objects.select_related("workflow")).order_by("-created_at")

    @extend_schema(request=ConversationCreateSerializer, responses={201: ConversationSerializer})
    def post(self, request):
        body = ConversationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        conversation = services.conversation_start(tenant=request.auth.tenant, workflow_slug=body.validated_data["workflow"])
        return Response(ConversationSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailApi(TenantScopedMixin, generics.RetrieveAPIView):
    serializer_class = ConversationSerializer

    def get_queryset(self):
        return self.tenant_queryset(Conversation.objects.select_related("workflow"))


class MessageListApi(TenantScopedMixin, generics.ListAPIView):
    """The conversation's history: user messages, AI replies and human replies, oldest first."""

    serializer_class = MessageSerializer

    def conversation(self):
        return get_object_or_404(self.tenant_queryset(Conversation.objects), pk=self.kwargs["pk"])

    def get_queryset(self):
        return self.conversation().messages.select_related("author").order_by("created_at", "id")

    @extend_schema(request=MessageCreateSerializer, responses={202: MessagePostedSerializer, 409: OpenApiResponse(
        description="turn_id was already used for a different text")})
    def post(self, request, pk):
        conversation = self.conversation()
        body = MessageCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        message, _ = services.message_post(conversation=conversation, **body.validated_data)
        data = MessagePostedSerializer({"message": message, "run": message.run}).data
        return Response(data, status=status.HTTP_202_ACCEPTED)


class RunDetailApi(TenantScopedMixin, generics.RetrieveAPIView):
    serializer_class = RunSerializer

    def get_queryset(self):
        return self.tenant_queryset(Run.objects.select_related("workflow_version__workflow").prefetch_related("steps"))


class RunActionApi(TenantScopedMixin, APIView):
    permission_classes = [OperatorPermission]

    def run(self, pk) -> Run:
        return get_object_or_404(self.tenant_queryset(Run.objects), pk=pk)

    def respond(self, run: Run) -> Response:
        run = Run.objects.select_related("workflow_version__workflow").prefetch_related("steps").get(pk=run.pk)
        return Response(RunSerializer(run).data)


class RunCancelApi(RunActionApi):
    @extend_schema(request=RunCancelSerializer, responses={200: RunSerializer, 409: OpenApiResponse(
        description="the run has already ended")})
    def post(self, request, pk):
        run = self.run(pk)
        body = RunCancelSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self.respond(services.run_cancel(run=run, actor=request.user, reason=body.validated_data["reason"]))


class RunRetryApi(RunActionApi):
    @extend_schema(request=None, responses={200: RunSerializer, 409: OpenApiResponse(
        description="the run is neither failed nor cancelled, or a human has its conversation")})
    def post(self, request, pk):
        return self.respond(services.run_retry(run=self.run(pk), actor=request.user))


class RunEventListApi(TenantScopedMixin, APIView):
    @extend_schema(parameters=[AFTER], responses={200: RunEventSerializer(many=True)})
    def get(self, request, pk):
        run = get_object_or_404(self.tenant_queryset(Run.objects), pk=pk)
        query = EventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(events_after(run, query.validated_data["after"]))


class RunEventStreamApi(TenantScopedMixin, APIView):
    """Server-sent events: the run's events after `after` (or the `Last-Event-ID` a browser sends when it
    reconnects), then each new one as it is committed. The stream ends after the run's last event, and
    while Redis is down (no doorbells would reach it), telling the client when to reconnect."""

    def perform_content_negotiation(self, request, force=False):
        # The stream is not rendered by DRF; errors are JSON, whatever the client accepts.
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(parameters=[AFTER], responses={
        (200, "text/event-stream"): OpenApiResponse(description="`id: <seq>` and `data: <envelope JSON>` per event")})
    def get(self, request, pk):
        run = get_object_or_404(self.tenant_queryset(Run.objects), pk=pk)
        query = EventsQuerySerializer(data={"after": request.headers.get("Last-Event-ID", request.query_params.get("after", 0))})
        query.is_valid(raise_exception=True)
        # The request's connection would stay open as long as the stream (Django closes it when the response
        # ends): close it now; the stream reads on the few connections of doorbells.db_read.
        connection.close()
        response = StreamingHttpResponse(event_stream(run, query.validated_data["after"]), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response


async def event_stream(run: Run, after: int, heartbeat_s: float = 15, retry_ms: int = 2000):
    yield f"retry: {retry_ms}\n\n"
    async with doorbells.listen(run.tenant_id, run.id) as bell:
        while True:
            for envelope in await doorbells.db_read(events_after, run, after):
                after = envelope["seq"]
                yield f"id: {after}\nevent: {envelope['type']}\ndata: {json.dumps(envelope)}\n\n"
            if await doorbells.db_read(_run_over, run.id, after):
                return
            quiet_s = 0.0
            while not await bell.wait(doorbells.REDIS_CHECK_S):
                if doorbells.redis_lost():
                    return  # the client comes back after retry_ms, from its Last-Event-ID
                quiet_s += doorbells.REDIS_CHECK_S
                if quiet_s >= heartbeat_s:  # and the database is read again, in case a doorbell was lost
                    yield ": keep-alive\n\n"
                    break


def _run_over(run_id, seen: int) -> bool:
    """True when the run is done and every event it will ever have was seen (a handover's later
    ticket events are read with `?after=`)."""
    return Run.objects.filter(id=run_id, status=Run.Status.DONE, last_seq__lte=seen).exists()
