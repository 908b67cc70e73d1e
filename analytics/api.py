from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import renderers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import GovernancePermission
from hil_project.api import TenantScopedMixin
from workflows.models import Conversation, Workflow, WorkflowVersion

from . import dashboard, services
from .metrics import exposition
from .models import Satisfaction
from .serializers import AnalyticsQuerySerializer, SatisfactionSerializer


class MetricsApi(APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description=(
        "Prometheus text format: runs by outcome, costs, model and tool calls per workflow and version, run "
        "latency p50/p95, SLO alerts firing."))})
    def get(self, request):
        """The caller's tenant's metrics for Prometheus (scrape with an operator's or admin's token as a Bearer
        token)."""
        return HttpResponse(exposition(request.auth.tenant_id), content_type=CONTENT_TYPE_LATEST)


class CsvRenderer(renderers.BaseRenderer):
    """The dashboard's points as CSV, a row a bucket; an error as its messages, a row each."""

    media_type, format, charset = "text/csv", "csv", "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if "series" in data:
            return dashboard.as_csv(data)
        return "".join(f"{field}: {message}\n" for field, messages in data.items()
                       for message in (messages if isinstance(messages, list) else [messages]))


class AnalyticsApi(TenantScopedMixin, APIView):
    renderer_classes = [renderers.JSONRenderer, CsvRenderer]

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)  # an unknown format is a 400 below

    @extend_schema(parameters=[AnalyticsQuerySerializer], responses={
        200: OpenApiResponse(OpenApiTypes.OBJECT, description=(
            "range, period (minute, hour or day: the buckets), start, end; series: one point per bucket (runs by "
            "outcome, success and handover rates, p50/p95 latency in ms, cost and cost per run in USD, model and "
            "tool calls, revenue, satisfaction, minutes and cost saved); totals: the same over the range, with "
            "failure_reasons and slowest_nodes; tenants: cost per tenant; slos: each SLO's burn rate per bucket "
            "and its alerts firing.")),
        (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="format=csv: the series, a row a bucket.")})
    def get(self, request):
        """The tenant's analytics dashboard (of one workflow, or version, if given) over a time range, as JSON or
        as CSV. Read from the rollups, which lag live traffic by up to a minute."""
        query = AnalyticsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        workflow = version = None
        if "workflow" in query.validated_data:
            workflow = get_object_or_404(self.tenant_queryset(Workflow.objects), slug=query.validated_data["workflow"])
        if "version" in query.validated_data:
            version = get_object_or_404(WorkflowVersion.objects, workflow=workflow,
                                        number=query.validated_data["version"])
        data = dashboard.dashboard(dashboard.Filters(
            tenant_ids=(request.auth.tenant_id,), range=query.validated_data["range"],
            workflow_id=workflow and workflow.id, version_id=version and version.id))
        headers = {"Content-Disposition": f'attachment; filename="hil-analytics-{data["range"]}.csv"'} if (
            request.accepted_renderer.format == "csv") else None
        return Response(data, headers=headers)


class SatisfactionApi(TenantScopedMixin, APIView):
    @extend_schema(responses={200: SatisfactionSerializer})
    def get(self, request, pk):
        """The customer's rating of the conversation, if one was posted."""
        return Response(SatisfactionSerializer(get_object_or_404(self.tenant_queryset(Satisfaction.objects),
                                                                 conversation_id=pk)).data)

    @extend_schema(request=SatisfactionSerializer, responses={201: SatisfactionSerializer,
                                                              200: SatisfactionSerializer})
    def post(self, request, pk):
        """Post the customer's satisfaction (CSAT, 1-5) with the conversation, from a survey integration: it counts
        for the workflow version of its last finished turn. The same rating posted again answers 200 with the one
        recorded; a different one is refused (409)."""
        conversation = get_object_or_404(self.tenant_queryset(Conversation.objects), pk=pk)
        body = SatisfactionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        rating, created = services.satisfaction_record(conversation=conversation, **body.validated_data)
        return Response(SatisfactionSerializer(rating).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)
