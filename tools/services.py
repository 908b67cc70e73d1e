import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F
from django.forms.models import model_to_dict
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import Tenant
from accounts.services import audit_record
from core import redis
from core.errors import SecretNotFound, SecretUnreadable, ServiceError

from . import crypto, mcp, pii
from .models import (McpServer, PiiVault, RedactionSettings, Risk, Secret, Tool, ToolCall, ToolGrant, ToolLimit,
                     ToolPolicy)


class ToolCallConflict(Exception):
    """An attempt's n-th call differs from the one recorded under the same key by an earlier attempt."""


def tool_call_once(*, ctx, tool: str, args: dict, call: Callable[[dict, str], dict],
                   approval: dict | None = None, admit: Callable[[], None] | None = None,
                   effect: bool = True, repeatable: bool = True) -> dict:
    """Make a side effect once per idempotency key: `call(args, key)` acts and returns a JSON object.

    The contract for every tool: a call recorded as succeeded is never made again; its result is
    replayed. A call that failed, or whose worker died before its outcome was recorded (pending), is
    made again with the same key, so the system it acts on must treat a repeated key as the same
    request (a payment provider's idempotency key, an upsert, a unique constraint). A call that is not
    `repeatable` (a statement run on a customer's database) is not made again once started: its outcome
    unknown, it returns {"refused", "code": "outcome_unknown", "reason"}, for a human to look.

    With `approval` ({"title", "schema", "timeout_s", "on_expiry", and a policy's "quorum", "approver_role",
    "policy", "args_hash", "preview"}, all but the title optional) the call first waits for a human: the run
    waits holding no worker, and the step runs again once the decision is in. Approved, the call is made with
    the approved (perhaps edited) arguments, and only those (their hash was recorded with the decision);
    rejected, it returns {"refused": True, "reason": ...} and acts on nothing. `admit()`, called right before
    the call is made, may refuse it by raising: the row then waits for the next attempt. A call with no side
    `effect` (a read) is recorded after it, with its result, in the statement that commits the step's outcome:
    a worker that dies meanwhile reads again."""
    args = json.loads(json.dumps(args))  # as the ledger stores and returns them
    seq, key = ctx.call_key()
    record = _recorded(ctx.run_id, ctx.node_id, seq)
    fields = dict(tenant_id=ctx.tenant_id, run_id=ctx.run_id, node_id=ctx.node_id, seq=seq, idempotency_key=key,
                  tool=tool, args=args)
    if record is None and approval:
        with ctx.holding():
            record = ToolCall.objects.create(**fields, status=ToolCall.Status.AWAITING)
    elif record is not None and (record.tool, record.args) != (tool, args):
        raise ToolCallConflict(f"call {seq} of node '{ctx.node_id}' was {record.tool} {json.dumps(record.args)} in an "
                               f"earlier attempt, and is {tool} {json.dumps(args)} now; it is not made")
    if record is not None:
        if record.status == ToolCall.Status.SUCCEEDED:
            return record.result
        if record.status == ToolCall.Status.REJECTED and record.decision["decision"] == "edit":
            return {"refused": True, "reason": f"edited by {record.decision.get('by') or 'a human'}, to be proposed "
                                               "again", "edited": record.decision["payload"]}
        if record.status == ToolCall.Status.REJECTED:
            return {"refused": True, "reason": _refusal(record.decision)}
        if record.status == ToolCall.Status.AWAITING:
            ctx.wait_for_human(key, {**approval, "tool": tool, "payload": args})
        if record.status == ToolCall.Status.PENDING and record.executions and not repeatable:
            return {"refused": True, "code": "outcome_unknown", "reason": (
                f"an earlier attempt started this call and stopped before its outcome was recorded; it may have "
                f"acted: a human must check before it is made again (idempotency key {key})")}
        if record.decision and record.decision.get("payload") is not None:
            args = record.decision["payload"]
    if admit is not None:
        admit()
    if record is None and not effect:  # nothing to make twice: recorded with the step's outcome, whatever it is
        result = call(args, key)
        ctx.rows.append(ToolCall(**fields, status=ToolCall.Status.SUCCEEDED, result=result, executions=1))
        return result
    if record is None:
        with ctx.holding():
            record = ToolCall.objects.create(**fields, status=ToolCall.Status.PENDING, executions=1)
    else:
        _record(ctx, record, status=ToolCall.Status.PENDING, executions=F("executions") + 1)
    try:
        result = call(args, key)
    except Exception as e:
        _record(ctx, record, status=ToolCall.Status.FAILED, error=f"{type(e).__name__}: {e}")
        raise
    _record(ctx, record, status=ToolCall.Status.SUCCEEDED, result=result, error="")
    return result


