from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework.views import APIView

from accounts.auth import GovernancePermission

from .metrics import exposition


class MetricsApi(APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description=(
        "Prometheus text format: runs by outcome, costs, model and tool calls per workflow and version, run "
        "latency p50/p95, SLO alerts firing."))})
    def get(self, request):
        """The caller's tenant's metrics for Prometheus (scrape with an operator's or admin's token as a Bearer
        token)."""
        return HttpResponse(exposition(request.auth.tenant_id), content_type=CONTENT_TYPE_LATEST)
