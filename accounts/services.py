from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .models import ApiToken, AuditEntry, Membership, Tenant, token_hash


@transaction.atomic
def membership_set(*, tenant: Tenant, user, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(tenant=tenant, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def api_token_create(*, tenant: Tenant, user, name: str = "api") -> tuple[ApiToken, str]:
    """Create a token; returns it with the raw key, which is never stored and shown only now."""
    if not Membership.objects.filter(tenant=tenant, user=user).exists():
        raise ValueError(f"{user} is not a member of tenant {tenant.slug}")
    raw = ApiToken.generate_key()
    token = ApiToken.objects.create(tenant=tenant, user=user, name=name, prefix=raw[:8], key_hash=token_hash(raw))
    return token, raw


@transaction.atomic
def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def user_ensure(*, username: str, password: str | None = None, **fields):
    user, created = get_user_model().objects.get_or_create(username=username, defaults=fields)
    if created and password:
        user.set_password(password)
        user.save(update_fields=["password"])
    return user



def audit_record(*, tenant_id: int, actor, action: str, obj, old=None, new=None) -> AuditEntry:
    """Record a change a human made; call it inside the transaction that makes the change."""
    return AuditEntry.objects.create(tenant_id=tenant_id, actor=actor, action=action,
                                     object_type=obj._meta.label, object_id=str(obj.pk), old=old, new=new)