def _recorded(run_id, node_id: str, seq: int) -> ToolCall | None:
    """The call as an earlier attempt recorded it (raw: one of these per tool call, and the ORM's query costs
    more than the query)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, tool, args, status, result, decision, executions FROM {ToolCall._meta.db_table}"
                       " WHERE run_id = %s AND node_id = %s AND seq = %s", [run_id, node_id, seq])
        row = cursor.fetchone()
    if row is None:
        return None
    pk, tool, args, status, result, decision, executions = row
    return ToolCall(id=pk, tool=tool, args=json.loads(args), status=status, result=_json(result),
                    decision=_json(decision), executions=executions)


def _json(text: str | None):
    return None if text is None else json.loads(text)


def _record(ctx, record: ToolCall, **fields) -> None:
    """Update the call's row, only while this worker still holds the run."""
    with ctx.holding():
        ToolCall.objects.filter(pk=record.pk).update(updated_at=timezone.now(), **fields)


def args_hash(tool: str, args: dict) -> str:
    """What an approval is bound to: the tool and its arguments, canonically."""
    return hashlib.sha256(json.dumps([tool, args], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    """Re-encrypt every secret (and every run's PII vault) of every tenant under `new_master_key`, all or none;
    then HIL_MASTER_KEY is to be set to it. Returns (re-encrypted, already under the new key): running it again is
    harmless."""
    with connection.cursor() as cursor:  # nothing is written under the retiring key meanwhile; reads go on
        for model in (Secret, PiiVault):
            cursor.execute(f"LOCK TABLE {model._meta.db_table} IN EXCLUSIVE MODE")
    rotated, already = 0, 0
    for model, name_of in ((Secret, lambda row: row.name), (PiiVault, lambda row: f"pii:{row.run_id}")):
        changed = []
        for row in model.objects.select_related("tenant").order_by("pk").iterator(chunk_size=500):
            try:
                value = crypto.decrypt(settings.HIL_MASTER_KEY, row.tenant_id, name_of(row), row.ciphertext)
            except crypto.Undecryptable:
                try:
                    crypto.decrypt(new_master_key, row.tenant_id, name_of(row), row.ciphertext)
                except crypto.Undecryptable:
                    raise SecretUnreadable(f"secret '{name_of(row)}' of tenant {row.tenant.slug} decrypts under "
                                           "neither the current master key nor the new one; nothing was "
                                           "re-encrypted") from None
                already += 1
                continue
            row.ciphertext = crypto.encrypt(new_master_key, row.tenant_id, name_of(row), value)
            changed.append(row)
        model.objects.bulk_update(changed, ["ciphertext"], batch_size=500)
        rotated += len(changed)
    return rotated, already


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


# --- a tenant's tool configuration: read by every call, cached per process until it changes


@dataclass(frozen=True)
class TenantTools:
    version: bytes | None  # the tenant's counter in Redis when it was read
    expires: float  # time.monotonic(): read again after this in any case (Redis lost the counter, say)
    tools: dict  # name -> Tool (with its MCP server)
    grants: frozenset  # (workflow id, node id, tool)
    policies: tuple  # the enabled ToolPolicy rows
    limits: dict  # tool -> ToolLimit
    redaction: tuple  # the PII entities redacted


CONFIG_TTL_S = 30
FRESH_S = 0.1  # a configuration checked against Redis this recently is taken as it is
_tenant_tools: dict[int, tuple[TenantTools, float]] = {}  # tenant -> (configuration, when last checked)


def tenant_tools(tenant_id: int, *, fresh_s: float = FRESH_S) -> TenantTools:
    """The tenant's tools, grants, policies, limits and redaction settings, as this process last read them: one
    Redis read (whether they changed) per `fresh_s`. A change made in this process is seen at once, in another
    within `fresh_s`. A caller that checks `version` itself later passes math.inf, any copy not expired yet
    (the model router, in its script before the call)."""
    found, checked = _tenant_tools.get(tenant_id, (None, 0.0))
    now = time.monotonic()
    if found is not None and now - checked < fresh_s and found.expires > now:
        return found
    version = redis.client().get(tools_key(tenant_id))
    if found is not None and found.version == version and found.expires > now:
        _tenant_tools[tenant_id] = (found, now)
        return found
    redaction = RedactionSettings.objects.filter(tenant_id=tenant_id).first()
    found = TenantTools(
        version, now + CONFIG_TTL_S,
        {t.name: t for t in Tool.objects.filter(tenant_id=tenant_id).select_related("mcp_server")},
        frozenset(ToolGrant.objects.filter(tenant_id=tenant_id).values_list("workflow_id", "node_id", "tool")),
        tuple(ToolPolicy.objects.filter(tenant_id=tenant_id, enabled=True)),
        {limit.tool: limit for limit in ToolLimit.objects.filter(tenant_id=tenant_id)},
        redaction.entities() if redaction else pii.ENTITIES)
    _tenant_tools[tenant_id] = (found, now)
    return found


def tools_key(tenant_id: int) -> str:
    return f"hil:{{t{tenant_id}}}:tools-config"


def tools_changed(tenant_id: int) -> None:
    """Every process reads the tenant's tool configuration again (this one at once, the others within FRESH_S):
    told now, and again after commit, for one that read the old configuration in between."""
    _tenant_tools.pop(tenant_id, None)
    redis.client().incr(tools_key(tenant_id))
    transaction.on_commit(lambda: (_tenant_tools.pop(tenant_id, None), redis.client().incr(tools_key(tenant_id))))


def _shown(obj) -> dict:
    return json.loads(json.dumps(model_to_dict(obj), cls=DjangoJSONEncoder))


def validate(obj) -> None:
    """The model's checks, failing as a ServiceError that says what is wrong with which field."""
    try:
        obj.full_clean()
    except ValidationError as e:
        raise ServiceError("; ".join(f"{field}: {' '.join(errors)}" if field != "__all__" else " ".join(errors)
                                     for field, errors in e.message_dict.items())) from None


@transaction.atomic
def governed_save(*, obj, actor) -> None:
    """Save a tool, MCP server, grant, policy, limit or redaction setting (validated), with its audit row."""
    validate(obj)
    old = type(obj).objects.filter(pk=obj.pk).first() if obj.pk else None
    obj.save()
    action = f"{obj._meta.model_name}.{'change' if old else 'add'}"
    audit_record(tenant_id=obj.tenant_id, actor=actor, action=action, obj=obj, old=_shown(old) if old else None,
                 new=_shown(obj))
    tools_changed(obj.tenant_id)


@transaction.atomic
def governed_delete(*, obj, actor) -> None:
    audit_record(tenant_id=obj.tenant_id, actor=actor, action=f"{obj._meta.model_name}.delete", obj=obj,
                 old=_shown(obj))
    obj.delete()
    tools_changed(obj.tenant_id)


# --- PII: redacted into tokens for models, events and logs; filled back in for the customer


def pii_redact(ctx, value, *, fresh_s: float = FRESH_S):
    """`value` (a string, or JSON) with the personal data the tenant redacts replaced by the run's tokens.
    `fresh_s`: as tenant_tools takes it."""
    entities = tenant_tools(ctx.tenant_id, fresh_s=fresh_s).redaction
    if not entities:
        return value
    if ctx.pii_vault is None:  # most values hold none: the run's stored tokens are read only once one does
        if pii.redact_json(value, vault=pii.Vault(), entities=entities) == value:
            return value
        ctx.pii_vault = _vault_read(ctx.tenant_id, ctx.run_id) or pii.Vault()
    redacted = pii.redact_json(value, vault=ctx.pii_vault, entities=entities)
    if ctx.pii_vault.changed:
        ctx.pii_vault.changed = False
        with ctx.holding():
            PiiVault.objects.update_or_create(run_id=ctx.run_id, defaults={
                "tenant_id": ctx.tenant_id, "ciphertext": crypto.encrypt(
                    settings.HIL_MASTER_KEY, ctx.tenant_id, f"pii:{ctx.run_id}", json.dumps(ctx.pii_vault.to_json()))})
    return redacted


def pii_refill_args(ctx, args: dict) -> dict:
    """A tool's arguments with the run's tokens (which a model passes, having seen nothing else) back to the values
    they stand for: what the tool needs to act on, and never shown in an event or a prompt."""
    if "<" not in json.dumps(args):
        return args
    if ctx.pii_vault is None:
        ctx.pii_vault = _vault_read(ctx.tenant_id, ctx.run_id)
    return pii.refill_json(args, ctx.pii_vault) if ctx.pii_vault else args


def pii_refill(*, tenant_id: int, run_id, text: str) -> str:
    """The text with the run's PII tokens replaced by the values they stand for: for the customer's eyes."""
    vault = _vault_read(tenant_id, run_id) if "<" in text else None
    return pii.refill(text, vault) if vault else text


@sensitive_variables()
def _vault_read(tenant_id: int, run_id) -> pii.Vault | None:
    """The run's stored tokens, decrypted; None before a redaction stored any."""
    row = PiiVault.objects.filter(run_id=run_id).first()
    if row is None:
        return None
    return pii.Vault.from_json(json.loads(crypto.decrypt(settings.HIL_MASTER_KEY, tenant_id, f"pii:{run_id}",
                                                         row.ciphertext)))


# --- MCP servers


def mcp_endpoint(server: McpServer) -> mcp.McpEndpoint:
    """The server as the MCP client reaches it, with its secrets filled in."""
    tenant = Tenant(pk=server.tenant_id)
    if server.transport == McpServer.Transport.STDIO:
        return mcp.McpEndpoint("stdio", command=tuple(server.command), env={
            name: secret_value(tenant=tenant, name=secret) for name, secret in server.env.items()})
    return mcp.McpEndpoint("http", url=server.url, headers={
        name: secret_value(tenant=tenant, name=secret) for name, secret in server.headers.items()})


def mcp_server_sync(*, server: McpServer, actor) -> list[Tool]:
    """List the server's tools and make each a tool of the tenant, `<server>.<tool>`, with its schemas. A new one
    takes its risk from the server's hints (read-only, destructive, open-world; otherwise write); an operator's
    risk, cost and switch are kept; one the server no longer lists is disabled."""
    try:
        listed = mcp.mcp_tools(mcp_endpoint(server), timeout_s=server.timeout_s)
    except (mcp.McpError, SecretNotFound, SecretUnreadable) as e:
        McpServer.objects.filter(pk=server.pk).update(sync_error=str(e)[:2000])
        raise ServiceError(f"MCP server '{server.name}': {e}") from None
    with transaction.atomic():
        known = {tool.remote_name: tool for tool in server.tools.all()}
        synced = []
        for item in listed:
            tool = known.pop(item["name"], None) or Tool(
                tenant_id=server.tenant_id, kind=Tool.Kind.MCP, mcp_server=server, remote_name=item["name"],
                name=f"{server.name}.{_tool_name(item['name'])}", risk=_risk(item["annotations"]))
            tool.description, tool.input_schema = item["description"], item["input_schema"] or {"type": "object"}
            tool.output_schema = item["output_schema"]
            tool.full_clean()
            tool.save()
            synced.append(tool)
        Tool.objects.filter(pk__in=[tool.pk for tool in known.values()]).update(enabled=False)
        McpServer.objects.filter(pk=server.pk).update(synced_at=timezone.now(), sync_error="")
        audit_record(tenant_id=server.tenant_id, actor=actor, action="mcpserver.sync", obj=server,
                     new={"tools": [tool.name for tool in synced], "disabled": [t.name for t in known.values()]})
        tools_changed(server.tenant_id)
    return synced


def _tool_name(remote: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", remote.lower()).strip("_-")[:80] or "tool"


def _risk(annotations: dict) -> str:
    if annotations.get("readOnlyHint"):
        return Risk.READ
    if annotations.get("destructiveHint"):
        return Risk.DESTRUCTIVE
    return Risk.EXTERNAL if annotations.get("openWorldHint") else Risk.WRITE
