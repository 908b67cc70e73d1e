"""The one way a workflow calls a tool: `tool_call(ctx, name, args)`, for agents and for a model's function calls.

In order: the tool's contract (built-in, or the tenant's: MCP, HTTP), its input schema, the node's grant (its
`tools:` in the spec, or a ToolGrant; nothing by default), the tenant's policies (deny, or wait for the approvals
they require, bound to a hash of the arguments); then, once the call may go: the rate limit and quotas (Redis,
shared by every worker), the tool's cost against the model layer's budgets, the call itself once per idempotency
key (the ledger, tools.services.tool_call_once), its output schema, and PII redaction of what it returns before an
agent, a model or an event sees it. Every call, made or refused, is a `tool.call` run event; a refusal is also an
audit row. A refusal is a result, {"refused": True, "code": ..., "reason": ...}, never an exception: the agent
decides what to do (a workflow routes `<node>.refused` to HANDOVER). A tool that fails raises ToolFailed, and
the step is retried per its limits: the ledger makes the call again under the same key.
"""

import fnmatch
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Callable

import httpx
import jmespath
from django.utils import timezone

from accounts.models import AuditEntry, Tenant
from core import deadlines, redis, tracing
from core.errors import ServiceError
from core.expressions import compile_expression

from . import contracts, mcp
from .contracts import Contract, schema_error
from .models import Risk, Tool, ToolCall, ToolPolicy
from .services import (ToolCallConflict, args_hash, mcp_endpoint, pii_redact, pii_refill_args, secret_value,
                       tenant_tools, tool_call_once)

RANK = {"agent": 1, "operator": 2, "admin": 3}


class ToolFailed(Exception):
    """The tool ran and failed (an MCP tool's error, an HTTP endpoint's 5xx): the step is retried."""


class _Refused(Exception):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def tool_call(ctx, name: str, args) -> dict:
    """Call the tool `name` for the step `ctx` with `args`: its result (PII redacted), or a refusal."""
    with tracing.span(f"execute_tool {name}", **{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                                                 "hil.node": ctx.node_id}):
        result = _tool_call(ctx, name, args)
        if result.get("refused") is True:
            tracing.failed(f"refused: {result.get('code')}", "refused")
        return result


def _tool_call(ctx, name: str, args) -> dict:
    started = time.perf_counter()
    try:
        if not isinstance(args, dict):
            raise _Refused("invalid_arguments", f"{name}: the arguments must be a JSON object")
        contract = contract_of(ctx.tenant_id, name)
        if error := schema_error(contract.input_schema, args):
            raise _Refused("invalid_arguments", f"{name}: {error}")
        if name not in ctx.tools and (ctx.workflow_id, ctx.node_id, name) not in tenant_tools(ctx.tenant_id).grants:
            raise _Refused("not_granted", f"node '{ctx.node_id}' has not been granted the tool {name}")
        need = requirement(tenant_id=ctx.tenant_id, contract=contract, args=args, workflow_id=ctx.workflow_id,
                           stage=ctx.stage)
        if need.require == ToolPolicy.Require.DENY:
            raise _Refused("denied", f"{name}: denied by policy '{need.policy}'")
        admission = _Admission(ctx, contract)
        result = tool_call_once(ctx=ctx, tool=name, args=args, call=admission.call, admit=admission.admit,
                                approval=need.approval(contract, args) if need.require == "approval" else None,
                                effect=contract.risk != Risk.READ, repeatable=contract.repeatable)
    except _Refused as refusal:
        return _refused(ctx, name, args, refusal, started)
    except ToolCallConflict as e:
        return _refused(ctx, name, args, _Refused("changed_arguments", str(e)), started)
    except ToolFailed as e:  # retried by the step; its message goes to the step's error and the logs
        raise ToolFailed(pii_redact(ctx, str(e))) from None
    if result.get("refused") is True and set(result) <= {"refused", "reason", "edited", "code"}:
        # A human said no, nobody decided in time, a human's edit is to be proposed again, or the ledger's own.
        code = result.get("code") or ("edited" if "edited" in result else "expired"
                                      if result["reason"].startswith("expired") else "rejected")
        refusal = _refused(ctx, name, args, _Refused(code, f"{name}: {result['reason']}"), started)
        return {**refusal, "edited": pii_redact(ctx, result["edited"])} if code == "edited" else refusal
    if error := schema_error(contract.output_schema or contracts.NOOP_SCHEMA, result):
        return _refused(ctx, name, args, _Refused("invalid_output", f"{name} ran, and returned output its schema "
                                                                    f"rejects: {error}"), started)
    result = pii_redact(ctx, result)
    ctx.emit("tool.call", {"node": ctx.node_id, "tool": name, "outcome": "ok", "args": pii_redact(ctx, args),
                           "result": result, "cost": str(contract.cost_usd), "duration_ms": _ms(started)})
    return result


