"""Agents by name. Built-ins register themselves; custom agents come from the modules listed in the
HIL_AGENT_MODULES setting and from installed plug-ins (the `hil.agents` entry points of any installed
distribution), all imported once on first use.

An agent is a function `(ctx: StepContext) -> dict | AgentResult`. It may run more than once
for one step (a retry, a worker that died, a run that waited for a human): side effects go
through `tools.services.tool_call_once`, which replays the ones already done.
"""

import importlib
import logging
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from importlib.metadata import EntryPoint, entry_points
from typing import Callable, NoReturn

import jsonschema
from django.conf import settings
from django.db import transaction

from core import deadlines

PLUGIN_GROUP = "hil.agents"

logger = logging.getLogger(__name__)
_agents: dict[str, Callable] = {}
_queues: dict[str, str] = {}
_config_schemas: dict[str, dict] = {}
_failed_plugins: dict[str, str] = {}  # entry point name -> why it did not load
_loaded = False
_loading = threading.RLock()


class LeaseLost(Exception):
    """Another worker took the run over; this one must stop touching it."""


class StepFailure(Exception):
    """A failure that retrying will not fix: the node takes its failure path (HANDOVER unless its spec
    says otherwise) with this message as the reason. Any other exception is retried per the node's limits."""


class WaitForHuman(BaseException):
    """The step needs a human's decision before it can go on: the run waits, holding no worker, and
    the step runs again once it is decided. A BaseException, so that an agent's `except Exception`
    lets it through."""

    def __init__(self, key: str, request: dict):
        super().__init__(key)
        self.key, self.request = key, request


@dataclass
class StepContext:
    """One attempt of one node, as its agent sees it."""

    tenant_id: int
    run_id: str
    node_id: str
    attempt: int
    config: dict
    state: dict
    # A transaction that commits only while this worker still holds the run (LeaseLost otherwise).
    holding: Callable = transaction.atomic
    workflow_version_id: int | None = None  # what cached model answers are scoped by
    max_cost: float | None = None  # the node's budget in USD (limits.max_cost), held by the model router
    run_max_cost: float | None = None  # the run's budget in USD (the spec's limits.max_cost)
    on_budget: str = "HANDOVER"  # over that budget: HANDOVER, or "approval" to ask a human for more
    workflow_id: int | None = None  # what tool grants and policies are scoped by
    stage: Callable[[], str] = lambda: "auto"  # the workflow's rollout stage, read when a tool policy asks
    tools: tuple = ()  # the tools the node's spec grants it (`tools:`); ToolGrant rows grant more
    tool_cost: Decimal = Decimal(0)  # what the step's tool calls cost, added to the step's cost
    pii_vault: object = None  # the run's PII tokens, once a redaction needed them (tools.services.pii_redact)
    calls: int = 0  # tool calls so far in this attempt: the n-th call has the same key in every attempt
    # What the step adds to the run besides its output (a model call's LLMCall row and `llm.call` event, a plan):
    # the engine commits them with the step's outcome, in the same statement, whatever that outcome is.
    rows: list = field(default_factory=list)
    events: list[tuple[str, dict]] = field(default_factory=list)

    def call_key(self) -> tuple[int, str]:
        """The next call's number in this node and its idempotency key, stable across attempts."""
        self.calls += 1
        return self.calls, f"{self.run_id}:{self.node_id}:{self.calls}"

    def emit(self, type_: str, data: dict, row=None) -> None:
        """Append a run event (and the row it is about) to the step's commit."""
        self.events.append((type_, data))
        if row is not None:
            self.rows.append(row)

    def remaining(self) -> float | None:
        """Seconds left before the step's deadline: pass it as the timeout of whatever takes time."""
        return deadlines.remaining()

    def wait_for_human(self, key: str, request: dict) -> NoReturn:
        raise WaitForHuman(key, request)

    def cost_reserve(self, usd: Decimal):
        """Reserve a tool call's cost against the step's, the run's and the tenant's monthly budgets, as a model
        call's is: the reservation, or why it does not fit."""
        from . import budgets

        reservation = budgets.reserve(budgets.of_step(self), int(usd * budgets.MICROS))
        if isinstance(reservation, budgets.Refusal):
            return (f"${reservation.over_micros / budgets.MICROS:.6f} more than the {reservation.budget.scope} "
                    "budget has left")
        return reservation

    def cost_settle(self, reservation, usd: Decimal) -> None:
        from . import budgets

        budgets.settle(reservation, int(usd * budgets.MICROS))
        self.tool_cost += usd


@dataclass
class AgentResult:
    output: dict
    cost: Decimal = Decimal(0)
    usage: dict = field(default_factory=dict)


def register(name: str, *, queue: str = "", config_schema: dict | None = None):
    """Register an agent. `queue` names a queue of its own (`<HIL_QUEUE>.<queue>`) for work that
    should not share workers with the rest, such as long model calls. `config_schema` is a JSON Schema
    (draft 2020-12) that the spec validator checks each of its nodes' `config` against; besides the
    standard formats, `"format": "jmespath"` checks that a string is a JMESPath expression."""
    if config_schema is not None:
        jsonschema.Draft202012Validator.check_schema(config_schema)  # a wrong schema fails the import, not a spec

    def decorate(fn):
        if name in _agents and _agents[name] is not fn:
            raise ValueError(f"agent {name!r} is already registered")
        _agents[name] = fn
        if queue:
            _queues[name] = queue
        if config_schema is not None:
            _config_schemas[name] = config_schema
        return fn

    return decorate


def _load():
    global _loaded
    if _loaded:
        return
    with _loading:
        if _loaded:
            return
        importlib.import_module("agents.builtin")
        importlib.import_module("agents.reasoning")
        importlib.import_module("agents.data")
        # Modules named in the settings load before plug-ins, so that they win a clash of names.
        for module in settings.HIL_AGENT_MODULES:
            importlib.import_module(module)
        for entry_point in entry_points(group=PLUGIN_GROUP):
            _load_plugin(entry_point)
        _loaded = True


def _load_plugin(entry_point: EntryPoint) -> None:
    """Import one plug-in. One that fails is logged and left out, with any agents it registered before
    failing: whatever happens to be installed must not stop the app, and a spec naming its agents is
    rejected as naming an unknown agent. (A module in HIL_AGENT_MODULES, named on purpose, still fails
    loudly.)"""
    before = set(_agents)
    try:
        entry_point.load()
    except Exception as e:
        for name in set(_agents) - before:
            _agents.pop(name)
            _queues.pop(name, None)
            _config_schemas.pop(name, None)
        dist = entry_point.dist.name if entry_point.dist else "an unknown distribution"
        _failed_plugins[entry_point.name] = f"{type(e).__name__}: {e}"
        logger.exception("agent plug-in %r (%s, from %s) failed to load and is left out: %s: %s",
                         entry_point.name, entry_point.value, dist, type(e).__name__, e)


def agent_names() -> set[str]:
    _load()
    return set(_agents)


def get(name: str) -> Callable:
    _load()
    return _agents[name]


def config_schema_of(name: str) -> dict | None:
    """The JSON Schema of the agent `name`'s node config, if it declared one."""
    _load()
    return _config_schemas.get(name)


def failed_plugins() -> dict[str, str]:
    """The plug-ins that failed to load, by entry point name, with why."""
    _load()
    return dict(_failed_plugins)


def queue_of(name: str) -> str:
    """The queue of its own that the agent `name` asked for, or "" for the default queue."""
    _load()
    return _queues.get(name, "")
