"""API authentication: `Authorization: Bearer <token>`, one tenant per token."""

from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from .models import ApiToken, Role


def token_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, key = value.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def authenticate_key(raw: str):
    """(user, token) for a raw key, with the caller's role in `token.role`; None if not valid."""
    token = ApiToken.objects.for_key(raw)
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token


class BearerTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = request.headers.get("Authorization")
        if not header:
            return None
        raw = token_from_header(header)
        if raw is None:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <token>'.")
        result = authenticate_key(raw)
        if result is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return result

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class TenantRolePermission(permissions.BasePermission):
    """Every member may read; viewers may not change anything."""

    message = "Your role in this tenant does not allow this."

    def has_permission(self, request, view):
        token = request.auth
        if not isinstance(token, ApiToken):
            return False
        return request.method in permissions.SAFE_METHODS or token.role != Role.VIEWER


class OperatorPermission(TenantRolePermission):
    """Operators and admins govern runs (cancel, retry); agents and viewers may only read them."""

    message = "Only an operator or an admin of this tenant may do this."

    def has_permission(self, request, view):
        return super().has_permission(request, view) and (
            request.method in permissions.SAFE_METHODS or request.auth.role in (Role.ADMIN, Role.OPERATOR))


class GovernancePermission(TenantRolePermission):
    """Only operators and admins, to read as to change: the tenant's secrets and model settings."""

    message = "Only an operator or an admin of this tenant may see or change this."

    def has_permission(self, request, view):
        return super().has_permission(request, view) and request.auth.role in (Role.ADMIN, Role.OPERATOR)
