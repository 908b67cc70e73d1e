"""The workflow spec: a YAML DAG of agent and approval nodes ending in FINISH or HANDOVER.

    entry: classify
    nodes:
      - id: classify
        agent: intent
        config: {intents: {refund: "refund return money back"}}
        limits: {timeout_ms: 2000, max_retries: 2, backoff: 200, max_cost: 0.01}   # max_cost: USD, model calls
      - id: approve
        kind: approval
        config: {title: "Refund", payload: "{amount: lookup.total}"}
    edges:
      - {from: classify, to: approve, when: "classify.intent == 'refund'"}
      - {from: classify, to: HANDOVER}          # the default edge: no `when`

A node's `tools` lists the tools its agent may call (tools.mediation); operators grant more per node in the
admin. `when` is a JMESPath expression over the run state: `input` (the message) and one key per
finished node holding its output. Every node has exactly one default edge. A top-level
`limits: {max_cost: 0.05}` is the run's budget in USD: what all its model calls together may cost.
A top-level `slos:` states the workflow's service level objectives, which analytics watches with burn-rate
alerts: `{success_rate: 0.95, p95_latency_ms: 8000, cost_per_request_usd: 0.05, handover_rate: 0.3}`.
A top-level `kpis: {revenue: "order.total"}` says where a run records the revenue it made: a JMESPath
expression over the run state, read when the run ends (a number; anything else counts as none).
"""

import jsonschema
import yaml
from jmespath.exceptions import JMESPathError

from core.expressions import compile_expression
from tools.models import NAME_PATTERN

FINISH = "FINISH"
HANDOVER = "HANDOVER"
SINKS = (FINISH, HANDOVER)
RESERVED = (*SINKS, "input")  # `input` is the run state's key for the message
DEFAULT_LIMITS = {"timeout_ms": 30_000, "max_retries": 2, "backoff": 200, "max_backoff": 60_000, "max_cost": None}

_ID = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 64}
_SHARE = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
# The objectives a spec's `slos:` may set, and their ranges: a share of runs strictly between 0 and 1 (at 0 or 1
# the error budget would be empty or everything), a latency in ms up to a day, a cost in USD.
SLO_SCHEMA = {
    "success_rate": _SHARE,  # runs that did not fail, of those that ended (cancelled ones aside)
    "handover_rate": _SHARE,  # at most this share of ended runs handed over to a human
    "p95_latency_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
    "cost_per_request_usd": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
}
SCHEMA = {
    "type": "object",
    "required": ["entry", "nodes", "edges"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "entry": {"type": "string"},
        "limits": {"type": "object", "additionalProperties": False,
                   "properties": {"max_cost": {"type": ["number", "null"], "minimum": 0}}},
        "slos": {"type": "object", "propertyNames": {"enum": list(SLO_SCHEMA)}, "properties": SLO_SCHEMA},
        "kpis": {"type": "object", "additionalProperties": False,
                 "properties": {"revenue": {"type": "string", "maxLength": 500}}},
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id"],
                "additionalProperties": False,
                "properties": {
                    "id": _ID,
                    "kind": {"enum": ["agent", "approval"]},
                    "agent": {"type": "string"},
                    "config": {"type": "object"},
                    "on_failure": {"type": "string"},
                    "on_budget": {"enum": ["HANDOVER", "approval"]},
                    "tools": {"type": "array", "uniqueItems": True, "maxItems": 100,
                              "items": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 100}},
                    "limits": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000},
                            "max_retries": {"type": "integer", "minimum": 0, "maximum": 20},
                            "backoff": {"type": "integer", "minimum": 0, "maximum": 600_000},
                            "max_backoff": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
                            "max_cost": {"type": ["number", "null"], "minimum": 0},
                        },
                    },
                },
            },
        },
        "edges": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["from", "to"],
                "additionalProperties": False,
                "properties": {"from": {"type": "string"}, "to": {"type": "string"}, "when": {"type": "string"}},
            },
        },
    },
}


