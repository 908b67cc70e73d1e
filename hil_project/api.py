"""API plumbing shared by the apps: the error format and service errors as HTTP answers."""

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import Conflict, Forbidden, NotFound, ServiceError


def exception_handler(exc, context):
    """Every error is JSON with a `detail` saying what is wrong; a service's refusal is a 400, a
    request that lost a race or came too late a 409, one naming what does not exist a 404, one the caller's
    role does not allow a 403."""
    if isinstance(exc, ServiceError):
        status = next((code for kind, code in ((Conflict, 409), (NotFound, 404), (Forbidden, 403))
                       if isinstance(exc, kind)), 400)
        return Response({"detail": str(exc)}, status=status)
    return drf_exception_handler(exc, context)


class TenantScopedMixin:
    """Querysets limited to the caller's tenant: another tenant's ids answer 404."""

    def tenant_queryset(self, queryset):
        return queryset.filter(tenant_id=self.request.auth.tenant_id)


class Pagination(LimitOffsetPagination):
    max_limit = 500
    max_offset = 2**31

    def get_offset(self, request):
        return min(super().get_offset(request), self.max_offset)


class StrictCharField(serializers.CharField):
    """A CharField that takes only strings: 5 is not the text "5"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An IntegerField that takes only integers: "5" and 5.0 are not 5."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)
