"""The built-in tools."""

from dataclasses import replace

from core import deadlines
from core.errors import NotFound

from . import datasources, sandbox, sql
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


SQL = {"type": "object", "additionalProperties": False, "required": ["source", "sql"], "properties": {
    "source": {"type": "string", "maxLength": 100, "description": "The data source's name."},
    "sql": {"type": "string", "minLength": 1, "maxLength": 20_000, "description": "One statement."}}}
SQL_RESULT = {"type": "object", "properties": {"error": {"type": "string"}, "columns": {"type": "array"},
                                               "rows": {"type": "array"}, "row_count": {"type": "integer"}}}


@builtin("sql.query", input_schema=SQL, output_schema=SQL_RESULT, risk=Risk.READ, tenant=True)
def sql_query(args: dict, key: str, *, tenant_id: int) -> dict:
    """Read from one of the tenant's data sources: one statement that only reads, guarded in code and run
    read-only in the database, at most the source's row cap. A refusal or a database error comes back as
    {"error": ...}, to be corrected."""
    try:
        return sql.query(datasources.data_source_target(datasources.data_source_of(tenant_id, args["source"])),
                         args["sql"])
    except (sql.SqlRefused, sql.SourceError, NotFound) as e:
        return {"error": getattr(e, "reason", None) or str(e)}


def _sql_preview(args: dict, *, tenant_id: int) -> dict:
    will = {"will": f"run on {args['source']}: {args['sql']}"}
    try:
        return {**will, "dry_run": sql.dry_run(
            datasources.data_source_target(datasources.data_source_of(tenant_id, args["source"])), args["sql"])}
    except (sql.SqlRefused, sql.SourceError, NotFound) as e:
        return {**will, "error": getattr(e, "reason", None) or str(e)}


@builtin("sql.write", input_schema=SQL, risk=Risk.DESTRUCTIVE, preview=_sql_preview, tenant=True,
         reapprove_edits=True, repeatable=False)  # a customer's database knows nothing of our keys
def sql_write(args: dict, key: str, *, tenant_id: int) -> dict:
    """Change one of the tenant's data sources with one DML or DDL statement, after an approval that saw its dry
    run (the rows it would change); an edited statement is dry-run and approved again. A statement the database
refuses changes nothing and comes back as {"error": ...}."""
    try:
        return sql.execute_write(
            datasources.data_source_target(datasources.data_source_of(tenant_id, args["source"])), args["sql"])
    except (sql.SqlRefused, sql.SourceError, NotFound) as e:  # nothing changed: the database rolled it back
        return {"error": getattr(e, "reason", None) or str(e)}
