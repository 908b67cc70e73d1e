"""API authentication: `Authorization: Bearer <token>`, one tenant per token."""

from datetime import timedelta

from django.utils import timezone
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device
from rest_framework import authentication, exceptions, permissions

from .models import ApiToken, Membership, Role

TENANT_SESSION_KEY = "hil_tenant"


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


def session_member(user, session) -> Membership | None:
    """The membership a console session works in: a signed-in user past the second factor, in the tenant
    the session chose (their first otherwise). None if they are not (or no longer) a member, or not verified.
    Reads the device from the session itself, so that WebSockets (which django-otp's middleware does not
    see) are checked as pages are."""
    if not user.is_authenticated or not user.is_active or not _verified_device(user, session):
        return None
    memberships = Membership.objects.select_related("tenant").filter(user=user).order_by("tenant__slug")
    chosen = session.get(TENANT_SESSION_KEY)
    return (chosen and memberships.filter(tenant_id=chosen).first()) or memberships.first()


def _verified_device(user, session) -> bool:
    if hasattr(user, "is_verified"):  # django-otp's middleware has read the session's device (pages, the API)
        return user.is_verified()
    device = Device.from_persistent_id(session.get(DEVICE_ID_SESSION_KEY) or "")
    return device is not None and device.user_id == user.pk and device.confirmed


class SessionMemberAuthentication(authentication.SessionAuthentication):
    """The console's calls to the API: a session past the second factor, acting in its tenant with its
    role, as a token would. CSRF-checked, as every session request."""

    def authenticate(self, request):
        found = super().authenticate(request)
        if found is None:
            return None
        member = session_member(found[0], request._request.session)
        if member is None:
            raise exceptions.PermissionDenied("Sign in to the console with your second factor first.")
        return found[0], member


class TenantRolePermission(permissions.BasePermission):
    """Every member may read; viewers may not change anything."""

    message = "Your role in this tenant does not allow this."

    def has_permission(self, request, view):
        token = request.auth
        if not isinstance(token, ApiToken | Membership):
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