def _refused(ctx, name: str, args, refusal: _Refused, started: float) -> dict:
    # A schema error quotes the value it refuses: redacted, as the arguments are.
    shown, reason = pii_redact(ctx, args) if isinstance(args, dict) else None, pii_redact(ctx, refusal.reason)
    ctx.emit("tool.call", {"node": ctx.node_id, "tool": name, "outcome": "refused", "code": refusal.code,
                           "reason": reason, "args": shown, "duration_ms": _ms(started)},
             row=AuditEntry(tenant_id=ctx.tenant_id, action="tool.refused", object_type="workflows.Run",
                            object_id=str(ctx.run_id), new={"node": ctx.node_id, "tool": name, "code": refusal.code,
                                                            "reason": reason, "args": shown}))
    return {"refused": True, "code": refusal.code, "reason": reason}


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# --- contracts ---------------------------------------------------------------------------


def contract_of(tenant_id: int, name: str) -> Contract:
    if found := contracts.builtins().get(name):
        if found.tenant:
            return replace(found, run=partial(found.run, tenant_id=tenant_id),
                           preview=found.preview and partial(found.preview, tenant_id=tenant_id))
        return found
    tool = tenant_tools(tenant_id).tools.get(name)
    if tool is None:
        raise _Refused("unknown_tool", f"there is no tool {name}")
    if not tool.enabled or tool.mcp_server_id and not tool.mcp_server.enabled:
        raise _Refused("disabled", f"the tool {name} is disabled")
    run = partial(_mcp_run, tool) if tool.kind == Tool.Kind.MCP else partial(_http_run, tool)
    return Contract(name=tool.name, kind=tool.kind, risk=tool.risk, input_schema=tool.input_schema,
                    output_schema=tool.output_schema, cost_usd=tool.cost_usd, run=run, description=tool.description)


def _timeout(limit_s: float) -> float:
    return min(limit_s, deadlines.remaining() or limit_s)


def _mcp_run(tool: Tool, args: dict, key: str) -> dict:
    server = tool.mcp_server
    try:
        result = mcp.mcp_call(mcp_endpoint(server), tool.remote_name, args, timeout_s=_timeout(server.timeout_s))
    except mcp.McpError as e:
        raise ToolFailed(f"MCP server '{server.name}': {e}") from None
    if result["is_error"]:
        raise ToolFailed(f"{tool.name} failed: {' '.join(result['content'])[:500]}")
    structured = result["structured"]
    return structured if isinstance(structured, dict) else {"content": result["content"]}


