import json
from typing import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import Tenant
from accounts.services import audit_record
from core.errors import SecretNotFound, SecretUnreadable, ServiceError

from . import crypto
from .models import Secret, ToolCall


class ToolCallConflict(Exception):
    """An attempt's n-th call differs from the one recorded under the same key by an earlier attempt."""


def tool_call_once(*, ctx, tool: str, args: dict, call: Callable[[dict, str], dict],
                   approval: dict | None = None) -> dict:
    """Make a side effect once per idempotency key: `call(args, key)` acts and returns a JSON object.

    The contract for every tool: a call recorded as succeeded is never made again; its result is
    replayed. A call that failed, or whose worker died before its outcome was recorded (pending), is
    made again with the same key, so the system it acts on must treat a repeated key as the same
    request (a payment provider's idempotency key, an upsert, a unique constraint).

    With `approval` ({"title", "schema", "timeout_s", "on_expiry"}, all but the title optional) the call
    first waits for a human: the run waits holding no worker, and the step runs again once the
    decision is in. Approved, the call is made with the approved (perhaps edited) arguments;
    rejected, it returns {"refused": True, "reason": ...} and acts on nothing."""
    args = json.loads(json.dumps(args))  # as the ledger stores and returns them
    seq, key = ctx.call_key()
    record = ToolCall.objects.filter(run_id=ctx.run_id, node_id=ctx.node_id, seq=seq).first()
    if record is None:
        with ctx.holding():
            record = ToolCall.objects.create(
                tenant_id=ctx.tenant_id, run_id=ctx.run_id, node_id=ctx.node_id, seq=seq, idempotency_key=key,
                tool=tool, args=args, status=ToolCall.Status.AWAITING if approval else ToolCall.Status.PENDING)
    elif (record.tool, record.args) != (tool, args):
        raise ToolCallConflict(f"call {seq} of node '{ctx.node_id}' was {record.tool} {json.dumps(record.args)} in an "
                               f"earlier attempt, and is {tool} {json.dumps(args)} now; it is not made")
    if record.status == ToolCall.Status.SUCCEEDED:
        return record.result
    if record.status == ToolCall.Status.REJECTED:
        return {"refused": True, "reason": _refusal(record.decision)}
    if record.status == ToolCall.Status.AWAITING:
        ctx.wait_for_human(key, {**approval, "tool": tool, "payload": args})
    if record.decision and record.decision.get("payload") is not None:
        args = record.decision["payload"]
    _record(ctx, record, status=ToolCall.Status.PENDING, executions=F("executions") + 1)
    try:
        result = call(args, key)
    except Exception as e:
        _record(ctx, record, status=ToolCall.Status.FAILED, error=f"{type(e).__name__}: {e}")
        raise
    _record(ctx, record, status=ToolCall.Status.SUCCEEDED, result=result, error="")
    return result


def tool_call_decide(*, run_id, key: str, decision: dict) -> None:
    """Record a human's decision on a call that waited for one: {"decision", "payload", "by", "comment"}.
    Called inside the decision's transaction; the step runs again after it."""
    approved = decision["decision"] in ("approve", "edit")
    ToolCall.objects.filter(run_id=run_id, idempotency_key=key, status=ToolCall.Status.AWAITING).update(
        status=ToolCall.Status.PENDING if approved else ToolCall.Status.REJECTED, decision=decision,
        updated_at=timezone.now())


def _record(ctx, record: ToolCall, **fields) -> None:
    """Update the call's row, only while this worker still holds the run."""
    with ctx.holding():
        ToolCall.objects.filter(pk=record.pk).update(updated_at=timezone.now(), **fields)


def _refusal(decision: dict) -> str:
    """'rejected by alice: too much', or 'expired: nobody decided in time'."""
    if decision["decision"] == "expire":
        return "expired: nobody decided in time"
    comment = f": {decision['comment']}" if decision.get("comment") else ""
    return f"rejected by {decision.get('by') or 'a human'}{comment}"


# --- secrets: stored encrypted (tools/crypto.py); a value is never logged, put in an error or returned by the API