class SpecError(ValueError):
    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def load(text: str) -> dict:
    """Parse and validate YAML; raises SpecError listing every problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError([f"YAML: {e}"]) from None
    errors = validate(data)
    if errors:
        raise SpecError(errors)
    return data


def validate(data) -> list[str]:
    if not isinstance(data, dict):
        return ["the spec must be a mapping with entry, nodes and edges"]
    errors = _schema_errors(SPEC_VALIDATOR, data, "")
    if errors:
        return errors
    from agents.registry import agent_names, config_schema_of, failed_plugins

    known = agent_names()
    nodes = {}
    for node in data["nodes"]:
        nid = node["id"]
        if nid in RESERVED:
            errors.append(f"node '{nid}': '{nid}' is reserved and cannot be a node id")
        elif nid in nodes:
            errors.append(f"node '{nid}': duplicate id")
        nodes[nid] = node
        if node.get("kind", "agent") == "agent":
            if "agent" not in node:
                errors.append(f"node '{nid}': no agent (set `agent`, or `kind: approval`)")
            elif node["agent"] not in known:
                failed = "".join(f"; plug-in {name!r} failed to load: {why}" for name, why in failed_plugins().items())
                errors.append(f"node '{nid}': unknown agent '{node['agent']}' (known: {', '.join(sorted(known))}{failed})")
            elif (schema := config_schema_of(node["agent"])) is not None:
                errors += _agent_config_errors(nid, node["agent"], schema, node.get("config", {}))
        else:
            if "agent" in node:
                errors.append(f"node '{nid}': an approval node has no agent")
            errors += _approval_config_errors(nid, node.get("config", {}))
    if data["entry"] not in nodes:
        errors.append(f"entry '{data['entry']}' is not a node")
    if "revenue" in data.get("kpis", {}):
        errors += _expression_errors("kpis: revenue", data["kpis"]["revenue"])

    successors: dict[str, set[str]] = {nid: set() for nid in nodes}
    defaults: dict[str, int] = {nid: 0 for nid in nodes}
    for nid, node in nodes.items():
        target = node.get("on_failure")
        if target is None:
            continue
        if target in nodes or target in SINKS:
            successors[nid].add(target)
        else:
            errors.append(f"node '{nid}': on_failure '{target}' is not a node or sink")
    for edge in data["edges"]:
        src, dst = edge["from"], edge["to"]
        name = f"edge {src} → {dst}"
        if src not in nodes:
            errors.append(f"{name}: '{src}' is not a node" + (" (sinks have no outgoing edges)" if src in SINKS else ""))
            continue
        if dst not in nodes and dst not in SINKS:
            errors.append(f"{name}: '{dst}' is not a node or sink (dangling edge)")
            continue
        successors[src].add(dst)
        if "when" in edge:
            errors += _expression_errors(f"{name}: when", edge["when"])
        else:
            defaults[src] += 1
    for nid, count in defaults.items():
        if count == 0:
            errors.append(f"node '{nid}': no default edge (an edge without `when`)")
        elif count > 1:
            errors.append(f"node '{nid}': {count} default edges; keep one and give the others a `when`")

    if data["entry"] in nodes:
        reached = _reach(data["entry"], successors)
        errors += [f"node '{nid}': unreachable from entry '{data['entry']}'" for nid in nodes if nid not in reached]
    cycle = _find_cycle(successors)
    if cycle:
        errors.append("cycle: " + " → ".join(cycle))
    else:
        errors += [f"node '{nid}': no way to a sink" for nid in nodes if not _reach(nid, successors) & set(SINKS)]
    return errors


APPROVAL_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "maxLength": 200},
        "payload": {"type": "string"},
        "schema": {"type": "object"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 31_536_000},
        "on_expiry": {"enum": ["reject", "HANDOVER"]},
        "approver_role": {"enum": ["agent", "operator", "admin"]},  # the lowest role that may decide
        "quorum": {"type": "integer", "minimum": 1, "maximum": 10},  # how many distinct people must approve
    },
}


# Formats an agent's config schema may use besides the standard ones: "jmespath", an expression over the run state.
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("jmespath", raises=JMESPathError)
def _is_jmespath(value) -> bool:
    if isinstance(value, str):
        compile_expression(value)  # raises JMESPathError, which the error message quotes
    return True


SPEC_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
APPROVAL_CONFIG_VALIDATOR = jsonschema.Draft202012Validator(APPROVAL_CONFIG)


def _schema_errors(validator, data, where: str) -> list[str]:
    """Each error prefixed by where it is: `where` then the path into `data` ('spec' at the top)."""
    return [f"{'.'.join([where, *map(str, e.absolute_path)]).strip('.') or 'spec'}: {e.message}"
            for e in validator.iter_errors(data)]


def _config_errors(validator, nid: str, config, agent: str = "") -> list[str]:
    """A node config's errors, each naming the node (and its agent), then the JSON path of the problem in
    the config: `node 'decode' (agent 'can_decode'): config/frames/0/id: 'x' is not of type 'integer'`."""
    where = f"node '{nid}'" + (f" (agent '{agent}')" if agent else "")
    errors = []
    for e in validator.iter_errors(config):
        if e.validator == "format" and e.validator_value == "jmespath":
            message = f"invalid JMESPath {e.instance!r}: {e.cause}"  # as in a `when`
        else:
            message = e.message
        errors.append(f"{where}: {'/'.join(['config', *map(str, e.absolute_path)])}: {message}")
    return errors


def _agent_config_errors(nid: str, agent: str, schema: dict, config) -> list[str]:
    return _config_errors(jsonschema.Draft202012Validator(schema, format_checker=FORMATS), nid, config, agent)


def _approval_config_errors(nid: str, config: dict) -> list[str]:
    errors = _config_errors(APPROVAL_CONFIG_VALIDATOR, nid, config)
    if errors:
        return errors
    if "payload" in config:
        errors += _expression_errors(f"node '{nid}': payload", config["payload"])
    if "schema" in config:
        try:
            jsonschema.Draft202012Validator.check_schema(config["schema"])
        except jsonschema.SchemaError as e:
            errors.append(f"node '{nid}': schema is not a valid JSON Schema: {e.message}")
    return errors


def _expression_errors(where: str, expression: str) -> list[str]:
    try:
        compile_expression(expression)
    except JMESPathError as e:
        return [f"{where}: invalid JMESPath {expression!r}: {e}"]
    return []


def _reach(start: str, successors: dict[str, set[str]]) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in successors.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _find_cycle(successors: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(nid: str, path: list[str]) -> list[str] | None:
        if nid in path:
            return path[path.index(nid):] + [nid]
        if nid in done or nid not in successors:
            return None
        for nxt in sorted(successors[nid]):
            if found := visit(nxt, path + [nid]):
                return found
        done.add(nid)
        return None

    for nid in sorted(successors):
        if found := visit(nid, []):
            return found
    return None


def node(spec: dict, node_id: str) -> dict:
    return next(n for n in spec["nodes"] if n["id"] == node_id)


def limits(spec_node: dict) -> dict:
    return {**DEFAULT_LIMITS, **spec_node.get("limits", {})}


def next_node(spec: dict, node_id: str, state: dict) -> str:
    """The first edge from `node_id` whose `when` holds, else its default edge."""
    default = None
    for edge in spec["edges"]:
        if edge["from"] != node_id:
            continue
        if "when" not in edge:
            default = edge["to"]
        elif compile_expression(edge["when"]).search(state):
            return edge["to"]
    return default

