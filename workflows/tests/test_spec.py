"""The workflow spec validator, and publishing versions: what an operator sees when a spec is wrong."""

import textwrap
from pathlib import Path

import pytest

from workflows import services, spec
from workflows.models import Message
from core.errors import ServiceError

DEMO = Path(__file__).resolve().parents[1] / "demo" / "customer_support.yaml"

OK = """
entry: a
nodes:
  - {id: a, agent: test_echo}
  - {id: b, agent: responder, config: {template: "hi"}}
edges:
  - {from: a, to: b}
  - {from: b, to: FINISH}
"""


def errors_of(spec_yaml: str) -> list[str]:
    with pytest.raises(spec.SpecError) as error:
        spec.load(textwrap.dedent(spec_yaml))
    return error.value.errors


def test_the_demo_spec_is_valid():
    loaded = spec.load(DEMO.read_text())
    assert loaded["entry"] == "classify" and len(loaded["nodes"]) == 8


def test_a_valid_spec_loads():
    assert [n["id"] for n in spec.load(OK)["nodes"]] == ["a", "b"]


# Each bad spec, and a part of the message that must name what is wrong and where.
REJECTED = {
    "unknown agent": (
        OK.replace("agent: test_echo", "agent: nope"),
        "node 'a': unknown agent 'nope' (known: ",
    ),
    "dangling edge": (
        OK.replace("{from: a, to: b}", "{from: a, to: b}\n  - {from: a, to: ghost, when: 'a.x'}"),
        "edge a → ghost: 'ghost' is not a node or sink (dangling edge)",
    ),
    "edge from an unknown node": (
        OK + "  - {from: ghost, to: FINISH}\n",
        "edge ghost → FINISH: 'ghost' is not a node",
    ),
    "edge from a sink": (
        OK + "  - {from: FINISH, to: a}\n",
        "edge FINISH → a: 'FINISH' is not a node (sinks have no outgoing edges)",
    ),
    "unreachable node": (
        OK.replace("edges:", "  - {id: lost, agent: test_echo}\nedges:\n  - {from: lost, to: FINISH}"),
        "node 'lost': unreachable from entry 'a'",
    ),
    "cycle": (
        OK.replace("{from: b, to: FINISH}", "{from: b, to: FINISH, when: 'b.done'}\n  - {from: b, to: a}"),
        "cycle: a → b → a",
    ),
    "cycle through on_failure": (
        OK.replace("{id: b, agent: responder,", "{id: b, on_failure: a, agent: responder,"),
        "cycle: a → b → a",
    ),
    "invalid JMESPath in when": (
        OK.replace("{from: a, to: b}", "{from: a, to: b}\n  - {from: a, to: FINISH, when: 'a.['}"),
        "edge a → FINISH: when: invalid JMESPath 'a.['",
    ),
    "invalid JMESPath in an approval payload": (
        OK.replace("{id: b, agent: responder, config: {template: \"hi\"}}",
                   "{id: b, kind: approval, config: {payload: '{x: '}}"),
        "node 'b': payload: invalid JMESPath '{x: '",
    ),
    "no way to a sink": (
        OK.replace("  - {from: b, to: FINISH}\n", ""),
        "node 'b': no way to a sink",
    ),
    "no default edge": (
        OK.replace("{from: b, to: FINISH}", "{from: b, to: FINISH, when: 'b.reply'}"),
        "node 'b': no default edge (an edge without `when`)",
    ),
    "two default edges": (
        OK + "  - {from: b, to: HANDOVER}\n",
        "node 'b': 2 default edges; keep one and give the others a `when`",
    ),
    "duplicate ids": (
        OK.replace("{id: b, agent: responder", "{id: a, agent: responder"),
        "node 'a': duplicate id",
    ),
    "a node named FINISH": (
        "entry: a\nnodes: [{id: a, agent: test_echo}, {id: FINISH, agent: test_echo}]\n"
        "edges: [{from: a, to: FINISH}]\n",
        ("node 'FINISH': ", "cannot be a node id"),
    ),
    "a node named HANDOVER": (
        OK.replace("{id: b,", "{id: HANDOVER,").replace("{from: a, to: b}", "{from: a, to: HANDOVER}"),
        ("node 'HANDOVER': ", "cannot be a node id"),
    ),
    "a node named input (the message's key in the run state)": (
        OK.replace("{id: a,", "{id: input,").replace("entry: a", "entry: input").replace("{from: a,", "{from: input,"),
        ("node 'input': ", "cannot be a node id"),
    ),
    "negative timeout": (
        OK.replace("{id: a, agent: test_echo}", "{id: a, agent: test_echo, limits: {timeout_ms: -1}}"),
        "nodes.0.limits.timeout_ms: -1 is less than the minimum of 1",
    ),
    "negative retries": (
        OK.replace("{id: a, agent: test_echo}", "{id: a, agent: test_echo, limits: {max_retries: -2}}"),
        "nodes.0.limits.max_retries: -2 is less than the minimum of 0",
    ),
    "unknown limit": (
        OK.replace("{id: a, agent: test_echo}", "{id: a, agent: test_echo, limits: {timeout: 5}}"),
        "nodes.0.limits: Additional properties are not allowed ('timeout' was unexpected)",
    ),
    "on_failure to an unknown node": (
        OK.replace("{id: a, agent: test_echo}", "{id: a, agent: test_echo, on_failure: ghost}"),
        "node 'a': on_failure 'ghost' is not a node or sink",
    ),
    "entry not a node": (
        OK.replace("entry: a", "entry: z"),
        "entry 'z' is not a node",
    ),
    "agent node without an agent": (
        OK.replace("{id: a, agent: test_echo}", "{id: a}"),
        "node 'a': no agent (set `agent`, or `kind: approval`)",
    ),
    "approval node with an agent": (
        OK.replace("{id: a, agent: test_echo}", "{id: a, kind: approval, agent: test_echo}"),
        "node 'a': an approval node has no agent",
    ),
    "YAML syntax error": (
        "entry: a\nnodes: [\n",
        "YAML: ",
    ),
    "a list, not a mapping": (
        "- entry: a\n",
        "the spec must be a mapping with entry, nodes and edges",
    ),
    "empty text": (
        "",
        "the spec must be a mapping with entry, nodes and edges",
    ),
    "missing edges": (
        "entry: a\nnodes: [{id: a, agent: test_echo}]\n",
        "spec: 'edges' is a required property",
    ),
}


