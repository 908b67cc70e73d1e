"""Tool contracts: what a tool takes, gives, risks and costs. Built-in tools (tools/builtin.py) and those of
plug-ins declare theirs in code with `@builtin`; a tenant's own (MCP, HTTP) are `Tool` rows, turned into the same
`Contract` by `tools.mediation`."""

import functools
import importlib
import json
import re
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

import jsonschema

from .models import NAME_PATTERN, Risk

NOOP_SCHEMA = {"type": "object"}


@dataclass(frozen=True)
class Contract:
    name: str
    kind: str  # builtin, plugin, mcp or http
    risk: str
    input_schema: dict
    output_schema: dict | None
    cost_usd: Decimal
    run: Callable[[dict, str], dict]  # (arguments, idempotency key) -> result, a JSON object
    description: str = ""
    preview: Callable[[dict], dict] | None = None  # what a call would do, shown to the approver (a dry run)
    tenant: bool = False  # run and preview take the caller's tenant_id= (a built-in over the tenant's own data)
    reapprove_edits: bool = False  # an edit is proposed again, previewed and approved anew (a dry run's verdict
    # holds only for the arguments it ran)
    repeatable: bool = True  # what it acts on treats a repeated idempotency key as the same request; if not, a call
    # whose worker died before its outcome was recorded is not made again (tools.services.tool_call_once)


_builtins: dict[str, Contract] = {}
_loaded = False
_loading = threading.Lock()


def builtin(name: str, *, input_schema: dict, risk: str, output_schema: dict | None = None, cost_usd="0",
            preview: Callable[[dict], dict] | None = None, kind: str = "builtin", tenant: bool = False,
            reapprove_edits: bool = False, repeatable: bool = True):
    """Declare a tool in code: `fn(args, key) -> dict` acts once per idempotency key `key`. `preview(args)`, for a
    tool that changes things, tells an approver what the call would change without changing it. With `tenant`,
    both also take the calling tenant's `tenant_id=`."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"tool name {name!r}: lower-case letters, digits, '_' and '-', in parts joined by '.'")
    if risk not in Risk.values:
        raise ValueError(f"tool {name!r}: risk must be one of {', '.join(Risk.values)}")
    for schema in (input_schema, output_schema):
        if schema is not None:
            jsonschema.Draft202012Validator.check_schema(schema)

    def decorate(fn):
        if name in _builtins and _builtins[name].run is not fn:
            raise ValueError(f"tool {name!r} is already declared")
        _builtins[name] = Contract(name=name, kind=kind, risk=risk, input_schema=input_schema,
                                   output_schema=output_schema, cost_usd=Decimal(str(cost_usd)), run=fn,
                                   description=(fn.__doc__ or "").strip().split("\n")[0], preview=preview,
                                   tenant=tenant, reapprove_edits=reapprove_edits, repeatable=repeatable)
        return fn

    return decorate


def builtins() -> dict[str, Contract]:
    global _loaded
    if not _loaded:
        with _loading:
            if not _loaded:
                importlib.import_module("tools.builtin")
                _loaded = True
    return _builtins


def schema_error(schema: dict | None, value) -> str | None:
    """Why `value` does not meet `schema`, in one line; None when it does."""
    if schema is None:
        return None
    error = jsonschema.exceptions.best_match(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    if error is None:
        return None
    where = "/".join(map(str, error.absolute_path))
    return f"{error.message}" + (f" at /{where}" if where else "")


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))
