import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models import OuterRef, Subquery


class Tenant(models.Model):
    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    approval_timeout_s = models.PositiveIntegerField(
        default=86_400, help_text="How long an approval waits when its workflow sets no timeout (seconds).")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.slug


class Role(models.TextChoices):
    ADMIN = "admin"
    OPERATOR = "operator"
    AGENT = "agent"
    VIEWER = "viewer"


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique")]

    def __str__(self):
        return f"{self.user} @ {self.tenant} ({self.role})"


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenManager(models.Manager):
    def for_key(self, raw: str):
        """The live token for a raw key, with its tenant, its user and the user's `role` there; or None
        (also when the user is no longer a member)."""
        role = Membership.objects.filter(tenant_id=OuterRef("tenant_id"), user_id=OuterRef("user_id")).values("role")
        return (
            self.select_related("tenant", "user")
            .annotate(role=Subquery(role[:1]))
            .filter(key_hash=token_hash(raw), revoked_at__isnull=True, user__is_active=True, role__isnull=False)
            .first()
        )


class ApiToken(models.Model):
    """An API token scoped to one tenant. Only its SHA-256 is stored; the key is shown once."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The first characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenManager()

    def __str__(self):
        return f"{self.prefix}… ({self.name})"

    @staticmethod
    def generate_key() -> str:
        return "hil_" + secrets.token_urlsafe(32)


class AuditEntry(models.Model):
    """A change a human made: who, what, and the values before and after."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=60)
    object_id = models.CharField(max_length=64)
    old = models.JSONField(null=True, blank=True)
    new = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "audit entries"