def named_in(errors: list[str], message: str | tuple[str, ...]) -> bool:
    """One error holds the message, or every part of it."""
    parts = message if isinstance(message, tuple) else (message,)
    return any(all(part in e for part in parts) for e in errors)


@pytest.mark.parametrize("spec_yaml,message", REJECTED.values(), ids=REJECTED.keys())
def test_a_bad_spec_is_rejected_with_a_message_naming_the_problem(spec_yaml, message):
    errors = errors_of(spec_yaml)
    assert named_in(errors, message), errors


def test_every_problem_is_listed_at_once():
    bad = OK.replace("agent: test_echo", "agent: nope") + "  - {from: ghost, to: FINISH}\n"
    errors = errors_of(bad)
    assert len(errors) == 2 and "unknown agent 'nope'" in errors[0] and "ghost" in errors[1]


# A spec that validates must also run: each of these approval configs used to pass, then crash
# spec.load (TypeError), the run (timedelta of a string) or the edit decision (SchemaError, a 500).
BAD_APPROVAL_CONFIG = {
    "payload not a string": ("{payload: 5}", ("node 'g': ", "payload", "not of type 'string'")),
    "payload a mapping": ("{payload: {amount: a.x}}", ("node 'g': ", "payload", "not of type 'string'")),
    "negative timeout_s": ("{timeout_s: -5}", ("node 'g': ", "timeout_s", "-5")),
    "timeout_s not a number": ("{timeout_s: soon}", ("node 'g': ", "timeout_s", "not of type 'number'")),
    "schema not a JSON Schema": ("{schema: {type: 12}}", ("node 'g': ", "schema is not a valid JSON Schema")),
    "unknown key": ("{titel: Refund}", ("node 'g': ", "'titel' was unexpected")),
}


@pytest.mark.parametrize("config,message", BAD_APPROVAL_CONFIG.values(), ids=BAD_APPROVAL_CONFIG.keys())
def test_a_bad_approval_config_is_rejected(config, message):
    bad = f"""
    entry: a
    nodes:
      - {{id: a, agent: test_echo}}
      - {{id: g, kind: approval, config: {config}}}
    edges:
      - {{from: a, to: g}}
      - {{from: g, to: FINISH}}
    """
    errors = errors_of(bad)
    assert named_in(errors, message), errors


