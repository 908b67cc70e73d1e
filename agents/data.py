"""Agents over the tenant's own data: `sql` asks a data source, `rag` searches a knowledge source."""

import json
from decimal import Decimal

from core import charts, embeddings
from core.errors import ServiceError
from core.expressions import evaluate
from tools import datasources, knowledge, sql
from tools.mediation import tool_call
from tools.models import KnowledgeSource, SqlExample

from . import router
from .builtin import prompt
from .registry import AgentResult, StepContext, StepFailure, register

SQL_ANSWER = {"type": "object", "required": ["sql"], "properties": {
    "sql": {"type": "string", "minLength": 1}, "write": {"type": "boolean"}, "explanation": {"type": "string"}}}
OFFLINE_SIMILARITY = 0.8  # offline, an approved example answers a question only as near as this in meaning


@register("sql", config_schema={
    "type": "object", "additionalProperties": False, "required": ["source"],
    "properties": {"source": {"type": "string"}, "question": {"type": "string", "format": "jmespath"},
                   "profile": {"type": "string"}, "cache": router.CACHE_CONFIG,
                   "max_attempts": {"type": "integer", "minimum": 1, "maximum": 6},
                   "examples": {"type": "integer", "minimum": 0, "maximum": 10},
                   "max_tables": {"type": "integer", "minimum": 1, "maximum": 100},
                   "writes": {"enum": ["approval", "never"]}}})
def sql_agent(ctx: StepContext) -> AgentResult:
    """Answer a question from a data source with SQL: the model writes a statement from the part of the schema the
    question needs and from approved examples; the guard and the database check it; an error goes back to the
    model (`max_attempts`, default 3). A read runs through the `sql.query` tool, a write is proposed through
    `sql.write` and waits for its approval (grant the node both). Output: the result (sql, columns, rows,
    row_count, truncated) and a `summary`; or {"refused", "code", "reason"}; offline, the SQL of the nearest
    approved example, if one is near enough. Config: `source`, `question` (default input.text), `profile`
    (default `balanced`), `examples` (3), `max_tables` (8), `writes` (`approval` or `never`)."""
    question = evaluate(ctx.config.get("question", "input.text"), ctx.state)
    if not isinstance(question, str) or not question.strip():
        raise StepFailure("the sql node has no question to answer")
    try:
        source = datasources.data_source_of(ctx.tenant_id, ctx.config["source"])
    except ServiceError as e:
        raise StepFailure(str(e)) from None
    asked = embeddings.embed([question])[0]
    examples = datasources.sql_examples_like(source, asked, n=ctx.config.get("examples", 3))

    def offline() -> dict:
        if examples and examples[0]["similarity"] >= OFFLINE_SIMILARITY:
            return {"sql": examples[0]["sql"], "explanation": f"the approved answer to: {examples[0]['question']}"}
        raise StepFailure("the offline model writes no SQL, and no approved example is near this question")

    messages = [{"role": "system", "content": prompt(
        "sql", engine=source.get_engine_display(), dialect=sql.DIALECT[source.engine], row_cap=source.row_cap,
        description=source.description, schema=datasources.schema_prompt(
            source, asked, max_tables=ctx.config.get("max_tables", 8)),
        examples="\n".join(f"Q: {e['question']}\nSQL: {e['sql']}" for e in examples) or "(none yet)")},
                {"role": "user", "content": question}]
    cost, problem = Decimal(0), ""
    for attempt in range(1, ctx.config.get("max_attempts", 3) + 1):
        answer = router.complete(ctx, cache=ctx.config.get("cache", "exact"), profile=ctx.config.get(
            "profile", "balanced"), schema=SQL_ANSWER, max_tokens=800, offline=offline, messages=messages)
        cost += answer.cost
        statement = answer.data["sql"].strip()
        try:
            kind = datasources.sql_check(source, statement).kind
        except ServiceError as e:
            kind, problem = None, str(e)
        if kind == "write" and ctx.config.get("writes", "approval") == "never":
            return AgentResult({"refused": True, "code": "read_only", "sql": statement,
                                "reason": "this workflow only reads data; the statement would change it"}, cost=cost)
        if kind is not None:
            result = _write(ctx, source, statement, question) if kind == "write" else _read(ctx, source, statement)
            if result.get("refused") or "error" not in result:
                return AgentResult({**result, "attempts": attempt}, cost=cost, usage=answer.usage)
            problem = result["error"]
        messages += [{"role": "assistant", "content": json.dumps(answer.data)},
                     {"role": "user", "content": f"That statement did not work: {problem}\nWrite a corrected one."}]
    raise StepFailure(f"no working SQL after {attempt} attempts; the last: {problem}")


