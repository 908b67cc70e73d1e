import json
from typing import Callable

from django.db.models import F
from django.utils import timezone

from .models import ToolCall


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
