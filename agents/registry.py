"""Agents by name. Built-ins register themselves; custom agents come from the modules
listed in the HIL_AGENT_MODULES setting, imported once on first use.

An agent is a function `(ctx: StepContext) -> dict | AgentResult`. It may run more than once
for one step (a retry, a worker that died, a run that waited for a human): side effects go
through `tools.services.tool_call_once`, which replays the ones already done.
"""

import importlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, NoReturn

from django.conf import settings
from django.db import transaction

from core import deadlines

_agents: dict[str, Callable] = {}
_queues: dict[str, str] = {}
_loaded = False


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
    # emit(type, data): append a run event now, while this worker holds the run (a model call's record).
    emit: Callable[[str, dict], None] = lambda type_, data: None
    max_cost: float | None = None  # the node's budget in USD (limits.max_cost), held by the model router
    calls: int = 0  # tool calls so far in this attempt: the n-th call has the same key in every attempt

    def call_key(self) -> tuple[int, str]:
        """The next call's number in this node and its idempotency key, stable across attempts."""
        self.calls += 1
        return self.calls, f"{self.run_id}:{self.node_id}:{self.calls}"

    def remaining(self) -> float | None:
        """Seconds left before the step's deadline: pass it as the timeout of whatever takes time."""
        return deadlines.remaining()

    def wait_for_human(self, key: str, request: dict) -> NoReturn:
        raise WaitForHuman(key, request)


@dataclass
class AgentResult:
    output: dict
    cost: Decimal = Decimal(0)
    usage: dict = field(default_factory=dict)


def register(name: str, *, queue: str = ""):
    """Register an agent. `queue` names a queue of its own (`<HIL_QUEUE>.<queue>`) for work that
    should not share workers with the rest, such as long model calls."""

    def decorate(fn):
        if name in _agents and _agents[name] is not fn:
            raise ValueError(f"agent {name!r} is already registered")
        _agents[name] = fn
        if queue:
            _queues[name] = queue
        return fn

    return decorate


def _load():
    global _loaded
    if not _loaded:
        importlib.import_module("agents.builtin")
        for module in settings.HIL_AGENT_MODULES:
            importlib.import_module(module)
        _loaded = True


def agent_names() -> set[str]:
    _load()
    return set(_agents)


def get(name: str) -> Callable:
    _load()
    return _agents[name]


def queue_of(name: str) -> str:
    """The queue of its own that the agent `name` asked for, or "" for the default queue."""
    _load()
    return _queues.get(name, "")
