from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.auth import GovernancePermission
from hil_project.api import TenantScopedMixin

from . import services
from .models import LLMCall, ModelEndpoint, ModelProfile
from .serializers import (
    LLMCallQuerySerializer,
    LLMCallSerializer,
    ModelEndpointBodySerializer,
    ModelEndpointCreateSerializer,
    ModelEndpointSerializer,
    ModelProfileBodySerializer,
    ModelProfileCreateSerializer,
    ModelProfileSerializer,
)


NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, pattern=r"^[-a-zA-Z0-9_]{1,100}$",
                        description="The name: letters, digits, '-' and '_'.")
CHECK_FAILED = OpenApiResponse(description="Bad input, or the endpoint did not answer a test request with its key: "
                                           "`detail` says why (connection refused, 401, timed out, ...).")


def _endpoints(request):
    return ModelEndpoint.objects.filter(tenant_id=request.auth.tenant_id).prefetch_related("models")


def _profiles(request):
    return ModelProfile.objects.filter(tenant_id=request.auth.tenant_id).prefetch_related(
        "entries__endpoint_model__endpoint")


def _entries(validated: dict) -> list[tuple[str, str]]:
    return [(entry["endpoint"], entry["model"]) for entry in validated["entries"]]


class EndpointListApi(generics.ListAPIView):
    """The tenant's OpenAI-compatible model endpoints, with the models each serves and their prices."""

    permission_classes = [GovernancePermission]
    serializer_class = ModelEndpointSerializer

    def get_queryset(self):
        return _endpoints(self.request)

    @extend_schema(request=ModelEndpointCreateSerializer, responses={201: ModelEndpointSerializer, 400: CHECK_FAILED})
    def post(self, request):
        """Add an endpoint. An enabled one is first tested with a real request (its model list, or a 1-token
        completion), with the key read from the named secret; it is saved only if that succeeds."""
        body = ModelEndpointCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if _endpoints(request).filter(name=body.validated_data["name"]).exists():
            raise ValidationError({"name": [f"a model endpoint named '{body.validated_data['name']}' already exists; "
                                            f"PUT changes it"]})
        endpoint = services.endpoint_save(tenant=request.auth.tenant, actor=request.user, **body.validated_data)
        return Response(ModelEndpointSerializer(endpoint).data, status=status.HTTP_201_CREATED)


@extend_schema(parameters=[NAME])
class EndpointDetailApi(APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(responses={200: ModelEndpointSerializer})
    def get(self, request, name):
        return Response(ModelEndpointSerializer(get_object_or_404(_endpoints(request), name=name)).data)

    @extend_schema(request=ModelEndpointBodySerializer, responses={200: ModelEndpointSerializer, 400: CHECK_FAILED})
    def put(self, request, name):
        """Replace the endpoint's settings and models, tested as when it was added (unless disabled).
        A model that a profile uses cannot be removed."""
        get_object_or_404(_endpoints(request), name=name)
        body = ModelEndpointBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        endpoint = services.endpoint_save(tenant=request.auth.tenant, name=name, actor=request.user,
                                          **body.validated_data)
        return Response(ModelEndpointSerializer(endpoint).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted."), 400: OpenApiResponse(
        description="a profile uses one of its models")})
    def delete(self, request, name):
        services.endpoint_delete(tenant=request.auth.tenant, name=name, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProfileListApi(generics.ListAPIView):
    """The tenant's model profiles: the names agents ask for, each an ordered list of models to try.
    A name the tenant has not defined is served by the offline model."""

    permission_classes = [GovernancePermission]
    serializer_class = ModelProfileSerializer

    def get_queryset(self):
        return _profiles(self.request)

    @extend_schema(request=ModelProfileCreateSerializer, responses={201: ModelProfileSerializer})
    def post(self, request):
        body = ModelProfileCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if _profiles(request).filter(name=body.validated_data["name"]).exists():
            raise ValidationError({"name": [f"a model profile named '{body.validated_data['name']}' already exists; "
                                            f"PUT changes it"]})
        profile = services.profile_save(tenant=request.auth.tenant, name=body.validated_data["name"],
                                        entries=_entries(body.validated_data), actor=request.user)
        return Response(ModelProfileSerializer(profile).data, status=status.HTTP_201_CREATED)


@extend_schema(parameters=[NAME])
class ProfileDetailApi(APIView):
    permission_classes = [GovernancePermission]

    @extend_schema(responses={200: ModelProfileSerializer})
    def get(self, request, name):
        return Response(ModelProfileSerializer(get_object_or_404(_profiles(request), name=name)).data)

    @extend_schema(request=ModelProfileBodySerializer, responses={200: ModelProfileSerializer})
    def put(self, request, name):
        """Replace the profile's models."""
        get_object_or_404(_profiles(request), name=name)
        body = ModelProfileBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        profile = services.profile_save(tenant=request.auth.tenant, name=name, entries=_entries(body.validated_data),
                                        actor=request.user)
        return Response(ModelProfileSerializer(profile).data)

    @extend_schema(responses={204: OpenApiResponse(description="Deleted.")})
    def delete(self, request, name):
        services.profile_delete(tenant=request.auth.tenant, name=name, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[OpenApiParameter("run", OpenApiTypes.UUID, description="Only this run's calls.")])
class LLMCallListApi(TenantScopedMixin, generics.ListAPIView):
    """The tenant's model calls, newest first: each attempt, its tokens, cost, latency and outcome."""

    permission_classes = [GovernancePermission]
    serializer_class = LLMCallSerializer

    def get_queryset(self):
        query = LLMCallQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        calls = self.tenant_queryset(LLMCall.objects.select_related("endpoint"))
        if "run" in query.validated_data:
            calls = calls.filter(run_id=query.validated_data["run"])
        return calls.order_by("-created_at", "-id")