@sensitive_variables("value")
@transaction.atomic
def secret_set(*, tenant: Tenant, name: str, value: str, actor=None) -> Secret:
    """Store `value` as the tenant's secret `name`, replacing the value it had."""
    _check_secret(name=name, value=value)
    old = Secret.objects.select_for_update().filter(tenant=tenant, name=name).values("last4").first()
    secret, _ = Secret.objects.update_or_create(tenant=tenant, name=name, defaults={
        "ciphertext": crypto.encrypt(settings.HIL_MASTER_KEY, tenant.pk, name, value),
        "last4": value[-4:] if len(value) >= 8 else ""})
    if actor is not None:
        audit_record(tenant_id=tenant.pk, actor=actor, action="secret.set", obj=secret,
                     old={"name": name, "last4": old["last4"]} if old else None,
                     new={"name": name, "last4": secret.last4})
    return secret


@sensitive_variables()
def secret_value(*, tenant: Tenant, name: str) -> str:
    """The value of the tenant's secret `name`: SecretNotFound without one, SecretUnreadable if it does not
    decrypt (moved from another tenant or name, altered, or encrypted under another master key)."""
    secret = Secret.objects.filter(tenant=tenant, name=name).first()
    if secret is None:
        raise SecretNotFound(f"no secret '{name}' in tenant {tenant.slug}")
    try:
        return crypto.decrypt(settings.HIL_MASTER_KEY, tenant.pk, name, secret.ciphertext)
    except crypto.Undecryptable:
        raise SecretUnreadable(f"secret '{name}' of tenant {tenant.slug} does not decrypt: it was encrypted for "
                               f"another tenant or name, altered, or encrypted under another master key") from None


@transaction.atomic
def secret_delete(*, tenant: Tenant, name: str, actor=None) -> None:
    secret = Secret.objects.select_for_update().filter(tenant=tenant, name=name).first()
    if secret is None:
        raise SecretNotFound(f"no secret '{name}' in tenant {tenant.slug}")
    if actor is not None:
        audit_record(tenant_id=tenant.pk, actor=actor, action="secret.delete", obj=secret,
                     old={"name": name, "last4": secret.last4})
    secret.delete()


@sensitive_variables()
@transaction.atomic
def secrets_rotate(*, new_master_key: bytes) -> tuple[int, int]:
    """Re-encrypt every secret of every tenant under `new_master_key`, all or none; then HIL_MASTER_KEY is
    to be set to it. Returns (re-encrypted, already under the new key): running it again is harmless."""
    with connection.cursor() as cursor:  # no secret is written under the retiring key meanwhile; reads go on
        cursor.execute(f"LOCK TABLE {Secret._meta.db_table} IN EXCLUSIVE MODE")
    rotated, already = [], 0
    for secret in Secret.objects.select_related("tenant").order_by("pk").iterator(chunk_size=500):
        try:
            value = crypto.decrypt(settings.HIL_MASTER_KEY, secret.tenant_id, secret.name, secret.ciphertext)
        except crypto.Undecryptable:
            try:
                crypto.decrypt(new_master_key, secret.tenant_id, secret.name, secret.ciphertext)
            except crypto.Undecryptable:
                raise SecretUnreadable(f"secret '{secret.name}' of tenant {secret.tenant.slug} decrypts under neither "
                                       f"the current master key nor the new one; nothing was re-encrypted") from None
            already += 1
            continue
        secret.ciphertext = crypto.encrypt(new_master_key, secret.tenant_id, secret.name, value)
        rotated.append(secret)
    Secret.objects.bulk_update(rotated, ["ciphertext"], batch_size=500)
    return len(rotated), already


@sensitive_variables("value")
def _check_secret(*, name: str, value: str) -> None:
    try:
        if not isinstance(name, str) or not name:
            raise ValidationError("a name is required")
        Secret._meta.get_field("name").run_validators(name)
    except ValidationError as e:
        raise ServiceError(f"secret name: {' '.join(e.messages)}") from None
    if not isinstance(value, str) or not value:
        raise ServiceError("a secret's value must be a non-empty string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise ServiceError("a secret's value must be valid text (no lone surrogates)") from None
    if size > Secret.MAX_VALUE_BYTES:
        raise ServiceError(f"a secret's value may be at most {Secret.MAX_VALUE_BYTES} bytes (UTF-8)")
