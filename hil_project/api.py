"""API plumbing shared by the apps: the error format and service errors as HTTP answers."""

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from workflows.services import ServiceError


def exception_handler(exc, context):
    """Every error is JSON with a `detail` saying what is wrong."""
    if isinstance(exc, ServiceError):
        return Response({"detail": str(exc)}, status=exc.status)
    return drf_exception_handler(exc, context)


class TenantScopedMixin:
    """Querysets limited to the caller's tenant: another tenant's ids answer 404."""

    def tenant_queryset(self, queryset):
        return queryset.filter(tenant_id=self.request.auth.tenant_id)
