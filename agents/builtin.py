"""Built-in agents."""

import json
import re
import sqlite3
import string
from contextlib import closing
from decimal import Decimal
from pathlib import Path

from django.conf import settings

from core import deadlines
from core.expressions import evaluate
from tools.mediation import tool_call

from . import grounding, router
from .llm import OfflineModel
from .registry import AgentResult, StepContext, StepFailure, register

PLACEHOLDER = re.compile(r"\{\{\s*(.+?)\s*\}\}")


PROMPTS = Path(__file__).parent / "prompts"


def prompt(name: str, **values) -> str:
    return string.Template((PROMPTS / f"{name}.txt").read_text()).substitute(values)


@register("intent", config_schema={
    "type": "object", "additionalProperties": False,
    "properties": {"intents": {"type": "object", "additionalProperties": {"type": "string"}}, "fallback": {"type": "string"},
                   "threshold": {"type": "number", "minimum": 0, "maximum": 1}, "profile": {"type": "string"},
                   "cache": router.CACHE_CONFIG}})
def intent(ctx: StepContext) -> AgentResult:
    """Classify the user's message. Config: `intents` {label: what it covers}, `fallback` (also the answer
    below `threshold` confidence (default 0: none), so that the workflow's default edge takes it), `profile`."""
    text = ctx.state["input"]["text"]
    labels, fallback = ctx.config.get("intents", {}), ctx.config.get("fallback", "unknown")
    schema = {"type": "object", "required": ["intent", "confidence"], "properties": {
        "intent": {"enum": [*labels, fallback]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "entities": {"type": "object"}}}

    def offline() -> dict:
        result = OfflineModel().classify(text, labels, fallback)
        return {"intent": result.label, "confidence": result.confidence, "entities": result.entities}

    answer = router.complete(ctx, cache=ctx.config.get("cache", "exact"), profile=ctx.config.get("profile", "fast"),
                             schema=schema, max_tokens=200, offline=offline,
                             messages=[{"role": "system", "content": prompt(
                                 "intent", fallback=fallback,
                                 intents="\n".join(f"- {label}: {about}" for label, about in labels.items()))},
                                       {"role": "user", "content": text}])
    output = {"intent": answer.data["intent"], "confidence": answer.data["confidence"],
              "entities": answer.data.get("entities", {})}
    if output["confidence"] < ctx.config.get("threshold", 0):
        output["intent"] = fallback
    return AgentResult(output, cost=answer.cost, usage=answer.usage)


CITATIONS = {"type": "array", "items": {"type": "object", "required": ["chunk", "quote"], "properties": {
    "chunk": {"type": "integer"}, "quote": {"type": "string", "minLength": 1}}}}
GROUNDED = ("\nEvery statement that rests on a passage cites it: add {\"chunk\": <the passage's chunk id>, "
            "\"quote\": \"<the exact words you rely on, copied verbatim>\"} to \"citations\".")
COUNTED = ("\nEvery number you write must appear in a SQL result above, or be computed from such numbers: then add "
           "the arithmetic (e.g. \"12.5 + 3.25\") to \"calculations\".")


@register("responder", config_schema={
    "type": "object", "additionalProperties": False,
    "properties": {"template": {"type": "string"}, "profile": {"type": "string"}, "cache": router.CACHE_CONFIG,
                   "persona": {"type": "string"},
                   "max_tokens": {"type": "integer", "minimum": 1}}})
def responder(ctx: StepContext) -> AgentResult:
    """Write the reply. Config: `template` with {{ jmespath }} placeholders over the run state; with a
    `profile`, a model writes it from the run state in the workflow's `persona`, and the template is what
    the offline model answers. A reply grounded in a `rag` node's snippets must cite them verbatim (checked; one
    more try, then the step fails to HANDOVER); in a `sql` node's result, its numbers are traced to result cells
    or calculations over them, and those that are not are listed in `untraced_numbers` (route them to a human)."""

    def fill(match):
        value = evaluate(match.group(1), ctx.state)
        return "" if value is None else str(value)

    template = PLACEHOLDER.sub(fill, ctx.config.get("template", ""))
    if "profile" not in ctx.config:
        return AgentResult({"reply": template, "model": "template"})
    snippets, results = grounding.grounds(ctx.state)

    def offline() -> dict:  # the template, or else the best passage as it stands, citing itself
        if not template and not snippets:
            raise StepFailure(f"no model answers profile '{ctx.config['profile']}' and the node has no template")
        cited = [{"chunk": snippets[0]["chunk"], "quote": snippets[0]["text"]}] if snippets else []
        return {"reply": template or snippets[0]["text"], "citations": cited}

    facts = {key: value for key, value in ctx.state.items() if key != "input"}
    schema = {"type": "object", "required": ["reply", *(["citations"] if snippets else [])], "properties": {
        "reply": {"type": "string", "minLength": 1}, "citations": CITATIONS,
        "calculations": {"type": "array", "items": {"type": "string"}}}}
    messages = [{"role": "system", "content": prompt(
        "responder", persona=ctx.config.get("persona", "our team"), facts=json.dumps(facts, indent=1, default=str),
        rules=(GROUNDED if snippets else "") + (COUNTED if results else ""))},
                {"role": "user", "content": ctx.state["input"]["text"]}]
    cost = Decimal(0)
    for attempt in (1, 2):
        answer = router.complete(ctx, cache=ctx.config.get("cache", "exact"), profile=ctx.config["profile"],
                                 max_tokens=ctx.config.get("max_tokens", 400), offline=offline, schema=schema,
                                 messages=messages)
        cost += answer.cost
        citations = answer.data.get("citations") or []
        problems = grounding.citation_problems(tenant_id=ctx.tenant_id, citations=citations, snippets=snippets) \
            if snippets else []
        if not problems:
            break
        messages += [{"role": "assistant", "content": json.dumps(answer.data)},
                     {"role": "user", "content": "These citations do not hold: " + "; ".join(problems)
                                                 + ". Quote the passages verbatim, or say less."}]
    else:
        raise StepFailure("the reply's citations could not be verified: " + "; ".join(problems))
    output = {"reply": answer.data["reply"], "model": answer.model}
    if snippets:
        by_chunk = {snippet["chunk"]: snippet for snippet in snippets}
        output["citations"] = [{**c, **{k: by_chunk[c["chunk"]][k] for k in ("title", "heading", "source")}}
                               for c in citations]
        ctx.emit("artifact", {"node": ctx.node_id, "kind": "citations", "citations": output["citations"]})
        output["reply"] += "\n\nSources: " + "; ".join(dict.fromkeys(
            f"{c['title']}" + (f" › {c['heading']}" if c["heading"] else "") for c in output["citations"]))
    if results:
        output["untraced_numbers"] = grounding.untraced_numbers(
            answer.data["reply"], results=results, calculations=answer.data.get("calculations") or [],
            question=ctx.state["input"]["text"])
    return AgentResult(output, cost=cost, usage=answer.usage)


@register("rules", config_schema={
    "type": "object", "additionalProperties": False,
    "properties": {"rules": {"type": "object", "additionalProperties": {"type": "string", "format": "jmespath"}}}})
def rules(ctx: StepContext) -> dict:
    """Evaluate named JMESPath expressions over the run state. Config: `rules` {name: expr}."""
    return {name: evaluate(expression, ctx.state) for name, expression in ctx.config.get("rules", {}).items()}


@register("order_lookup", config_schema={
    "type": "object", "additionalProperties": False,
    "properties": {"order_id": {"type": "string", "format": "jmespath"}}})
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


@register("issue_refund", config_schema={
    "type": "object", "additionalProperties": False, "required": ["order_id", "amount"],
    "properties": {"order_id": {"type": "string", "format": "jmespath"},
                   "amount": {"type": "string", "format": "jmespath"}}})
def issue_refund(ctx: StepContext) -> dict:
    """Issue a refund with the `refunds.issue` tool (grant it to the node). Config: `order_id`, `amount`
    (JMESPath expressions)."""
    amount = evaluate(ctx.config["amount"], ctx.state)
    if isinstance(amount, int | float):
        amount = str(Decimal(str(amount)).quantize(Decimal("0.01")))
    args = {"order_id": evaluate(ctx.config["order_id"], ctx.state), "amount": amount}
    result = tool_call(ctx, "refunds.issue", args)
    return {"refunded": not result.get("refused"), **result}


@register("tool", config_schema={
    "type": "object", "additionalProperties": False, "required": ["tool"],
    "properties": {"tool": {"type": "string"},
                   "args": {"type": "object", "additionalProperties": {"type": "string", "format": "jmespath"}}}})
def tool(ctx: StepContext) -> dict:
    """Call one tool (grant it to the node). Config: `tool`, its name; `args`, {argument: JMESPath expression over
    the run state}. Output: {"result": ...}, or the refusal {"refused": true, "code", "reason"} to route on."""
    args = {name: evaluate(expression, ctx.state) for name, expression in ctx.config.get("args", {}).items()}
    result = tool_call(ctx, ctx.config["tool"], args)
    return result if result.get("refused") is True and "code" in result else {"result": result}