def _http_run(tool: Tool, args: dict, key: str) -> dict:
    headers = {"Idempotency-Key": key}
    if tool.secret:
        headers["Authorization"] = "Bearer " + secret_value(tenant=Tenant(pk=tool.tenant_id), name=tool.secret)
    try:
        response = httpx.post(tool.url, json=args, headers=headers, timeout=_timeout(30))
    except httpx.HTTPError as e:
        raise ToolFailed(f"{tool.name}: {type(e).__name__} reaching its endpoint") from None
    if response.status_code >= 300:
        raise ToolFailed(f"{tool.name}: its endpoint answered {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise ToolFailed(f"{tool.name}: its endpoint did not answer JSON") from None


# --- policies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    require: str
    policy: str = ""
    approver_role: str = "agent"
    quorum: int = 1
    timeout_s: int | None = None
    on_expiry: str = "reject"

    def approval(self, contract: Contract, args: dict) -> dict:
        """The approval request: exactly what will run, what it would do, who must agree, and the arguments' hash."""
        votes = f", {self.quorum} approvers" if self.quorum > 1 else ""
        return {"title": f"{contract.name} ({self.policy}{votes})", "schema": contract.input_schema,
                "timeout_s": self.timeout_s, "on_expiry": self.on_expiry, "quorum": self.quorum,
                "approver_role": self.approver_role, "policy": self.policy, "args_hash": args_hash(contract.name, args),
                "preview": contract.preview(args) if contract.preview else None}


DESTRUCTIVE_DEFAULT = Requirement("approval", "destructive tools need an operator's approval", "operator")


def requirement(*, tenant_id: int, contract: Contract, args: dict, workflow_id,
                stage: Callable[[], str]) -> Requirement:
    """What the tenant's policies require of this call: the strictest of those that match, else the default
    (an operator's approval for a destructive tool, nothing for the rest)."""
    matching = [p for p in tenant_tools(tenant_id).policies if _matches(p, contract, args, workflow_id, stage)]
    if not matching:
        return DESTRUCTIVE_DEFAULT if contract.risk == Risk.DESTRUCTIVE else Requirement("nothing")
    p = max(matching, key=lambda p: (p.require == "deny", p.require == "approval", p.quorum, RANK[p.approver_role]))
    return Requirement(p.require, p.name, p.approver_role, p.quorum, p.timeout_s, p.on_expiry)


def _matches(policy: ToolPolicy, contract: Contract, args: dict, workflow_id, stage: Callable[[], str]) -> bool:
    if policy.tool and not fnmatch.fnmatchcase(contract.name, policy.tool):
        return False
    if policy.risk and policy.risk != contract.risk:
        return False
    if policy.workflow_id and policy.workflow_id != workflow_id or policy.stage and policy.stage != stage():
        return False
    if not policy.condition:
        return True
    try:
        value = compile_expression(policy.condition).search(args)
    except (jmespath.exceptions.JMESPathError, TypeError):  # jmespath raises TypeError for "5" > 100
        value = None
    if value is None:  # it cannot be told (a field missing, text compared with a number): held, if that is safer
        return policy.require != "nothing"
    return value not in (False, "", [], {})


def tool_call_decide(*, run, key: str, decision: dict, approval) -> None:
    """Record a human's decision on a call that waited for one ({"decision", "payload", "by", "comment"}) with
    the hash of the arguments it lets run. Called inside the decision's transaction; the step runs again after
    it. An edit must meet the tool's schema and need no more than `approval` (the request) gave: the approvers a
    policy asks of the edited arguments, or a deny, refuse it."""
    record = ToolCall.objects.select_for_update().filter(
        run_id=run.id, idempotency_key=key, status=ToolCall.Status.AWAITING).first()
    if record is None:
        return
    args = decision["payload"] if decision["decision"] == "edit" else record.args
    if decision["decision"] == "edit" and approval.policy:
        _edit_check(run, record.tool, args, approval)
    # Made as edited, unless the tool's approval rests on a dry run: then the agent proposes the edit again.
    approved = decision["decision"] == "approve" or decision["decision"] == "edit" and not _reapproves(
        run.tenant_id, record.tool)
    ToolCall.objects.filter(pk=record.pk).update(
        status=ToolCall.Status.PENDING if approved else ToolCall.Status.REJECTED, updated_at=timezone.now(),
        decision={**decision, "args_hash": args_hash(record.tool, args)})


def _reapproves(tenant_id: int, tool: str) -> bool:
    try:
        return contract_of(tenant_id, tool).reapprove_edits
    except _Refused:
        return False


def _edit_check(run, tool: str, args: dict, approval) -> None:
    try:
        contract = contract_of(run.tenant_id, tool)
    except _Refused as e:
        raise ServiceError(f"the edit cannot be checked: {e.reason}") from None
    if error := schema_error(contract.input_schema, args):
        raise ServiceError(f"edited arguments: {error}")
    workflow = run.workflow_version.workflow
    need = requirement(tenant_id=run.tenant_id, contract=contract, args=args, workflow_id=workflow.id,
                       stage=lambda: workflow.stage)
    if need.require == "deny" or need.quorum > approval.quorum or RANK[need.approver_role] > RANK.get(
            approval.approver_role, 1):
        asks = "a deny" if need.require == "deny" else f"{need.quorum} approver(s) of role {need.approver_role}"
        raise ServiceError(f"policy '{need.policy}' asks {asks} for the edited arguments, more than this approval "
                           "gives: reject it instead")


# --- admission: rate limits, quotas and cost, checked when the call is about to be made -------------------

# KEYS: the window's, the day's and the month's counters. ARGV: their limits (-1: none), then their lifetimes (s).
# Returns 0 when counted, else the 1-based index of the first limit reached (nothing counted).
ADMIT = """
for i = 1, 3 do
  local limit = tonumber(ARGV[i])
  if limit >= 0 and (tonumber(redis.call('GET', KEYS[i])) or 0) >= limit then return i end
end
for i = 1, 3 do
  if tonumber(ARGV[i]) >= 0 then
    redis.call('INCR', KEYS[i])
    redis.call('EXPIRE', KEYS[i], ARGV[3 + i])
  end
end
return 0
"""


class _Admission:
    """The checks a call passes right before it is made (after any approval), and the settling of its cost."""

    def __init__(self, ctx, contract: Contract):
        self.ctx, self.contract, self.reservation = ctx, contract, None

    def admit(self) -> None:
        ctx, name = self.ctx, self.contract.name
        if limit := tenant_tools(ctx.tenant_id).limits.get(name):
            now = time.time()
            day = datetime.fromtimestamp(now, UTC)
            prefix = f"hil:{{t{ctx.tenant_id}}}:tool:{name}"
            keys = [f"{prefix}:w{limit.window_s}:{int(now // limit.window_s)}", f"{prefix}:d:{day:%Y-%m-%d}",
                    f"{prefix}:m:{day:%Y-%m}"]
            limits = [-1 if n is None else n for n in (limit.calls, limit.per_day, limit.per_month)]
            reached = redis.script(ADMIT)(keys=keys, args=[*limits, limit.window_s, 2 * 86_400, 32 * 86_400])
            if reached == 1:
                wait_s = limit.window_s - now % limit.window_s
                raise _Refused("rate_limited", f"{name}: rate limit of {limit.calls} calls per {limit.window_s} s "
                                               f"reached; try again in {wait_s:.0f} s")
            if reached:
                per, n = ("day", limit.per_day) if reached == 2 else ("month", limit.per_month)
                raise _Refused("quota", f"{name}: quota of {n} calls per {per} used up")
        if self.contract.cost_usd:
            reservation = ctx.cost_reserve(self.contract.cost_usd)
            if isinstance(reservation, str):
                raise _Refused("over_budget", f"{name} costs ${self.contract.cost_usd}: {reservation}")
            self.reservation = reservation

    def call(self, args: dict, key: str) -> dict:
        try:
            result = self.contract.run(pii_refill_args(self.ctx, args), key)
        except Exception:
            if self.reservation:
                self.ctx.cost_settle(self.reservation, Decimal(0))
            raise
        if self.reservation:
            self.ctx.cost_settle(self.reservation, self.contract.cost_usd)
        if not isinstance(result, dict):
            raise ToolFailed(f"{self.contract.name} returned {type(result).__name__}, not a JSON object")
        return result


def tool_specs(ctx) -> list[dict]:
    """The tools the node may call, as a model's function-calling `tools` (names with '.' as '__')."""
    tenant = tenant_tools(ctx.tenant_id)
    names = sorted({*ctx.tools, *(tool for workflow, node, tool in tenant.grants
                                  if (workflow, node) == (ctx.workflow_id, ctx.node_id))})
    specs = []
    for name in names:
        try:
            contract = contract_of(ctx.tenant_id, name)
        except _Refused:
            continue
        specs.append({"type": "function", "function": {
            "name": name.replace(".", "__"), "description": contract.description[:1000],
            "parameters": contract.input_schema or contracts.NOOP_SCHEMA}})
    return specs

