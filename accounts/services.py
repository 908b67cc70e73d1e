import base64

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_otp import devices_for_user
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from core.errors import ServiceError

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


BACKUP_CODES = 10


def totp_secret(device: TOTPDevice) -> str:
    """The key as an authenticator app takes it (base32)."""
    return base64.b32encode(device.bin_key).decode()


def totp_demo_device(*, user) -> TOTPDevice:
    """A confirmed authenticator for a demo user, whose key the seed prints (demo only)."""
    return TOTPDevice.objects.filter(user=user, confirmed=True).first() or TOTPDevice.objects.create(
        user=user, name="demo authenticator", confirmed=True)


def totp_enrolment(*, user) -> TOTPDevice:
    """The authenticator a member is enrolling, not yet confirmed: the same one until they confirm it.
    None once they have a confirmed device: adding another takes an admin (a password alone must not)."""
    if any(devices_for_user(user)):
        return None
    return TOTPDevice.objects.filter(user=user, confirmed=False).first() or TOTPDevice.objects.create(
        user=user, name="authenticator", confirmed=False)


@transaction.atomic
def totp_confirm(*, device: TOTPDevice, token: str) -> list[str]:
    """Confirm an enrolment with a first code from the authenticator; returns new backup codes, each
    good once, shown only now."""
    device = TOTPDevice.objects.select_for_update().get(pk=device.pk, confirmed=False)
    if not device.verify_token(_digits(token)):
        raise ServiceError("That code is not right: type the 6 digits your authenticator shows now.")
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    backup, _ = StaticDevice.objects.get_or_create(user=device.user, name="backup codes")
    backup.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(BACKUP_CODES)]
    StaticToken.objects.bulk_create(StaticToken(device=backup, token=code) for code in codes)
    return codes


def otp_verify(*, user, token: str):
    """The confirmed device that accepts `token` (an authenticator code or a backup code, which is used
    up). Each device refuses codes for a while after a wrong one, longer after each: brute force is slow."""
    token, waits = _digits(token), []
    for device in devices_for_user(user):
        allowed, info = device.verify_is_allowed()
        if not allowed:
            waits.append(info.get("locked_until"))
            continue
        if device.verify_token(token):
            return device
    if waits and all(waits):
        seconds = max(1, round((min(waits) - timezone.now()).total_seconds()))
        raise ServiceError(f"Too many wrong codes: try again in {seconds} s.")
    raise ServiceError("That code is not right.")


def _digits(token: str) -> str:
    return token.strip().replace(" ", "")

