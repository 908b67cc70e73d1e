from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import GovernancePermission
from hil_project.api import TenantScopedMixin
from hil_project.parsers import StrictJSONParser

from core.errors import ServiceError

from . import datasources, knowledge, services
from .models import DataSource, Document, KnowledgeSource, McpServer, RedactionSettings, Secret
from .serializers import (DataSourceSerializer, DocumentSerializer, DocumentUploadSerializer,
                          KnowledgeSourceSerializer, McpServerSerializer, RedactionSettingsSerializer,
                          SecretNameSerializer, SecretSerializer, SecretValueSerializer, SqlExampleSerializer,
                          ToolGrantSerializer, ToolLimitSerializer, ToolPolicySerializer, ToolSerializer)


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


DataSourceListApi, DataSourceDetailApi = governed_apis(
    DataSourceSerializer, "The tenant's databases for the SQL agent (DuckDB or SQLite files in the tenant's data "
                          "folder, PostgreSQL servers): saved once the connection works and the schema is read.")


class DataSourceRefreshApi(TenantScopedMixin, APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(request=None, responses={200: DataSourceSerializer})
    def post(self, request, pk):
        """Read the source's schema again."""
        source = get_object_or_404(self.tenant_queryset(DataSource.objects.all()), pk=pk)
        source = datasources.data_source_refresh(source=source)
        return Response(DataSourceSerializer(source, context={"request": request}).data)


class SqlExampleListApi(Governed, generics.ListCreateAPIView):
    """Questions with the SQL that answers them, marked good by a person: the SQL agent's examples."""

    serializer_class = SqlExampleSerializer


class SqlExampleDetailApi(Governed, generics.RetrieveDestroyAPIView):
    serializer_class = SqlExampleSerializer


class KnowledgeSourceListApi(Governed, generics.ListCreateAPIView):
    """The tenant's knowledge sources: documents the RAG agent searches and cites."""

    serializer_class = KnowledgeSourceSerializer


class KnowledgeSourceDetailApi(Governed, generics.RetrieveDestroyAPIView):
    serializer_class = KnowledgeSourceSerializer


class DocumentListApi(TenantScopedMixin, APIView):
    permission_classes = [GovernancePermission]
    parser_classes = [StrictJSONParser, MultiPartParser]

    def source(self, pk) -> KnowledgeSource:
        return get_object_or_404(self.tenant_queryset(KnowledgeSource.objects.all()), pk=pk)

    @extend_schema(responses={200: DocumentSerializer(many=True)})
    def get(self, request, pk):
        """The source's documents, with their ingestion's progress."""
        documents = Document.objects.filter(source=self.source(pk)).defer("data", "text")
        return Response(DocumentSerializer(documents, many=True).data)

    @extend_schema(request={"multipart/form-data": DocumentUploadSerializer, "application/json":
                            DocumentUploadSerializer}, responses={201: DocumentSerializer, 200: DocumentSerializer})
    def post(self, request, pk):
        """Upload a document: ingested in the background (follow its progress on the document). The same bytes
        again answer 200 with the document they made."""
        source = self.source(pk)
        body = DocumentUploadSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        upload = body.validated_data.get("file")
        if upload is not None and upload.size > knowledge.MAX_BYTES:
            raise ServiceError(f"'{upload.name}' is over {knowledge.MAX_BYTES // 2**20} MB")
        document, created = knowledge.document_upload(
            source=source, title=body.validated_data.get("title") or upload.name,
            media_type=body.validated_data.get("media_type") or getattr(upload, "content_type", "") or "",
            data=upload.read() if upload is not None else body.validated_data["text"].encode(), actor=request.user)
        return Response(DocumentSerializer(document).data, status=201 if created else 200)


class DocumentDetailApi(Governed, generics.RetrieveDestroyAPIView):
    serializer_class = DocumentSerializer

    def get_queryset(self):
        return self.tenant_queryset(Document.objects.defer("data", "text"))