# An agent's config is checked against the schema it registered with, each error naming the node, its
# agent and the JSON path into the config: a typo or a wrong type is caught before any run.
BAD_AGENT_CONFIG = {
    "responder template not a string": (
        "responder", "{template: 5}", "node 'b' (agent 'responder'): config/template: 5 is not of type 'string'"),
    "responder max_tokens 0": (
        "responder", "{template: hi, profile: fast, max_tokens: 0}",
        "node 'b' (agent 'responder'): config/max_tokens: 0 is less than the minimum of 1"),
    "responder with a misspelt key": (
        "responder", "{templat: hi}",
        "node 'b' (agent 'responder'): config: Additional properties are not allowed ('templat' was unexpected)"),
    "intent threshold over 1": (
        "intent", "{intents: {refund: money back}, threshold: 1.5}",
        "node 'b' (agent 'intent'): config/threshold: 1.5 is greater than the maximum of 1"),
    "intent description not a string": (
        "intent", "{intents: {refund: [money, back]}}",
        "node 'b' (agent 'intent'): config/intents/refund: ['money', 'back'] is not of type 'string'"),
    "rules with an invalid JMESPath": (
        "rules", "{rules: {ok: 'a.total > `0`', broken: 'a.['}}",
        "node 'b' (agent 'rules'): config/rules/broken: invalid JMESPath 'a.[': "),
    "order_lookup order_id not an expression": (
        "order_lookup", "{order_id: 5}", "node 'b' (agent 'order_lookup'): config/order_id: 5 is not of type 'string'"),
    "issue_refund without an amount": (
        "issue_refund", "{order_id: a.order_id}",
        "node 'b' (agent 'issue_refund'): config: 'amount' is a required property"),
}


@pytest.mark.parametrize("agent,config,message", BAD_AGENT_CONFIG.values(), ids=BAD_AGENT_CONFIG.keys())
def test_a_bad_agent_config_is_rejected_naming_node_path_and_agent(agent, config, message):
    bad = OK.replace("{id: b, agent: responder, config: {template: \"hi\"}}", f"{{id: b, agent: {agent}, config: {config}}}")
    errors = errors_of(bad)
    assert named_in(errors, message), errors


def test_an_agent_config_that_needs_keys_is_rejected_without_any():
    errors = errors_of(OK.replace("{id: b, agent: responder, config: {template: \"hi\"}}", "{id: b, agent: issue_refund}"))
    assert errors == ["node 'b' (agent 'issue_refund'): config: 'order_id' is a required property",
                      "node 'b' (agent 'issue_refund'): config: 'amount' is a required property"]


def test_a_full_approval_config_is_valid():
    good = """
    entry: a
    nodes:
      - {id: a, agent: test_echo}
      - id: g
        kind: approval
        config:
          title: Refund
          payload: "{amount: a.amount}"
          schema: {type: object, properties: {amount: {type: number}}}
          timeout_s: 3600
    edges:
      - {from: a, to: g}
      - {from: g, to: FINISH}
    """
    assert spec.load(textwrap.dedent(good))["nodes"][1]["config"]["timeout_s"] == 3600


@pytest.mark.django_db
def test_an_invalid_version_is_kept_as_a_draft_with_its_errors(tenant, publish):
    workflow = publish(tenant)
    draft = services.workflow_version_create(workflow=workflow, spec_yaml=OK.replace("test_echo", "nope"))
    assert draft.number == 2 and not draft.is_valid() and draft.spec is None
    assert "unknown agent 'nope'" in draft.errors[0]


@pytest.mark.django_db
def test_publishing_an_invalid_version_fails_and_keeps_the_live_one(tenant, publish):
    workflow = publish(tenant)
    live = workflow.live_version
    draft = services.workflow_version_create(workflow=workflow, spec_yaml=OK.replace("test_echo", "nope"))
    with pytest.raises(ServiceError, match="wf v2 has errors and cannot be published: node 'a': unknown agent"):
        services.workflow_version_publish(version=draft)
    workflow.refresh_from_db()
    assert workflow.live_version == live
    draft.refresh_from_db()
    assert draft.published_at is None


@pytest.mark.django_db
def test_versions_are_numbered_one_two_three(tenant, publish):
    for _ in range(3):
        workflow = publish(tenant, OK)
    assert list(workflow.versions.order_by("number").values_list("number", flat=True)) == [1, 2, 3]
    assert workflow.live_version.number == 3


@pytest.mark.django_db
def test_numbers_are_per_workflow(tenant, publish):
    publish(tenant, OK, slug="one")
    publish(tenant, OK, slug="one")
    assert publish(tenant, OK, slug="two").live_version.number == 1


@pytest.mark.django_db
def test_a_run_in_flight_keeps_its_version_after_a_new_one_is_published(tenant, converse, publish, drive):
    conversation, run = converse(tenant, OK)
    v2 = OK.replace("{id: b, agent: responder, config: {template: \"hi\"}}",
                    "{id: c, agent: responder, config: {template: \"v2\"}}").replace("to: b}", "to: c}").replace(
        "{from: b,", "{from: c,")
    assert publish(tenant, v2).live_version.number == 2
    run = drive(run)
    assert run.workflow_version.number == 1
    assert [s.node_id for s in run.steps.all()] == ["a", "b"]
    message, _ = services.message_post(conversation=conversation, text="again", turn_id="t2")
    later = drive(message.run)
    assert later.workflow_version.number == 2
    assert [s.node_id for s in later.steps.all()] == ["a", "c"]
    replies = Message.objects.filter(conversation=conversation, role="ai").order_by("created_at")
    assert [m.text for m in replies] == ["hi", "v2"]
