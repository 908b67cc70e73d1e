"""The built-in tools."""

from dataclasses import replace

from core import deadlines

from . import sandbox
from .contracts import builtin
from .models import Risk

REFUND = {"type": "object", "additionalProperties": False, "required": ["order_id", "amount"], "properties": {
    "order_id": {"type": "integer", "minimum": 1},
    "amount": {"type": "string", "pattern": r"^\d{1,9}(\.\d{1,2})?$", "description": "In the order's currency."}}}


def _refund_preview(args: dict) -> dict:
    return {"will": f"refund {args['amount']} on order {args['order_id']}"}


@builtin("refunds.issue", input_schema=REFUND, risk=Risk.WRITE, preview=_refund_preview, output_schema={
    "type": "object", "required": ["refund_id", "order_id", "amount"],
    "properties": {"refund_id": {"type": "string"}, "order_id": {"type": "integer"}, "amount": {"type": "string"}}})
def refunds_issue(args: dict, key: str) -> dict:
    """Issue a refund. The demo has no payment provider: the refund is the ledger's record, and a real provider
    would receive the same idempotency key."""
    return {"refund_id": f"rf_{key[:8]}_{args['order_id']}", **args}


CODE = {"type": "object", "additionalProperties": False, "required": ["code"], "properties": {
    "code": {"type": "string", "maxLength": 100_000, "description": "Python 3 source; print what you want back."},
    "stdin": {"type": "string", "maxLength": 1_000_000}}}


@builtin("code.python", input_schema=CODE, risk=Risk.EXTERNAL, output_schema={
    "type": "object", "required": ["exit_code", "stdout", "stderr", "timed_out"],
    "properties": {"exit_code": {"type": ["integer", "null"]}, "stdout": {"type": "string"},
                   "stderr": {"type": "string"}, "timed_out": {"type": "boolean"}}})
def code_python(args: dict, key: str) -> dict:
    """Run Python code (standard library only) in a sandbox: no network, no files but its own, limited CPU time,
    memory, file size and processes, and a wall-clock timeout (tools/sandbox.py)."""
    limits = sandbox.SandboxLimits()
    if (left := deadlines.remaining()) is not None:  # the step's deadline bounds the wall clock too
        limits = replace(limits, timeout_s=max(0.1, min(limits.timeout_s, left - 0.5)))
    return sandbox.run_python(args["code"], stdin=args.get("stdin", ""), limits=limits)