def _read(ctx: StepContext, source, statement: str) -> dict:
    result = tool_call(ctx, "sql.query", {"source": source.name, "sql": statement})
    if result.get("refused") or "error" in result:
        return result
    ctx.emit("artifact", {"node": ctx.node_id, "kind": "sql_result", "source": source.name, **result,
                          "chart": charts.chart_of(result["columns"], result["rows"])})
    return {"source": source.name, "kind": "read", **result, "summary": summary(result)}


def _write(ctx: StepContext, source, statement: str, question: str) -> dict:
    """Propose the write; a human's edit is proposed again, to be dry-run and approved anew. The statement that
    ran, approved, answers the question from now on: an example for the next ones (with the step's outcome)."""
    args = {"source": source.name, "sql": statement}
    result = tool_call(ctx, "sql.write", args)
    for _ in range(3):
        if result.get("code") != "edited":
            break
        args = result["edited"]
        result = tool_call(ctx, "sql.write", args)
    if result.get("refused") or "error" in result:
        return {**result, "sql": args["sql"]}
    ctx.rows.append(datasources.sql_example_row(source=source, question=question, sql_text=args["sql"],
                                                origin=SqlExample.Origin.APPROVED))
    return {"source": source.name, "kind": "write", **result,
            "summary": f"Done: {result.get('rows_affected', 0)} row(s) changed."}


def summary(result: dict, *, rows: int = 10) -> str:
    """The result in words: one value as itself, else a Markdown table of the first rows."""
    columns, values = result["columns"], result["rows"]
    if not values:
        return "No rows match."
    if len(columns) == 1 and len(values) == 1:
        return f"{columns[0]}: {values[0][0]}"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in values[:rows]]
    more = f"\n…and more: the result has {result['row_count']} rows." if result["row_count"] > rows else ""
    return "\n".join(lines) + more  # every number in it is the result's, as the responder's check asks


@register("rag", config_schema={
    "type": "object", "additionalProperties": False, "required": ["sources"],
    "properties": {"sources": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                   "query": {"type": "string", "format": "jmespath"},
                   "k": {"type": "integer", "minimum": 1, "maximum": 20}}})
def rag(ctx: StepContext) -> dict:
    """Find the passages of the knowledge sources that answer the question (hybrid search: meaning and words),
    for a responder to cite. Output: {"snippets": [{chunk, document, source, title, heading, text, start, end,
    score}], "found"}. Config: `sources` (names), `query` (default input.text), `k` (default 5)."""
    query = evaluate(ctx.config.get("query", "input.text"), ctx.state)
    if not isinstance(query, str) or not query.strip():
        raise StepFailure("the rag node has no question to search for")
    names = ctx.config["sources"]
    ids = dict(KnowledgeSource.objects.filter(tenant_id=ctx.tenant_id, name__in=names).values_list("name", "id"))
    if missing := [name for name in names if name not in ids]:
        raise StepFailure(f"there is no knowledge source {', '.join(missing)}")
    snippets = knowledge.knowledge_search(tenant_id=ctx.tenant_id, query=query, sources=list(ids.values()),
                                          k=ctx.config.get("k", 5))
    ctx.emit("artifact", {"node": ctx.node_id, "kind": "snippets", "snippets": snippets})
    return {"snippets": snippets, "found": bool(snippets)}
