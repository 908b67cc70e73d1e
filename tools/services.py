from typing import Callable

from .models import ToolCall


def tool_call_once(*, ctx, tool: str, args: dict, call: Callable[[dict], dict]) -> dict:
    """Run `call(args)` once per (step idempotency key, tool); a repeat returns the first result.

    The ledger row and the effect share one transaction when the effect is in our database;
    an external tool must be given `ctx.idempotency_key` so that it deduplicates too."""
    record, _ = ToolCall.objects.get_or_create(  # a callable default is only called when the row is created
        tenant_id=ctx.tenant_id, idempotency_key=ctx.idempotency_key, tool=tool,
        defaults={"run_id": ctx.run_id, "node_id": ctx.node_id, "args": args, "result": lambda: call(args)},
    )
    return record.result
