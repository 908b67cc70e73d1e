from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import GovernancePermission
from hil_project.api import TenantScopedMixin

from . import services
from .models import Secret
from .serializers import SecretNameSerializer, SecretSerializer, SecretValueSerializer


class SecretListApi(TenantScopedMixin, generics.ListAPIView):
    """The tenant's secrets: names and the last 4 characters of each value, never the values."""

    permission_classes = [GovernancePermission]
    serializer_class = SecretSerializer

    def get_queryset(self):
        return self.tenant_queryset(Secret.objects.all())


NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, pattern=r"^[-a-zA-Z0-9_]{1,100}$",
                        description="The secret's name: letters, digits, '-' and '_'.")


@extend_schema(parameters=[NAME])
class SecretDetailApi(APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(request=SecretValueSerializer, responses={200: SecretSerializer})
    def put(self, request, name):
        """Set the secret's value, creating the secret if there is none: write-only, the answer has no value."""
        name = self.valid_name(name)
        body = SecretValueSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        secret = services.secret_set(tenant=request.auth.tenant, name=name, value=body.validated_data["value"],
                                     actor=request.user)
        return Response(SecretSerializer(secret).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted.")})
    def delete(self, request, name):
        """Delete the secret; code that refers to it by name then finds none."""
        services.secret_delete(tenant=request.auth.tenant, name=self.valid_name(name), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @staticmethod
    def valid_name(name: str) -> str:
        path = SecretNameSerializer(data={"name": name})
        path.is_valid(raise_exception=True)
        return path.validated_data["name"]
