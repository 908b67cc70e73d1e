from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import GovernancePermission
from hil_project.api import TenantScopedMixin

from . import services
from .models import McpServer, RedactionSettings, Secret
from .serializers import (McpServerSerializer, RedactionSettingsSerializer, SecretNameSerializer, SecretSerializer,
                          SecretValueSerializer, ToolGrantSerializer, ToolLimitSerializer, ToolPolicySerializer,
                          ToolSerializer)


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


class Governed(TenantScopedMixin):
    permission_classes = [GovernancePermission]

    def get_queryset(self):
        return self.tenant_queryset(self.serializer_class.Meta.model.objects.all())


class GovernedListApi(Governed, generics.ListCreateAPIView):
    pass


class GovernedDetailApi(Governed, generics.RetrieveUpdateDestroyAPIView):
    def perform_destroy(self, instance):
        services.governed_delete(obj=instance, actor=self.request.user)


def governed_apis(serializer, about: str) -> tuple[type, type]:
    """The list (and add) and the detail (read, change, delete) APIs of one kind of tool configuration."""
    listing = type(f"{serializer.Meta.model.__name__}ListApi", (GovernedListApi,),
                   {"serializer_class": serializer, "__doc__": about})
    detail = type(f"{serializer.Meta.model.__name__}DetailApi", (GovernedDetailApi,),
                  {"serializer_class": serializer, "__doc__": about})
    return listing, detail


ToolListApi, ToolDetailApi = governed_apis(ToolSerializer, "The tenant's tools besides the built-in ones: its HTTP "
                                                           "tools, and its MCP servers' (whose risk, cost and switch "
                                                           "an operator sets).")
McpServerListApi, McpServerDetailApi = governed_apis(McpServerSerializer, "The tenant's MCP servers.")
ToolGrantListApi, ToolGrantDetailApi = governed_apis(ToolGrantSerializer, "Which workflow node may call which tool "
                                                                          "(nothing by default).")
ToolPolicyListApi, ToolPolicyDetailApi = governed_apis(ToolPolicySerializer, "Rules on tool calls: the strictest "
                                                                             "that matches a call applies.")
ToolLimitListApi, ToolLimitDetailApi = governed_apis(ToolLimitSerializer, "Rate limits and quotas per tool.")


class McpServerSyncApi(TenantScopedMixin, APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(request=None, responses={200: ToolSerializer(many=True)})
    def post(self, request, pk):
        """List the server's tools again: each becomes (or stays) a tool named <server>.<tool>."""
        server = get_object_or_404(self.tenant_queryset(McpServer.objects.all()), pk=pk)
        tools = services.mcp_server_sync(server=server, actor=request.user)
        return Response(ToolSerializer(tools, many=True, context={"request": request}).data)


class RedactionSettingsApi(APIView):
    """Which kinds of personal data become tokens before a model, an event or a log sees them (all, by default)."""

    permission_classes = [GovernancePermission]

    def settings_of(self, request) -> RedactionSettings:
        return (RedactionSettings.objects.filter(tenant_id=request.auth.tenant_id).first()
                or RedactionSettings(tenant_id=request.auth.tenant_id))

    @extend_schema(responses={200: RedactionSettingsSerializer})
    def get(self, request):
        return Response(RedactionSettingsSerializer(self.settings_of(request)).data)

    @extend_schema(request=RedactionSettingsSerializer, responses={200: RedactionSettingsSerializer})
    def put(self, request):
        body = RedactionSettingsSerializer(self.settings_of(request), data=request.data, context={"request": request})
        body.is_valid(raise_exception=True)
        return Response(RedactionSettingsSerializer(body.save()).data)
