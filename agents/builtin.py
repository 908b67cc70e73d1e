"""Built-in agents."""

import re
import sqlite3
from contextlib import closing
from decimal import Decimal

from django.conf import settings

from core import deadlines
from core.expressions import evaluate
from tools.services import tool_call_once

from .llm import model_for
from .registry import AgentResult, StepContext, register

PLACEHOLDER = re.compile(r"\{\{\s*(.+?)\s*\}\}")


@register("intent")
def intent(ctx: StepContext) -> AgentResult:
    """Classify the user's message. Config: `intents` {label: keywords}, `fallback`."""
    text = ctx.state["input"]["text"]
    model = model_for(ctx.config)
    result = model.classify(text, ctx.config.get("intents", {}), ctx.config.get("fallback", "unknown"))
    output = {"intent": result.label, "confidence": result.confidence, "entities": result.entities}
    return AgentResult(output, usage=model.usage(text))


@register("responder")
def responder(ctx: StepContext) -> AgentResult:
    """Write the reply. Config: `template` with {{ jmespath }} placeholders over the run state."""
    model = model_for(ctx.config)

    def fill(match):
        value = evaluate(match.group(1), ctx.state)
        return "" if value is None else str(value)

    reply = PLACEHOLDER.sub(fill, ctx.config.get("template", ""))
    return AgentResult({"reply": reply, "model": model.name}, usage=model.usage(reply))


@register("rules")
def rules(ctx: StepContext) -> dict:
    """Evaluate named JMESPath expressions over the run state. Config: `rules` {name: expr}."""
    return {name: evaluate(expression, ctx.state) for name, expression in ctx.config.get("rules", {}).items()}


@register("order_lookup")
def order_lookup(ctx: StepContext) -> dict:
    """Look up an order (an invoice of the Chinook sample store, read-only).
    Config: `order_id`, a JMESPath expression giving the order number."""
    order_id = evaluate(ctx.config.get("order_id", "input.order_id"), ctx.state)
    if not isinstance(order_id, int):
        return {"found": False, "order_id": None}
    with closing(sqlite3.connect(f"file:{settings.HIL_ORDERS_DB}?mode=ro", uri=True)) as db:
        db.set_progress_handler(deadlines.expired, 10_000)  # sqlite interrupts the query at the step's deadline
        row = db.execute(
            "SELECT i.InvoiceId, i.InvoiceDate, i.Total, c.FirstName || ' ' || c.LastName, i.BillingCountry"
            " FROM Invoice i JOIN Customer c ON c.CustomerId = i.CustomerId WHERE i.InvoiceId = ?",
            (order_id,),
        ).fetchone()
    if row is None:
        return {"found": False, "order_id": order_id}
    return {"found": True, "order_id": row[0], "date": row[1][:10], "total": float(row[2]),
            "customer": row[3], "country": row[4]}


@register("issue_refund")
def issue_refund(ctx: StepContext) -> dict:
    """Record a refund in the tool-call ledger, once per idempotency key (the demo has no
    payment provider; a real one would receive the same key). Config: `order_id`, `amount`
    (JMESPath expressions)."""
    args = {"order_id": evaluate(ctx.config["order_id"], ctx.state),
            "amount": str(Decimal(str(evaluate(ctx.config["amount"], ctx.state))))}
    result = tool_call_once(ctx=ctx, tool="refunds.issue", args=args,
                            call=lambda a, key: {"refund_id": f"rf_{key[:8]}_{a['order_id']}", **a})
    return {"refunded": True, **result}
